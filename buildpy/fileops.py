"""File ops of a build step: COPY, ADD, WORKDIR and heredoc files.

Theory of operation
-------------------
Every op here works between two roots: ``src_root`` (the context directory, or
the merged root of another stage's snapshot) and ``dest_root`` (the merged root
of the active snapshot being written). A path inside either is read as if that
root were ``/``: ``..`` stops at the root and symlinks, absolute or relative,
resolve inside it (``resolve_in_root``). Every write goes to a resolved parent
directory joined with one final name that is lstat'ed and never followed, so no
symlink in a snapshot can send a write outside ``dest_root``.

What a copy reads is decided in one place, ``select_sources``: the worker's
copy and the context checksum (buildpy.context) both walk its list, so the
cache key covers exactly the entries the copy writes, with the metadata it
writes them with. An entry hidden by .dockerignore or by ``--exclude`` is not
there at all: it neither matches a source nor appears inside a copied
directory (a directory that is excluded but may hold re-included entries is
walked, and kept only for what it holds).

Sources follow the Dockerfile reference for COPY/ADD and BuildKit's file
backend: a source path is cleaned lexically (``..`` cannot leave the root), each
element may be a wildcard with Go's ``filepath.Match`` rules, and the matched
path itself is followed when it is a symlink (BuildKit's FollowSymlinks), while
symlinks inside a copied directory stay symlinks. A directory source copies its
contents; a file source keeps its name under a directory destination.

COPY --parents keeps each matched source's path as written (a wildcard element
as it matched, a symlinked directory under its own name), relative to the
source root or to the pivot, the first ``/./`` of the source: the matched
source lands at ``dest/<that path>``. ``select_sources`` puts the kept parent
directories in its list too (``Selected.parent``, once each, before what they
hold), so that the copy creates them with their source metadata and the
context checksum covers them; ``Selected.place`` is where an entry's matched
source lands below ``dest``, the part of the layout the other fields lack.

Writing is system calls, most of them on paths inside an overlay mount, so it
is done with as few as the semantics allow: the metadata of a file goes on its
open fd, nothing is looked for in a directory this copy created, and below a
directory source the regular files are copied on a few threads (``_FilePool``)
while the walk goes on, which still raises the error the walk in one thread
would have raised.

ADD of a local tar archive (detected by content) reads the archive twice: the
first pass checks that no entry lands outside the destination (``..``,
absolute names, a symlink or a hard link that points out) without writing
anything, the second extracts. An archive that fails the check leaves nothing.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import os
import posixpath
import re
import stat
import tarfile
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, BinaryIO, Protocol

import pyzstd

from solver.graph import CopyAction, MkdirAction, MkfileAction

# Linux's own limit on symlinks followed while resolving one path (MAXSYMLINKS).
_MAX_SYMLINKS = 40
_COPY_CHUNK = 1 << 20
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# A tree's regular files are copied on threads (_FilePool). On 2 cores, onto
# overlay over ext4, 2 to 4 threads copied 20,000 small files in 100
# directories 1.2 to 1.4 times as fast as one, and 2 to 5 times as fast while
# ext4 was slow to allocate inodes (minutes after mass deletions); 4 threads
# with a batch per directory did best (benchmarks/copy_layer.py). A tree of
# fewer files than _POOL_MIN_FILES is not worth starting them.
_POOL_THREADS = 4
_POOL_BATCH = 256
_POOL_AHEAD = 4  # batches per thread given out ahead of the threads
_POOL_MIN_FILES = 64

_StrPath = str | Path


class FileOpError(Exception):
    """A file op cannot do what the Dockerfile asks: the user's fault.

    The message is one line and names the source or path; the caller may prefix
    the step it came from.
    """


class Ignore(Protocol):
    """The .dockerignore rules of a context (frontend.dockerignore implements it)."""

    def excluded(self, relpath: str) -> bool: ...

    def dir_may_contain_included(self, relpath: str) -> bool: ...


@dataclass(frozen=True)
class Selected:
    """One entry a copy reads.

    ``source`` is the index in ``action.sources`` of the pattern that selected
    it, ``top`` the name of the matched source (the last element of the path as
    written or as the wildcard matched it; "" for the source root itself) and
    ``inner`` the entry's path below the matched source ("" for the matched
    source). ``path`` (``fspath``) is the entry on disk, ``relpath`` that path
    relative to ``src_root`` (what .dockerignore sees), ``st`` its lstat (the
    matched source is already followed, so it is never a symlink) and ``link`` a
    symlink's target.

    With COPY --parents, ``place`` is the path below the destination where the
    matched source lands (its kept parents and its name; "" for the pivot
    itself), and ``parent`` marks a kept parent directory: it is created (with
    this entry's metadata when missing) but its other contents are not copied.
    Both stay at their defaults otherwise.
    """

    source: int
    top: str
    inner: str
    fspath: str  # the path as text: a Path per entry costs more than the stat
    relpath: str
    st: os.stat_result
    link: str | None = None
    place: str = ""
    parent: bool = False

    @property
    def path(self) -> Path:
        return Path(self.fspath)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


# --- Go's filepath.Match, one path element at a time ---------------------------


def _has_wildcard(element: str) -> bool:
    escaped = False
    for ch in element:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "*?[":
            return True
    return False


def _unescape(element: str) -> str:
    return re.sub(r"\\(.)", r"\1", element)


def _bad_pattern(pattern: str) -> FileOpError:
    return FileOpError(
        f"syntax error in pattern {pattern!r}: expected Go filepath.Match"
    )


@lru_cache(maxsize=1024)
def _element_regex(element: str) -> re.Pattern[str]:
    """Translate one path element of a Go ``filepath.Match`` pattern."""
    out: list[str] = []
    i, n = 0, len(element)
    while i < n:
        ch = element[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i >= n:
                raise _bad_pattern(element)
            out.append(re.escape(element[i]))
            i += 1
        elif ch == "[":
            cls, i = _class_regex(element, i)
            out.append(cls)
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _class_regex(element: str, i: int) -> tuple[str, int]:
    """A ``[...]`` class starting after the ``[`` at ``i``; Go's rules: ``^``
    negates, ``\\`` escapes, an empty class or a bare ``-``/``]`` is an error."""
    n = len(element)

    def char() -> str:
        nonlocal i
        if i >= n or element[i] in "-]":
            raise _bad_pattern(element)
        if element[i] == "\\":
            i += 1
            if i >= n:
                raise _bad_pattern(element)
        c = element[i]
        i += 1
        return c

    negated = i < n and element[i] == "^"
    if negated:
        i += 1
    ranges: list[str] = []
    count = 0
    while True:
        if i < n and element[i] == "]" and count > 0:
            i += 1
            break
        lo = char()
        hi = lo
        if i < n and element[i] == "-":
            i += 1
            hi = char()
        count += 1
        if lo <= hi:  # Go accepts an inverted range that matches nothing
            ranges.append(re.escape(lo) + ("-" + re.escape(hi) if hi != lo else ""))
    body = "".join(ranges)
    if negated:
        return ("[^/" + body + "]" if body else "[^/]"), i
    return ("[" + body + "]" if body else "(?!)"), i


def match_element(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match`` for one path element."""
    return _element_regex(pattern).fullmatch(name) is not None


class _Excludes:
    """``COPY --exclude`` patterns, with .dockerignore's semantics: ``**`` spans
    elements, a pattern that matches a directory excludes what it holds, a
    leading ``!`` re-includes, and the last matching pattern wins."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in patterns:
            negate = raw.startswith("!")
            text = posixpath.normpath(raw[1:] if negate else raw).lstrip("/")
            self._rules.append((negate, self._compile(text)))
        self._has_negation = any(negate for negate, _ in self._rules)

    @staticmethod
    def _compile(text: str) -> re.Pattern[str]:
        elements = text.split("/")
        parts: list[str] = []
        for i, element in enumerate(elements):
            last = i == len(elements) - 1
            if element == "**":
                parts.append(".*" if last else "(?:.*/)?")
            else:
                parts.append(_element_regex(element).pattern + ("" if last else "/"))
        return re.compile("".join(parts), re.DOTALL)

    def excluded(self, relpath: str) -> bool:
        prefixes = [relpath]
        while "/" in prefixes[-1]:
            prefixes.append(prefixes[-1].rsplit("/", 1)[0])
        result = False
        for negate, rx in self._rules:
            if any(rx.fullmatch(p) for p in prefixes):
                result = not negate
        return result

    def dir_may_contain_included(self, relpath: str) -> bool:
        # Conservative: any re-include might reach below relpath.
        return self._has_negation


class _Visibility:
    """What of the source a copy may see: .dockerignore and --exclude together.

    ``--exclude`` patterns are matched against the path in the source root and,
    inside a copied directory, also against the path below that directory, so
    ``COPY --exclude=*.md docs /d/`` drops ``docs/a.md``.
    """

    def __init__(self, ignore: Ignore | None, excludes: tuple[str, ...]) -> None:
        self._matchers: list[Ignore] = [ignore] if ignore is not None else []
        self._inner: _Excludes | None = None
        if excludes:
            self._inner = _Excludes(excludes)
            self._matchers.append(self._inner)

    def __bool__(self) -> bool:
        return bool(self._matchers)

    def state(self, relpath: str, is_dir: bool, inner: str = "") -> str:
        """ "show", "hide", or "walk" (an excluded directory that may hold
        re-included entries: descend, keep it only for what it holds)."""
        excluding = [m for m in self._matchers if m.excluded(relpath)]
        if inner and self._inner is not None and self._inner.excluded(inner):
            excluding.append(self._inner)
        if not excluding:
            return "show"
        if is_dir and all(m.dir_may_contain_included(relpath) for m in excluding):
            return "walk"
        return "hide"


# --- resolving paths inside a root ---------------------------------------------

# Answers "is this path (absolute, inside the root) a symlink, and to what?";
# None for anything else, missing paths included.
Readlink = Callable[[str], str | None]


def _disk_readlink(root: Path) -> Readlink:
    def readlink(path: str) -> str | None:
        try:
            return os.readlink(root / path.lstrip("/"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a symlink
                return None
            raise

    return readlink


def _resolve(path: str, readlink: Readlink, *, follow_last: bool = True) -> str:
    """Resolve ``path`` against a root as if the root were ``/``; returns the
    absolute, cleaned path inside the root. Missing elements are kept as they
    are, so the result may not exist."""
    parts = [p for p in path.split("/") if p]
    parts.reverse()  # a stack: the next element is parts[-1]
    resolved: list[str] = []
    hops = 0
    while parts:
        element = parts.pop()
        if element == ".":
            continue
        if element == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/" + "/".join([*resolved, element])
        target = None if (not parts and not follow_last) else readlink(candidate)
        if target is None:
            resolved.append(element)
            continue
        hops += 1
        if hops > _MAX_SYMLINKS:
            raise FileOpError(f"too many levels of symbolic links in {path!r}")
        if target.startswith("/"):
            resolved = []
        parts.extend(reversed([p for p in target.split("/") if p]))
    return "/" + "/".join(resolved)


def resolve_in_root(root: Path, path: str) -> Path:
    """The real path of ``path`` inside ``root``, following every symlink (the
    last one too) as if ``root`` were ``/``. The result is always inside
    ``root``; it may not exist."""
    inside = _resolve(path, _disk_readlink(root))
    return root / inside.lstrip("/") if inside != "/" else root


def _resolve_parent(root: Path, path: str) -> Path:
    """``path`` with its parent resolved in ``root`` and its last element not
    followed: where a write of ``path`` must go."""
    parent, name = posixpath.split(posixpath.normpath("/" + path.lstrip("/")))
    if not name:
        return root
    return resolve_in_root(root, parent) / name


def _inside(root: Path, real: Path) -> str:
    """The absolute path inside ``root`` of a real path under it."""
    rel = real.relative_to(root).as_posix()
    return "/" if rel == "." else "/" + rel


# --- selecting what a copy reads -----------------------------------------------


def _clean_source(pattern: str) -> str:
    # Lexical cleaning first, as filepath.Clean does: "a/../../b" is "/b".
    return posixpath.normpath("/" + pattern.lstrip("/"))


def _source_elements(pattern: str, parents: bool) -> tuple[list[str], int]:
    """The cleaned elements of a source, and how many of them lie before the
    pivot (COPY --parents keeps only the elements after it). Without a pivot
    the source root is the pivot. The two sides are cleaned apart, so ``..``
    after the pivot cannot climb above it."""
    head, sep, tail = pattern.partition("/./") if parents else ("", "", pattern)
    if not sep:
        head, tail = "", pattern
    before = [e for e in _clean_source(head).split("/") if e]
    after = [e for e in _clean_source(tail).split("/") if e]
    return before + after, len(before)


def _not_found(pattern: str, action: CopyAction, from_context: bool) -> FileOpError:
    verb = "ADD" if action.unpack else "COPY"
    where = "in the build context" if from_context else "in the source"
    return FileOpError(f'{verb}: "{pattern}" not found {where}')


def _visible_readlink(root: Path, vis: _Visibility) -> Readlink:
    """A readlink for the context that also refuses to walk through hidden
    entries: an ignored symlink or directory is not there at all."""
    disk = _disk_readlink(root)

    def readlink(path: str) -> str | None:
        rel = path.lstrip("/")
        try:
            st = os.lstat(root / rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if vis.state(rel, stat.S_ISDIR(st.st_mode)) == "hide":
            raise _Hidden(path)
        return disk(path) if stat.S_ISLNK(st.st_mode) else None

    return readlink


class _Hidden(Exception):
    """Internal: resolution walked into an ignored entry; the path is missing."""


def _matches(
    root: Path, elements: list[str], readlink: Readlink, vis: _Visibility
) -> list[tuple[str, str, str]]:
    """(name, path inside the root, path as matched) of every entry the source
    ``elements`` select; the second is fully resolved, the third is the path
    with its wildcards filled in and no symlink followed. Empty when nothing
    matches or exists."""
    # Each candidate: (unresolved path inside the root, its last element).
    candidates: list[tuple[str, str]] = [("/", "")]
    for element in elements:
        if not _has_wildcard(element):
            literal = _unescape(element)
            candidates = [(posixpath.join(p, literal), literal) for p, _ in candidates]
            continue
        rx = _element_regex(element)
        expanded: list[tuple[str, str]] = []
        for path, _ in candidates:
            try:
                real = root / _resolve(path, readlink).lstrip("/")
                names = sorted(os.listdir(real))
            except (_Hidden, FileNotFoundError, NotADirectoryError):
                continue
            expanded += [(posixpath.join(path, n), n) for n in names if rx.fullmatch(n)]
        candidates = expanded
    found: list[tuple[str, str, str]] = []
    for path, name in candidates:
        try:
            inside = _resolve(path, readlink)
        except _Hidden:
            continue
        try:
            st = os.lstat(root / inside.lstrip("/"))
        except (FileNotFoundError, NotADirectoryError):
            continue
        rel = inside.lstrip("/")
        if rel and vis and vis.state(rel, stat.S_ISDIR(st.st_mode)) == "hide":
            continue
        found.append((name, inside, path))
    return found


def _walk(
    source: int, top: str, directory: str, relpath: str, inner: str, vis: _Visibility
) -> list[Selected]:
    """The entries below a directory source, parents before children, names
    sorted in each directory."""
    out: list[Selected] = []
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISSOCK(st.st_mode):
            continue  # sockets are not copied, as in docker's tar transfer
        rel = f"{relpath}/{entry.name}" if relpath else entry.name
        sub = f"{inner}/{entry.name}" if inner else entry.name
        is_dir = stat.S_ISDIR(st.st_mode)
        state = vis.state(rel, is_dir, sub) if vis else "show"
        if state == "hide":
            continue
        link = os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else None
        here = Selected(source, top, sub, entry.path, rel, st, link)
        children = _walk(source, top, entry.path, rel, sub, vis) if is_dir else []
        if state == "show" or children:
            out.append(here)
            out.extend(children)
    return out


def select_sources(
    src_root: Path,
    action: CopyAction,
    ignore: Ignore | None,
    *,
    from_context: bool = True,
) -> list[Selected]:
    """The entries ``action`` reads from ``src_root``, in a fixed order: the
    sources in the order written, a wildcard's matches sorted, and below a
    directory source its entries depth first with names sorted. Each matched
    source comes first (``inner == ""``), followed. Raises FileOpError for a
    source that matches nothing."""
    vis = _Visibility(ignore, action.excludes)
    readlink = _visible_readlink(src_root, vis) if vis else _disk_readlink(src_root)
    kept: set[str] = set()  # --parents: kept parent directories already listed
    out: list[Selected] = []
    for index, pattern in enumerate(action.sources):
        elements, pivot = _source_elements(pattern, action.parents)
        matches = _matches(src_root, elements, readlink, vis)
        if not matches:
            raise _not_found(pattern, action, from_context)
        for name, inside, matched in matches:
            place = ""
            if action.parents:
                names = [e for e in matched.split("/") if e][pivot:]
                place = "/".join(names)
                out.extend(
                    _kept_parents(src_root, matched, pivot, index, readlink, kept)
                )
            path = src_root / inside.lstrip("/") if inside != "/" else src_root
            st = os.lstat(path)
            rel = inside.lstrip("/")
            out.append(Selected(index, name, "", str(path), rel, st, place=place))
            if stat.S_ISDIR(st.st_mode):
                out.extend(_walk(index, name, str(path), rel, "", vis))
    return out


def _kept_parents(
    root: Path,
    matched: str,
    pivot: int,
    index: int,
    readlink: Readlink,
    kept: set[str],
) -> list[Selected]:
    """The parent directories COPY --parents keeps for the source matched at
    ``matched`` (between the pivot and the source), outermost first, each
    with the metadata of the directory it names (a symlink followed); those
    already in ``kept`` are left out, and added to it."""
    names = [e for e in matched.split("/") if e]
    out: list[Selected] = []
    for end in range(pivot + 1, len(names)):
        place = "/".join(names[pivot:end])
        if place in kept:
            continue
        kept.add(place)
        # The match resolved through this directory, so it is visible.
        inside = _resolve("/" + "/".join(names[:end]), readlink)
        path = root / inside.lstrip("/")
        st = os.lstat(path)
        rel = inside.lstrip("/")
        top = names[end - 1]
        out.append(
            Selected(index, top, "", str(path), rel, st, place=place, parent=True)
        )
    return out


# --- owners and modes ----------------------------------------------------------


def _lookup(db: Path, name: str) -> list[str] | None:
    """The fields of ``name``'s line in a passwd or group file, or None."""
    try:
        with open(db, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 4 and fields[0] == name:
                    return fields
    except (FileNotFoundError, NotADirectoryError):
        return None
    return None


def resolve_owner(dest_root: Path, spec: str, flag: str = "--chown") -> tuple[int, int]:
    """uid and gid of ``user[:group]``: numbers as they are, names from the
    destination's /etc/passwd and /etc/group. A user without a group gets its
    primary group (a name) or the same number (a number), as docker does."""
    user, _, group = spec.partition(":")
    if not user:
        raise FileOpError(f"{flag}={spec}: expected user[:group]")
    passwd = resolve_in_root(dest_root, "/etc/passwd")
    if user.isdigit():
        uid, primary = int(user), int(user)
    else:
        fields = _lookup(passwd, user)
        if fields is None or not fields[2].isdigit() or not fields[3].isdigit():
            raise FileOpError(
                f"{flag}={spec}: unknown user {user!r} "
                "(not in the destination's /etc/passwd)"
            )
        uid, primary = int(fields[2]), int(fields[3])
    if not group:
        return uid, primary
    if group.isdigit():
        return uid, int(group)
    fields = _lookup(resolve_in_root(dest_root, "/etc/group"), group)
    if fields is None or not fields[2].isdigit():
        raise FileOpError(
            f"{flag}={spec}: unknown group {group!r} "
            "(not in the destination's /etc/group)"
        )
    return uid, int(fields[2])


def parse_chmod(text: str | None) -> int | None:
    """The mode of ``--chmod`` (octal digits), or None when not given."""
    if text is None:
        return None
    if not re.fullmatch(r"[0-7]{1,4}", text):
        raise FileOpError(f"--chmod={text}: expected an octal mode such as 0755")
    return int(text, 8)


def _set_meta(
    path: _StrPath,
    uid: int,
    gid: int,
    mode: int | None,
    times: tuple[int, int] | None,
    *,
    is_link: bool = False,
) -> None:
    # chown before chmod: chown clears setuid/setgid bits.
    os.chown(path, uid, gid, follow_symlinks=False)
    if mode is not None and not is_link:
        os.chmod(path, mode)
    if times is not None:
        os.utime(path, ns=times, follow_symlinks=False)


# --- writing into the destination ----------------------------------------------


def _ensure_dir(
    root: Path, path: str, owner: tuple[int, int] | None, mode: int = 0o755
) -> tuple[Path, bool]:
    """mkdir -p of ``path`` inside ``root``, following existing symlinks inside
    the root (a dangling one too: its target is created, as BuildKit does).
    Created directories get ``mode`` and ``owner`` (or root). Returns the real
    directory and whether its last element was created."""
    elements = [e for e in posixpath.normpath("/" + path).split("/") if e]
    current = root
    created = False
    for element in elements:
        current = resolve_in_root(root, _inside(root, current) + "/" + element)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            _create_chain(root, current, owner or (0, 0), mode)
            created = True
            continue
        created = False
        if not stat.S_ISDIR(st.st_mode):
            raise FileOpError(
                f"cannot create directory {path!r}: "
                f"{_inside(root, current)!r} exists and is not a directory"
            )
    return current, created


def _create_chain(root: Path, real: Path, owner: tuple[int, int], mode: int) -> None:
    """Create ``real`` and its missing parents; the existing part of a resolved
    path holds no symlinks, so plain mkdir cannot leave the root."""
    missing: list[Path] = []
    while not os.path.lexists(real) and real != root:
        missing.append(real)
        real = real.parent
    for directory in reversed(missing):
        os.mkdir(directory, 0o700)
        _set_meta(directory, owner[0], owner[1], mode, None)


def _clear(path: _StrPath, *, for_dir: bool) -> bool:
    """Make room for a new entry at ``path`` (never followed). Returns True when
    an existing directory is kept (``for_dir``)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if for_dir:
            return True
        name = os.path.basename(path)
        raise FileOpError(f"cannot replace directory {name!r} with a file")
    # Unlink instead of writing in place: the old inode may be shared with a
    # lower snapshot through a hard link.
    os.unlink(path)
    return False


def _sendfile(src_fd: int, dst_fd: int) -> bool:
    """Copy in the kernel, chunk by chunk, to the end of the source; False when
    the file systems do not support sendfile and nothing was copied yet."""
    offset = 0
    while True:
        try:
            sent = os.sendfile(dst_fd, src_fd, offset, _COPY_CHUNK)
        except OSError as exc:
            if offset == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS):
                return False
            raise
        if sent == 0:
            return True
        offset += sent


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_stream(fd: int, src: IO[bytes]) -> None:
    while chunk := src.read(_COPY_CHUNK):
        _write_all(fd, chunk)


def _create_file(dst: _StrPath) -> int:
    """Create ``dst`` for writing, never following a symlink there and never
    opening what is already there; returns the raw fd (no buffer: the data goes
    in with sendfile or whole writes)."""
    return os.open(dst, _CREATE_FLAGS, 0o600)


def _set_fd_meta(
    fd: int, uid: int, gid: int, mode: int | None, times: tuple[int, int] | None
) -> None:
    # chown before chmod: chown clears setuid/setgid bits. On the fd, not the
    # path: each path call would walk the overlay mount again.
    os.fchown(fd, uid, gid)
    if mode is not None:
        os.fchmod(fd, mode)
    if times is not None:
        os.utime(fd, ns=times)


def _copy_regular(
    src: str,
    dst: str,
    uid: int,
    gid: int,
    mode: int,
    times: tuple[int, int],
) -> None:
    """Create ``dst`` (its place is clear) with the bytes of the regular file
    ``src`` and the given metadata."""
    out = _create_file(dst)
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if not _sendfile(fd, out):
                while chunk := os.read(fd, _COPY_CHUNK):
                    _write_all(out, chunk)
        finally:
            os.close(fd)
        _set_fd_meta(out, uid, gid, mode, times)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = dst  # a call on an fd names no file: say which
        raise
    finally:
        os.close(out)


def _make_special(dst: _StrPath, st_mode: int, rdev: int) -> None:
    if stat.S_ISFIFO(st_mode):
        os.mkfifo(dst)
    else:
        os.mknod(dst, stat.S_IFMT(st_mode) | 0o600, rdev)


# What one regular file's copy needs: the arguments of _copy_regular.
_FileJob = tuple[str, str, int, int, int, tuple[int, int]]


class _FilePool:
    """Copies regular files on a few threads while the caller walks on.

    Copying a small file is a few system calls and little Python; the GIL is
    released during each call, so the threads' calls overlap the walk's and
    each other's (on overlay over ext4, creating the file is most of the time,
    in the kernel). Files go in batches, as a future per file would cost more
    than some of the files, and a batch holds files of one directory only:
    creating a file locks its directory, so threads that copy into different
    directories wait less for each other.

    ``settle`` waits for every batch and raises the error a one-thread copy
    would have raised: the first in walk order. A batch after a failed one is
    skipped (the copy fails anyway); one before it runs to its end, since an
    error of its own would come first.

    The pool's threads sit inside one of the worker's threads and outside its
    capacity limiter: they live only as long as one tree's copy, and a few
    more threads of system calls cost the machine little.
    """

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="copy")
        self._batch: list[_FileJob] = []
        self._futures: list[Future[None]] = []
        self._failed_at: int | None = None  # the first batch that failed
        self._lock = threading.Lock()
        self._directory = ""  # of the files in _batch
        # Batches given to the threads and not done: the walk waits rather than
        # queue a whole tree's files (and stops soon after a failure).
        self._in_flight = threading.BoundedSemaphore(threads * _POOL_AHEAD)

    @property
    def failed(self) -> bool:
        return self._failed_at is not None

    def submit(self, job: _FileJob) -> None:
        directory = job[1].rpartition("/")[0]
        if directory != self._directory:
            self._flush()
            self._directory = directory
        self._batch.append(job)
        if len(self._batch) >= _POOL_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            index = len(self._futures)
            self._in_flight.acquire()
            future = self._executor.submit(self._run, index, self._batch)
            future.add_done_callback(lambda _: self._in_flight.release())
            self._futures.append(future)
            self._batch = []

    def _run(self, index: int, jobs: list[_FileJob]) -> None:
        failed_at = self._failed_at
        if failed_at is not None and failed_at < index:
            return
        try:
            for job in jobs:
                _copy_regular(*job)
        except BaseException:
            with self._lock:
                if self._failed_at is None or index < self._failed_at:
                    self._failed_at = index
            raise

    def settle(self) -> None:
        """Wait until every submitted file is written; raise the first error."""
        if (exc := self.first_error()) is not None:
            raise exc

    def first_error(self) -> BaseException | None:
        """Wait until every submitted file is written or given up; the first
        error in walk order, or None."""
        self._flush()
        wait(self._futures)
        for future in self._futures:
            if (exc := future.exception()) is not None:
                return exc
        return None

    def close(self) -> None:
        self._executor.shutdown(wait=True)


@contextmanager
def _file_pool(files: int) -> Iterator[_FilePool | None]:
    """A _FilePool for a tree of ``files`` regular files (None for a few: not
    worth the threads). On leaving, every file is written or the first error
    is raised; an error of the walk itself yields to an earlier one of a file."""
    if files < _POOL_MIN_FILES:
        yield None
        return
    pool = _FilePool(_POOL_THREADS)
    try:
        try:
            yield pool
        except BaseException:
            if (earlier := pool.first_error()) is not None:
                raise earlier from None
            raise
        pool.settle()
    finally:
        pool.close()


@dataclass(frozen=True)
class Kept:
    """Regular files that an earlier run of the same copy left in the
    destination (snapshotter.clone) and that need no writing again.

    ``sources`` are the context paths (``Selected.relpath``) whose content and
    written mode did not change since that run; ``placed`` the paths, relative
    to the destination root, of the files it wrote that are there as it wrote
    them. A file is kept when both name it; the cache key covers everything
    else a copy's result depends on (the op, the parent, the owner)."""

    sources: Collection[str]
    placed: Collection[str]


class _Writer:
    """Writes selected entries under real directories of ``dest_root``; keeps
    hard links between copied files, and sets directory mtimes last (writing
    into a directory changes its mtime)."""

    def __init__(
        self,
        root: Path,
        owner: tuple[int, int] | None,
        mode: int | None,
        keep_owner: bool,
        kept: Kept | None = None,
    ) -> None:
        self.root = root
        self.owner = owner
        self.mode = mode
        self.keep_owner = keep_owner
        self.kept = kept
        self.kept_count = 0
        self._prefix = f"{root}/"
        self.links: dict[tuple[int, int], str] = {}
        self.dir_times: list[tuple[_StrPath, tuple[int, int]]] = []

    def ids(self, st_uid: int, st_gid: int) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        return (st_uid, st_gid) if self.keep_owner else (0, 0)

    def child_dir(self, parent: str, name: str) -> str:
        """The real directory ``name`` in ``parent``: an existing symlink to a
        directory inside the root is followed, as docker does."""
        dst = f"{parent}/{name}"
        if os.path.islink(dst):
            real = resolve_in_root(self.root, _inside(self.root, Path(dst)))
            if real.is_dir():
                return str(real)
        return dst

    def entry(
        self,
        e: Selected,
        dst: _StrPath,
        *,
        fresh: bool = False,
        pool: _FilePool | None = None,
    ) -> bool:
        """Write ``e`` at ``dst``. ``fresh`` says that ``dst``'s directory was
        created by this copy and nothing was written at ``dst`` yet, so there is
        nothing to clear; ``pool`` takes a regular file to write on a thread
        then (only then: its place is known to be clear without looking).
        Returns True when a directory was created (its children are fresh)."""
        st = e.st
        uid, gid = self.ids(st.st_uid, st.st_gid)
        times = (st.st_atime_ns, st.st_mtime_ns)
        mode = self.mode if self.mode is not None else stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            path = os.fspath(dst)
            if not fresh and self._keeps(e, path):
                return False
            if not fresh:
                _clear(path, for_dir=False)
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = self.links.get(key)
                if first is not None:
                    os.link(first, path)
                    return False
                # Written here, not on a thread: a later link needs it there.
                self.links[key] = path
                pool = None
            job = (e.fspath, path, uid, gid, mode, times)
            if pool is not None and fresh:
                pool.submit(job)
            else:
                _copy_regular(*job)
            return False
        if stat.S_ISDIR(st.st_mode):
            created = fresh or not _clear(dst, for_dir=True)
            if created:
                os.mkdir(dst, 0o700)
            _set_meta(dst, uid, gid, mode, None)
            self.dir_times.append((dst, times))
            return created
        if not fresh:
            _clear(dst, for_dir=False)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(e.link or "", dst)
            _set_meta(dst, uid, gid, None, times, is_link=True)
        else:
            _make_special(dst, st.st_mode, st.st_rdev)
            _set_meta(dst, uid, gid, mode, times)
        return False

    def _keeps(self, e: Selected, path: str) -> bool:
        kept = self.kept
        if (
            kept is None
            or e.st.st_nlink > 1  # whether it is linked is decided again
            or e.relpath not in kept.sources
            or not path.startswith(self._prefix)
            or path[len(self._prefix) :] not in kept.placed
        ):
            return False
        self.kept_count += 1
        return True

    def finish(self) -> None:
        for path, times in reversed(self.dir_times):
            os.utime(path, ns=times, follow_symlinks=False)


def _dest_is_dir(dest: str) -> bool:
    return dest.endswith("/") or posixpath.basename(dest) in ("", ".")


def copy(
    dest_root: Path,
    src_root: Path,
    action: CopyAction,
    *,
    ignore: Ignore | None,
    from_context: bool,
    kept: Kept | None = None,
    selected: list[Selected] | None = None,
) -> int:
    """Run a COPY or ADD: write what ``select_sources`` selects from
    ``src_root`` to ``action.dest`` inside ``dest_root``, except the files
    ``kept`` says are there already. Returns how many of those it kept.
    ``selected``: that selection, when the caller made it already (the
    context's checksum did)."""
    entries = selected
    if entries is None:
        entries = select_sources(src_root, action, ignore, from_context=from_context)
    owner = resolve_owner(dest_root, action.chown) if action.chown else None
    chmod = parse_chmod(action.chmod)
    writer = _Writer(dest_root, owner, chmod, not from_context, kept)
    dest = posixpath.normpath("/" + action.dest.lstrip("/"))
    if action.parents:
        _copy_parents(dest_root, dest, entries, writer, action.unpack)
        writer.finish()
        return writer.kept_count
    dest_dir = _dest_is_dir(action.dest)
    tops = [e for e in entries if not e.inner]
    if len(tops) > 1 and not dest_dir:
        raise FileOpError(
            "When using COPY with more than one source file, "
            "the destination must be a directory and end with a /"
        )
    if not dest_dir and resolve_in_root(dest_root, dest).is_dir():
        dest_dir = True
    groups: list[list[Selected]] = []
    for e in entries:
        if not e.inner:
            groups.append([e])
        else:
            groups[-1].append(e)
    for group in groups:
        _copy_one(dest_root, dest, dest_dir, group, writer, action.unpack)
    writer.finish()
    return writer.kept_count


def _copy_parents(
    root: Path, dest: str, entries: list[Selected], writer: _Writer, unpack: bool
) -> None:
    """COPY --parents: ``dest`` is a directory, each matched source lands at
    ``dest/place``, and a kept parent directory that is missing is created
    with its source's metadata (an existing one is left as it is, as the
    destination of a plain copy is)."""
    groups: list[list[Selected]] = []
    for e in entries:
        if e.parent or not e.inner:
            groups.append([e])
        else:
            groups[-1].append(e)
    for group in groups:
        top = group[0]
        if top.parent:
            target, created = _ensure_dir(
                root, posixpath.join(dest, top.place), writer.owner
            )
            if created:
                writer.entry(top, target)
        elif not top.place:  # the pivot itself: its contents, or a file's name
            _copy_one(root, dest, True, group, writer, unpack)
        else:
            place = posixpath.join(dest, top.place)
            _copy_one(root, place, top.is_dir, group, writer, unpack)


def _copy_one(
    root: Path,
    dest: str,
    dest_dir: bool,
    group: list[Selected],
    writer: _Writer,
    unpack: bool,
) -> None:
    """Copy one matched source (``group[0]``) and what lies below it."""
    top = group[0]
    if top.is_dir:
        target, created = _ensure_dir(root, dest, writer.owner)
        if created:
            writer.entry(top, target)  # a created target takes the source's metadata
        _copy_tree(target, group[1:], writer, created)
        return
    if unpack and stat.S_ISREG(top.st.st_mode):
        opener = archive_opener(top.path)
        if opener is not None:
            target, _ = _ensure_dir(root, dest, writer.owner)
            _unpack(root, target, opener, top.path.name, writer)
            return
    if dest_dir:
        parent, _ = _ensure_dir(root, dest, writer.owner)
        dst = parent / top.top
    else:
        dirname, name = posixpath.split(dest)
        parent, _ = _ensure_dir(root, dirname, writer.owner)
        dst = parent / name
    writer.entry(top, dst)


def _copy_tree(
    target: Path, entries: list[Selected], writer: _Writer, fresh: bool
) -> None:
    """Write the entries below a directory source into ``target`` (``fresh``:
    created by this copy, so empty)."""
    # Real directory and freshness of each directory by its inner path. Names
    # in one directory are unique, so a directory this walk created stays
    # fresh for the whole walk: no lstat before each entry written in it.
    real_dirs: dict[str, tuple[str, bool]] = {"": (str(target), fresh)}
    files = sum(1 for e in entries if stat.S_ISREG(e.st.st_mode))
    with _file_pool(files) as pool:
        for e in entries:
            parent_inner, _, name = e.inner.rpartition("/")
            parent, in_fresh = real_dirs[parent_inner]
            if e.is_dir:
                dst = f"{parent}/{name}"
                if not in_fresh:
                    dst = writer.child_dir(parent, name)
                    if pool is not None and dst != f"{parent}/{name}":
                        # A symlink in the destination: this directory may be
                        # one the walk wrote under another name, and the
                        # entries below must find that name's files there.
                        pool.settle()
                created = writer.entry(e, dst, fresh=in_fresh)
                real_dirs[e.inner] = (dst, created)
            else:
                writer.entry(e, f"{parent}/{name}", fresh=in_fresh, pool=pool)
                if pool is not None and pool.failed:
                    break  # the pool raises the error on leaving


# --- ADD of local tar archives -------------------------------------------------

# Every decompressing file of the standard library (and pyzstd's) is a
# BufferedIOBase, as is a file opened "rb".
_Wrap = Callable[[BinaryIO], io.BufferedIOBase]
_DECOMPRESSORS: list[tuple[bytes, _Wrap]] = [
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", lambda f: bz2.BZ2File(f, "rb")),
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f, "rb")),
    (b"\x28\xb5\x2f\xfd", lambda f: pyzstd.ZstdFile(f, "rb")),
]


