"""The thin client over ``tcp://HOST:PORT`` with TLS: a command runs in a remote
daemon, and a build sends the daemon only the context files it reads and lacks.

Standard library only (like buildpy.client, whose frames and exit codes it
shares): ``buildpy --addr tcp://...`` costs the interpreter, ssl and hashlib.

Theory of operation
-------------------
A build is four requests on one TLS connection, then the command itself
(docs/api.md, "The context over TCP"):

1. ``POST /context/plan``: the daemon parses argv with the real parser and
   names the context and Dockerfile paths as given (or returns the parser's own
   output and exit code: ``--help``, a bad flag).
2. ``POST /context/needs``: the Dockerfile and .dockerignore go up; the daemon
   converts the Dockerfile and answers the source patterns of every COPY, ADD
   and ``RUN --mount=type=bind`` that reads the context (one regular expression
   or literal per path element) and the .dockerignore rules as regular
   expressions.
3. ``POST /context/entries``: the client walks only what those patterns reach
   (``Scanner``), hashes each regular file (sha256) and sends one JSON line per
   entry; the daemon answers the digests it lacks.
4. ``POST /context/files``: those files, as a tar stream whose members are named
   by digest; each is hashed again while it is sent and the daemon verifies it.

The walk is a superset of what the build reads (it ignores ``COPY --exclude``,
and descends into an ignored directory when a ``!`` rule might re-include
something below it): the daemon materialises the entries and the build there
applies the exact rules again, so a superset gives the same result.

A file is read only when its stat changed: the content digests are remembered
per context in ``$XDG_CACHE_HOME/buildpy/context-*.json`` with size, mtime,
ctime, inode and mode, trusted by the racy-mtime rule of buildpy/context.py (a
record counts only when the file's timestamps are older, by a margin, than the
moment its hashing started).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import ssl
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from buildpy import client
from buildpy.ignorefile import ignore_file
from buildpy.tlsaddr import (
    TLSConfigError,
    client_context,
    client_files,
    parse_tcp,
    split_tls_flags,
)

CACHE_VERSION = 1
_CHUNK = 1 << 20
_MAX_SYMLINKS = 40
_CLOCK_REALTIME_COARSE = 5  # <linux/time.h>
# The client's environment stays on the client, but for what a command's
# output depends on; the daemon runs with its own environment otherwise.
PASS_ENV = (
    "BUILDKIT_PROGRESS",
    "SOURCE_DATE_EPOCH",
    "NO_COLOR",
    "TERM",
    "COLUMNS",
    "LINES",
    "BUILDPY_DEBUG",
)


class SyncError(Exception):
    """The context cannot be sent: a file changed while it was read or sent."""


# --- the stat cache --------------------------------------------------------------


def _coarse_tick_ns() -> int:
    try:
        return int(time.clock_getres(_CLOCK_REALTIME_COARSE) * 1e9)
    except OSError:
        return 10_000_000


_TICK_NS = _coarse_tick_ns()


def racy_margin_ns(mtime_ns: int, ctime_ns: int) -> int:
    """As buildpy.context.racy_margin_ns: whole-second stamps need 2 s."""
    if mtime_ns % 1_000_000_000 == 0 and ctime_ns % 1_000_000_000 == 0:
        return 2_000_000_000
    return max(2 * _TICK_NS, 10_000_000)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return Path(base) / "buildpy"


class StatCache:
    """Content digests of one context's files, keyed by path below the context.

    A record is ``[size, mtime_ns, ctime_ns, inode, mode, digest, recorded_ns]``;
    only the records of files seen by the last walk are kept."""

    def __init__(self, root: str, path: Path) -> None:
        self.root = root
        self.path = path
        self.old: dict[str, list[Any]] = {}
        self.new: dict[str, list[Any]] = {}

    @classmethod
    def load(cls, root: str) -> StatCache:
        name = hashlib.sha256(os.fsencode(root)).hexdigest()[:24]
        cache = cls(root, cache_dir() / f"context-{name}.json")
        try:
            data = json.loads(cache.path.read_text())
            if data.get("version") == CACHE_VERSION and data.get("root") == root:
                cache.old = data["files"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache or a damaged one: every file is read
        return cache

    def lookup(self, rel: str, st: os.stat_result) -> str | None:
        rec = self.old.get(rel)
        if rec is None:
            return None
        size, mtime, ctime, ino, mode, digest, recorded = rec
        same = (size, mtime, ctime, ino, mode) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_mode,
        )
        if not same or max(mtime, ctime) >= recorded - racy_margin_ns(mtime, ctime):
            return None
        self.new[rel] = rec
        return str(digest)

    def remember(self, rel: str, st: os.stat_result, digest: str, started: int) -> None:
        self.new[rel] = [
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_mode,
            digest,
            started,
        ]

    def save(self) -> None:
        """Write the records atomically; a cache that cannot be written is
        only slower next time."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            data = {"version": CACHE_VERSION, "root": self.root, "files": self.new}
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, self.path)
        except OSError:
            pass


