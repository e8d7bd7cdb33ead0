"""``ADD <git url>``: a repository's tree at a ref, as BuildKit's git source.

Theory of operation
-------------------
The frontend gives each git source of an ADD a vertex of its own
(solver.graph.GitSource) that a copy reads from. Before keys are computed the
worker asks the remote which commit the ref names (``git ls-remote``; a ref that
is a full commit id is taken as it is), and that commit is the content checksum:
a moved branch misses the cache, an unchanged one does not fetch anything. With
``--checksum`` the commit is pinned in the op and checked after the fetch.

The result is a committed snapshot holding the ``subdir`` of the commit's tree
(the whole tree by default), with ``.git`` only for ``--keep-git-dir``. Every
file's mtime is the commit's time, so that two clones of one commit give the
same layer. The clone runs the ``git`` command (it knows every transport and
credential helper); it is told never to prompt. With
BUILDPY_REGISTRY_ALLOW=loopback (the test suite) a remote off this machine is
refused, as the registry client refuses one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from buildpy.errors import BuildpyError
from buildpy.registry import refusal
from frontend import redacted
from snapshotter.overlay import Snapshotter

_COMMIT = re.compile(r"[0-9a-f]{40}")
_USERINFO = re.compile(r"://[^/@\s]+@")


class GitError(BuildpyError):
    """A repository that cannot be read: the user's URL, ref or server."""

    exit_code = 1


@dataclass(frozen=True)
class Resolved:
    commit: str

    def checksum(self) -> str:
        return f"commit={self.commit}"


def _host(remote: str) -> str:
    if remote.startswith("git@"):
        return remote[4:].split(":", 1)[0]
    return urlsplit(remote).hostname or ""


def _git(*args: str, cwd: Path | None = None, what: str) -> str:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true")
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True
        )
    except FileNotFoundError:
        raise GitError(f"{what}: the git command is not installed") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        last = _USERINFO.sub("://***@", last)  # git may quote the URL it was given
        raise GitError(f"{what}: git {args[0]} failed: {last}")
    return proc.stdout


class GitSources:
    """Resolves refs and makes snapshots of trees, once per build each."""

    def __init__(self, snapshots: Snapshotter, tmp_dir: Path) -> None:
        self._snapshots = snapshots
        self._tmp_dir = tmp_dir
        self._resolved: dict[tuple[str, str], Resolved] = {}

    def resolve(self, remote: str, ref: str) -> Resolved:
        """The commit ``ref`` names on ``remote`` (HEAD when empty)."""
        key = (remote, ref)
        if key not in self._resolved:
            what = _what("ADD", remote, ref)
            self._resolved[key] = Resolved(_commit_of(remote, ref, what))
        return self._resolved[key]

    def snapshot(
        self,
        remote: str,
        ref: str,
        subdir: str,
        keep_git_dir: bool,
        checksum: str | None,
    ) -> str:
        """The committed snapshot of the tree (see the module docstring)."""
        commit = self.resolve(remote, ref).commit
        what = _what("ADD", remote, ref)
        if checksum is not None and not commit.startswith(checksum):
            raise GitError(
                f"{what}: checksum mismatch: expected {checksum}, got {commit}"
            )
        identity = f"{commit}\0{subdir}\0{keep_git_dir}".encode()
        name = "git-" + hashlib.sha256(identity).hexdigest()[:32]
        if self._snapshots.exists(name):
            return name

        def fill(fs: Path) -> None:
            _check_allowed(remote, what)
            checkout(remote, commit, subdir, keep_git_dir, fs, self._tmp_dir, what)

        self._snapshots.create_committed(name, None, fill)
        return name


def checkout(
    remote: str,
    commit: str,
    subdir: str,
    keep_git_dir: bool,
    dest: Path,
    tmp_dir: Path,
    what: str,
) -> None:
    """The ``subdir`` of ``commit``'s tree into the empty directory ``dest``,
    every mtime the commit's time; ``.git`` only with ``keep_git_dir``."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="git-", dir=tmp_dir))
    try:
        repo = work / "repo"
        # TODO: fetch just the one commit (--depth 1) where the server allows
        # it; a whole clone works with every server and transport (the dumb
        # HTTP one too), only slower for a long history.
        _git("clone", "--quiet", "--no-checkout", remote, str(repo), what=what)
        _git("checkout", "--quiet", "--detach", commit, cwd=repo, what=what)
        stamp = int(_git("show", "-s", "--format=%ct", commit, cwd=repo, what=what))
        tree = (repo / subdir) if subdir else repo
        if not tree.is_dir() or tree.resolve() != tree.absolute():
            raise GitError(f"{what}: no directory {subdir!r} in {commit}")
        if not keep_git_dir:
            shutil.rmtree(repo / ".git", ignore_errors=True)
        for entry in tree.iterdir():
            os.rename(entry, dest / entry.name)
        _stamp(dest, stamp)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def git_context(url: str, tmp_dir: Path) -> Iterator[Path]:
    """``buildpy build URL#REF:SUBDIR``: the context, checked out into a
    directory under ``tmp_dir`` that is removed on the way out, as docker
    build takes a repository for its context. The subdirectory keeps
    ``.git`` out, as BuildKit's git context does unless asked."""
    remote, _, fragment = url.partition("#")
    ref, _, subdir = fragment.partition(":")
    what = _what("build context", remote, fragment)
    _check_allowed(remote, what)
    commit = _commit_of(remote, ref, what)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix="git-context-", dir=tmp_dir))
    try:
        checkout(remote, commit, subdir.strip("/"), False, where, tmp_dir, what)
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _what(kind: str, remote: str, fragment: str) -> str:
    """How messages name a git source: ``ADD URL#REF``, credentials hidden."""
    return f"{kind} {redacted(remote)}" + (f"#{fragment}" if fragment else "")


def _check_allowed(remote: str, what: str) -> None:
    reason = refusal(_host(remote))  # the registry client's network guard
    if reason is not None:
        raise GitError(f"{what}: {reason}")


def _commit_of(remote: str, ref: str, what: str) -> str:
    """The commit ``ref`` names on ``remote`` (HEAD when empty); a full
    commit id is taken as it is, asking nothing of the remote."""
    if _COMMIT.fullmatch(ref):
        return ref
    _check_allowed(remote, what)
    wanted = ref or "HEAD"
    commit = _pick(_git("ls-remote", remote, wanted, what=what), wanted)
    if commit is None:
        raise GitError(f"{what}: no branch or tag {wanted!r} in the repository")
    return commit


def _pick(ls_remote: str, wanted: str) -> str | None:
    """The commit of ``wanted`` in ``git ls-remote`` output (a peeled tag's
    commit before the tag object)."""
    refs: dict[str, str] = {}
    for line in ls_remote.splitlines():
        sha, _, name = line.partition("\t")
        refs[name] = sha
    for name in (
        f"refs/tags/{wanted}^{{}}",
        f"refs/tags/{wanted}",
        f"refs/heads/{wanted}",
        wanted,
    ):
        if name in refs:
            return refs[name]
    return None


def _stamp(root: Path, mtime: int) -> None:
    for top, dirs, files in os.walk(root, topdown=False):
        for entry in files + dirs:
            os.utime(os.path.join(top, entry), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))