def _is_tar_header(block: bytes) -> bool:
    """A valid first tar header: its checksum field matches, whatever the tar
    dialect (v7, ustar, gnu, pax)."""
    if len(block) < 512 or block.count(0) == 512:
        return False
    field = block[148:156].replace(b"\x00", b" ").strip()
    if not field or not re.fullmatch(rb"[0-7]+", field):
        return False
    expected = int(field, 8)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:512])
    return expected in (unsigned, signed + 8 * 32)


Opener = Callable[[], io.BufferedIOBase]


def archive_opener(path: Path) -> Opener | None:
    """A function that opens ``path`` as a decompressed stream when it is a tar
    archive (plain, gzip, bzip2, xz or zstd, by content), else None."""
    with open(path, "rb") as f:
        magic = f.read(6)
    wrap: _Wrap | None = None
    for prefix, decompressor in _DECOMPRESSORS:
        if magic.startswith(prefix):
            wrap = decompressor
            break

    def opener() -> io.BufferedIOBase:
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller
        return wrap(raw) if wrap is not None else raw

    try:
        with opener() as stream:
            head = stream.read(512)
    except (OSError, EOFError, lzma.LZMAError, pyzstd.ZstdError):
        return None  # compressed-looking but not decompressible: a plain file
    return opener if _is_tar_header(head) else None