def hash_file(path: str, size: int | None = None) -> str:
    """sha256 of a file's content, streamed (``size``: exactly that many bytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while True:
            chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
                if left == 0:
                    break
    return "sha256:" + h.hexdigest()


# --- walking what the build reads ------------------------------------------------


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


class Scanner:
    """The entries of a context that a build's source patterns reach.

    ``ignore`` is the daemon's .dockerignore rules, ``[is_reinclude, regex]`` in
    order, matched as frontend.dockerignore does. ``entries`` maps a path below
    the context ("." for the context itself) to what the daemon is sent."""

    def __init__(
        self,
        root: str,
        ignore: Sequence[Sequence[Any]],
        cache: StatCache,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.root = os.path.realpath(root)
        self.rules = [
            (bool(rule[0]), re.compile(str(rule[1]), re.S)) for rule in ignore
        ]
        self.negations = any(reinclude for reinclude, _ in self.rules)
        self.cache = cache
        self.started = clock()  # before the walk: see the racy rule
        self.entries: dict[str, dict[str, Any]] = {}
        self.hashed = 0  # files read to hash them: tests count them
        self._links: dict[tuple[int, int], str] = {}

    # .dockerignore, as frontend.dockerignore.IgnoreMatcher.excluded
    def excluded(self, rel: str) -> bool:
        if not self.rules or rel in ("", "."):
            return False
        parents = rel.split("/")[:-1]
        prefixes = ["/".join(parents[: i + 1]) for i in range(len(parents))]
        matched = False
        for reinclude, rx in self.rules:
            if reinclude != matched:
                continue
            if rx.match(rel) or any(rx.match(p) for p in prefixes):
                matched = not reinclude
        return matched

    def _hidden(self, rel: str, is_dir: bool) -> bool:
        """Excluded, and no re-include rule can bring back anything below."""
        return self.excluded(rel) and not (is_dir and self.negations)

    def _full(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def resolve(self, path: str, follow_last: bool = True) -> str | None:
        """``path`` resolved inside the context as if it were ``/`` (as
        buildpy.fileops does); every symlink met is an entry. None when the way
        goes through an ignored entry or loops."""
        parts = [p for p in path.split("/") if p]
        parts.reverse()
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
            candidate = "/".join([*resolved, element])
            if not parts and not follow_last:
                resolved.append(element)
                continue
            try:
                st = os.lstat(self._full(candidate))
            except (FileNotFoundError, NotADirectoryError):
                resolved.append(element)
                continue
            if self._hidden(candidate, stat.S_ISDIR(st.st_mode)):
                return None
            if not stat.S_ISLNK(st.st_mode):
                resolved.append(element)
                continue
            self.add(candidate, st)
            hops += 1
            if hops > _MAX_SYMLINKS:
                return None
            target = os.readlink(self._full(candidate))
            if target.startswith("/"):
                resolved = []
            parts.extend(reversed([p for p in target.split("/") if p]))
        return "/".join(resolved)

    def source(self, elements: Sequence[Sequence[str]]) -> None:
        """Add what one source pattern selects: ``[["lit", name] | ["re", rx]]``."""
        candidates = [""]
        for kind, value in elements:
            if kind == "lit":
                candidates = [_join(c, value) for c in candidates]
                continue
            rx = re.compile(value, re.S)
            expanded: list[str] = []
            for candidate in candidates:
                real = self.resolve(candidate)
                if real is None:
                    continue
                try:
                    names = sorted(os.listdir(self._full(real)))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                expanded += [_join(candidate, n) for n in names if rx.fullmatch(n)]
            candidates = expanded
        for candidate in candidates:
            real = self.resolve(candidate)
            if real is None:
                continue
            try:
                st = os.lstat(self._full(real))
            except (FileNotFoundError, NotADirectoryError):
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if real and self._hidden(real, is_dir):
                continue
            self.add(real or ".", st)
            if is_dir:
                self.walk(real)

    def walk(self, rel: str) -> None:
        """Everything below a directory that .dockerignore leaves, not followed."""
        with os.scandir(self._full(rel)) as it:
            found = sorted(it, key=lambda e: e.name)
        for entry in found:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISSOCK(st.st_mode):
                continue  # never copied
            sub = _join(rel, entry.name)
            is_dir = stat.S_ISDIR(st.st_mode)
            if self._hidden(sub, is_dir):
                continue
            if sub not in self.entries:
                self.add(sub, st)
            if is_dir:
                self.walk(sub)

    def add(self, rel: str, st: os.stat_result) -> None:
        """One entry, its parent directories first."""
        if rel in self.entries:
            return
        if rel != ".":
            parent = rel.rpartition("/")[0] or "."
            if parent not in self.entries:
                self.add(parent, os.lstat(self._full("" if parent == "." else parent)))
        entry: dict[str, Any] = {
            "path": rel,
            "mode": st.st_mode,
            "mtime": st.st_mtime_ns,
        }
        full = self._full("" if rel == "." else rel)
        if stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self._links:
                entry["hardlink"] = self._links[key]
            else:
                if st.st_nlink > 1:
                    self._links[key] = rel
                digest = self.cache.lookup(rel, st)
                if digest is None:
                    digest = hash_file(full)
                    self.hashed += 1
                    self.cache.remember(rel, st, digest, self.started)
                entry["digest"] = digest
        elif stat.S_ISLNK(st.st_mode):
            entry["link"] = os.readlink(full)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            entry["rdev"] = st.st_rdev
        self.entries[rel] = entry


def scan(
    context: str,
    needs: dict[str, Any],
    *,
    clock: Callable[[], int] = time.time_ns,
    keep: bool = True,
) -> Scanner:
    """Walk and hash what the daemon's ``needs`` reach; the stat cache is
    read before and written after (not for a context never seen again:
    ``keep`` False)."""
    root = os.path.realpath(context)
    cache = StatCache.load(root)
    scanner = Scanner(root, needs.get("ignore") or [], cache, clock=clock)
    for elements in needs.get("sources") or []:
        scanner.source(elements)
    if keep:
        cache.save()
    return scanner


# --- the tar of missing files ------------------------------------------------------


def tar_stream(scanner: Scanner, missing: Sequence[str]) -> Iterator[bytes]:
    """A tar (GNU format) of one member per missing digest, named by its hex,
    streamed; each file is hashed again while it is read."""
    import tarfile  # here: the other commands need not import it

    by_digest: dict[str, dict[str, Any]] = {}
    for entry in scanner.entries.values():
        digest = entry.get("digest")
        if digest is not None:
            by_digest.setdefault(digest, entry)
    for digest in missing:
        entry = by_digest.get(digest)
        if entry is None:
            raise SyncError(f"the daemon asked for {digest}, which was not listed")
        path = scanner._full(entry["path"])
        size = int(entry["size"])
        info = tarfile.TarInfo(digest.removeprefix("sha256:"))
        info.size = size
        info.mode = 0o644
        yield info.tobuf(tarfile.GNU_FORMAT)
        h = hashlib.sha256()
        left = size
        with open(path, "rb") as f:
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
                yield chunk
        if left or "sha256:" + h.hexdigest() != digest:
            raise SyncError(f"{entry['path']} changed while it was sent; build again")
        if size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def entry_lines(scanner: Scanner) -> Iterator[bytes]:
    batch: list[bytes] = []
    for entry in scanner.entries.values():
        batch.append(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        if len(batch) >= 512:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)


# --- talking to the daemon -----------------------------------------------------------


class _Refused(Exception):
    """The daemon answered a request with an error status."""


def _post_json(conn: http.client.HTTPConnection, path: str, body: Any) -> Any:
    conn.request(
        "POST",
        path,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return _answer(conn, path)


def _post_stream(
    conn: http.client.HTTPConnection, path: str, body: Iterator[bytes], kind: str
) -> Any:
    conn.request(
        "POST", path, body=body, headers={"Content-Type": kind}, encode_chunked=True
    )
    return _answer(conn, path)


def _answer(conn: http.client.HTTPConnection, path: str) -> Any:
    resp = conn.getresponse()
    payload = resp.read()
    if resp.status >= 400:
        try:
            message = json.loads(payload)["message"]
        except (ValueError, KeyError, TypeError):
            message = payload.decode(errors="replace").strip()
        raise _Refused(f"{path}: {message}")
    return json.loads(payload) if payload else None


def _replay(answer: dict[str, Any]) -> int:
    """Print what the daemon's parse printed, exit with its code."""
    sys.stdout.write(answer.get("stdout", ""))
    sys.stderr.write(answer.get("stderr", ""))
    sys.stdout.flush()
    sys.stderr.flush()
    return int(answer.get("exit_code", client.EXIT_INFRA))