def _members(opener: Opener) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    with opener() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            yield tar, member


def _archive_path(name: str, archive: str, base: str) -> str:
    """The path inside the root of an archive entry; refuses absolute names and
    names that climb out of the destination."""
    if name.startswith("/"):
        raise FileOpError(f"ADD {archive}: entry {name!r} has an absolute path")
    joined = posixpath.normpath(posixpath.join(base, name))
    if not _under(joined, base):
        raise FileOpError(f"ADD {archive}: entry {name!r} would land outside {base}")
    return joined


def _under(path: str, base: str) -> bool:
    return base == "/" or path == base or path.startswith(base + "/")


def _check_archive(root: Path, base: str, opener: Opener, archive: str) -> None:
    """Pass 1: fail on any entry that would be written outside ``base``,
    following the archive's own symlinks and those already in the root."""
    disk = _disk_readlink(root)
    shadow: dict[str, str | None] = {}  # archive entries seen so far

    def readlink(path: str) -> str | None:
        return shadow[path] if path in shadow else disk(path)

    for _, m in _members(opener):
        path = _archive_path(m.name, archive, base)
        parent = _resolve(posixpath.dirname(path), readlink)
        if not _under(parent, base):
            raise FileOpError(
                f"ADD {archive}: entry {m.name!r} would be written through a "
                f"symlink to {parent}, outside {base}"
            )
        if m.islnk():
            target = _archive_path(m.linkname, archive, base)
            where = _resolve(target, readlink, follow_last=False)
            if not _under(where, base):
                raise FileOpError(
                    f"ADD {archive}: hard link {m.name!r} points outside {base} "
                    f"({m.linkname!r})"
                )
        real = posixpath.join(parent, posixpath.basename(path))
        shadow[real] = m.linkname if m.issym() else None


def _unpack(
    root: Path, target: Path, opener: Opener, archive: str, writer: _Writer
) -> None:
    base = _inside(root, target)
    _check_archive(root, base, opener, archive)
    for tar, m in _members(opener):
        path = _archive_path(m.name, archive, base)
        if path == base:
            continue  # the "./" entry: the destination itself stays as it is
        dirname, name = posixpath.split(path)
        parent, _ = _ensure_dir(root, dirname, writer.owner)
        dst = parent / name
        uid, gid = writer.owner or (m.uid, m.gid)
        mode = writer.mode if writer.mode is not None else m.mode & 0o7777
        mtime_ns = int(m.mtime * 10**9)  # exact when mtime is an int
        times = (mtime_ns, mtime_ns)
        if m.isdir():
            # A symlink in the way is replaced, not followed, as tar does; the
            # check pass simulated exactly that.
            if not _clear(dst, for_dir=True):
                os.mkdir(dst, 0o700)
            _set_meta(dst, uid, gid, mode, None)
            writer.dir_times.append((dst, times))
            continue
        _clear(dst, for_dir=False)
        if m.issym():
            os.symlink(m.linkname, dst)
            _set_meta(dst, uid, gid, None, times, is_link=True)
        elif m.islnk():
            link_path = _archive_path(m.linkname, archive, base)
            os.link(_resolve_parent(root, link_path), dst, follow_symlinks=False)
        elif m.isfile():
            fileobj = tar.extractfile(m)
            assert fileobj is not None  # a regular member always has data
            fd = _create_file(dst)
            try:
                _write_stream(fd, fileobj)
                _set_fd_meta(fd, uid, gid, mode, times)
            finally:
                os.close(fd)
        elif m.ischr() or m.isblk() or m.isfifo():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            kind = stat.S_IFIFO if m.isfifo() else kind
            _make_special(dst, kind, os.makedev(m.devmajor, m.devminor))
            _set_meta(dst, uid, gid, mode, times)