def send_context(conn: http.client.HTTPConnection, argv: list[str]) -> int | None:
    """Steps 1-4 of a build (see above); an exit code when the command ends
    here, None when the daemon has the context and the build may start."""
    plan = _post_json(conn, "/context/plan", {"argv": argv})
    if "exit_code" in plan:
        return _replay(plan)
    if not plan.get("context"):
        return None
    context = Path(plan["context"])
    dockerfile = Path(plan["dockerfile"]) if plan.get("dockerfile") else None
    if "-" not in (plan["context"], plan.get("dockerfile")):
        return _send_context(conn, argv, context, dockerfile)
    # -f - or build -: read here, where stdin is; the daemon gets files as ever.
    # Imported here: tarfile and what it imports cost every other command.
    from buildpy import stdinput
    from buildpy.errors import BuildpyError

    try:
        with stdinput.build_input(context, dockerfile, sys.stdin.buffer, None) as given:
            return _send_context(
                conn,
                argv,
                given.context,
                given.dockerfile,
                given.dockerfile_text,
                keep=context != stdinput.STDIN,
            )
    except BuildpyError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code


def _send_context(
    conn: http.client.HTTPConnection,
    argv: list[str],
    context: Path,
    dockerfile: Path | None,
    dockerfile_text: str | None = None,
    *,
    keep: bool = True,
) -> int | None:
    """Steps 2-4 for the context directory ``context``; ``dockerfile_text``:
    the Dockerfile read from stdin. ``keep``: whether the stat cache is kept
    (not for a context unpacked from stdin, never seen again)."""
    if not context.is_dir():
        print(
            f"ERROR: build context {str(context)!r} is not a directory", file=sys.stderr
        )
        return client.EXIT_USAGE
    path = dockerfile or context / "Dockerfile"
    found = ignore_file(context, None if dockerfile_text is not None else path)
    if dockerfile_text is not None:  # from stdin: beside no other file
        path, text = Path("Dockerfile"), dockerfile_text
    else:
        try:
            text = path.read_text()
        except FileNotFoundError:
            message = f"ERROR: cannot read Dockerfile: {path} does not exist"
            print(message, file=sys.stderr)
            return client.EXIT_USAGE
        except (OSError, UnicodeDecodeError) as exc:
            print(f"ERROR: cannot read Dockerfile {path}: {exc}", file=sys.stderr)
            return client.EXIT_USAGE
    ignore = found.read_text() if found is not None else None
    needs = _post_json(
        conn,
        "/context/needs",
        {
            "argv": argv,
            "dockerfile": {"name": path.name, "text": text},
            "dockerignore": ignore,
        },
    )
    scanner = scan(str(context), needs, keep=keep)
    listed = _post_stream(
        conn, "/context/entries", entry_lines(scanner), "application/x-ndjson"
    )
    _post_stream(
        conn,
        "/context/files",
        tar_stream(scanner, listed["missing"]),
        "application/x-tar",
    )
    return None