# --- WORKDIR and heredoc files -------------------------------------------------


def mkdir(dest_root: Path, action: MkdirAction) -> None:
    """``mkdir -p`` of ``action.path``; directories it creates get
    ``action.mode`` and ``action.owner``, existing ones are left as they are."""
    owner = resolve_owner(dest_root, action.owner, "owner") if action.owner else None
    try:
        _ensure_dir(dest_root, action.path, owner, action.mode)
    except FileOpError as exc:
        raise FileOpError(f"mkdir {action.path}: {exc}") from None


def mkfile(dest_root: Path, action: MkfileAction) -> None:
    """Write ``action.data`` to ``action.path``, replacing a file or symlink
    there (never writing through it); missing parents are created 0755."""
    owner = resolve_owner(dest_root, action.owner, "owner") if action.owner else None
    dirname, name = posixpath.split(posixpath.normpath("/" + action.path))
    if not name:
        raise FileOpError(f"cannot write file {action.path!r}: it is the root")
    parent, _ = _ensure_dir(dest_root, dirname, None)
    dst = parent / name
    _clear(dst, for_dir=False)
    uid, gid = owner or (0, 0)
    fd = _create_file(dst)
    try:
        _write_all(fd, action.data.encode())
        _set_fd_meta(fd, uid, gid, action.mode, None)
    finally:
        os.close(fd)