def _tls_failure(addr: str, exc: BaseException) -> int:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    if not reason:  # closed without a word: TLS 1.3 refuses after the handshake
        reason = "the client's certificate was not accepted"
    print(
        f"ERROR: the buildpy daemon at {addr} refused the connection: {reason}",
        file=sys.stderr,
    )
    return client.EXIT_INFRA


def _names_input(argv: Sequence[str]) -> bool:
    """Whether a ``load`` command line gives -i/--input (else it reads stdin),
    or asks for help."""
    return any(
        token in ("-i", "--input", "-h", "--help")
        or token.startswith(("--input=", "-i"))
        for token in argv
    )


def run_cli(addr: str, argv: Sequence[str]) -> int:
    """``buildpy ARGV`` in the daemon at ``tcp://HOST:PORT``; its exit code."""
    try:
        host, port = parse_tcp(addr)
        rest, flags = split_tls_flags(argv)
        ctx = client_context(client_files(flags, dict(os.environ)))
    except TLSConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return client.EXIT_USAGE
    command = client._split_global(rest)[3]
    rest = client.resolve_build_args(rest)
    if command == "load" and not _names_input(rest):
        print(
            "ERROR: load: stdin does not reach a daemon over TCP; give -i FILE, "
            "a path on the daemon's machine",
            file=sys.stderr,
        )
        return client.EXIT_USAGE
    if client.run_flag(rest, command, "i", "interactive"):
        print("ERROR: run -i: stdin does not reach a daemon over TCP", file=sys.stderr)
        return client.EXIT_USAGE
    conn = http.client.HTTPSConnection(host, port, context=ctx)
    try:
        conn.connect()
    except ssl.SSLError as exc:
        conn.close()
        return _tls_failure(addr, exc)
    except OSError as exc:
        conn.close()
        print(
            f"ERROR: cannot connect to the buildpy daemon at {addr}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return client.EXIT_INFRA
    try:
        # A daemon that refuses the client's certificate says so here (TLS 1.3
        # finishes the client's side of the handshake before the server checks).
        conn.request("GET", "/_ping")
        conn.getresponse().read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return _tls_failure(addr, exc)
    try:
        if command == "build":
            code = send_context(conn, rest)
            if code is not None:
                return code
        body = {
            "argv": rest,
            "env": {k: v for k, v in os.environ.items() if k in PASS_ENV},
            "tty": client.tty_state(),
        }
        if conn.sock is None:  # the daemon closed the connection after an answer
            conn.connect()
        request = client.cli_request(body, host)
        return client.converse(conn.sock, request, addr, conn.sock.makefile("rb"))
    except ssl.SSLError as exc:
        return _tls_failure(addr, exc)
    except SyncError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return client.EXIT_USAGE
    except _Refused as exc:
        print(f"ERROR: the buildpy daemon at {addr}: {exc}", file=sys.stderr)
        return client.EXIT_INFRA
    except (OSError, ValueError, http.client.HTTPException):
        return client._lost(addr)
    finally:
        conn.close()


__all__ = [
    "PASS_ENV",
    "Scanner",
    "StatCache",
    "SyncError",
    "hash_file",
    "run_cli",
    "scan",
    "send_context",
    "tar_stream",
]
