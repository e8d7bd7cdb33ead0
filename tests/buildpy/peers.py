"""Peer engines for comparison tests: buildah with storage of its own, and the
file tree of a root filesystem in a form two engines' trees can be compared in.

buildah is driven entirely by command-line flags, so that no file under
/etc/containers is read for what matters or written at all: storage under a
temporary directory (``--root``/``--runroot``), runc rather than the default crun
(crun 1.8.1 refuses this machine's hybrid cgroup layout), cgroupfs (no systemd),
a nofile ulimit no higher than the caller's hard limit (there is no
CAP_SYS_RESOURCE to raise it), and a registries.conf with no search registries,
so that a short name in a FROM resolves in local storage or fails, never reaching
Docker Hub."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import unmount_all

BUILDAH = shutil.which("buildah")


@dataclass(frozen=True)
class Entry:
    """What a comparison looks at for one path: mtimes and inode numbers are not
    part of it, everything a user of the image could tell apart is."""

    kind: str  # file, dir, symlink, char, block, fifo, socket
    mode: int  # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    content: str  # sha256 of a file, target of a symlink, major:minor of a device

    def describe(self) -> str:
        return f"{self.kind} {self.mode:04o} {self.uid}:{self.gid} {self.content[:16]}"


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pyc_sha256(path: str) -> str:
    """The sha256 of a .pyc with its source's mtime zeroed. A timestamp-based .pyc
    (PEP 552: flags, bytes 4-7, all zero) holds the mtime of the .py it was compiled
    from in bytes 8-11; the rest (magic, source size, code) must still match."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) == 16 and head[4:8] == bytes(4):
            head = head[:8] + bytes(4) + head[12:]
        digest.update(head)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_tree(root: Path, *, pyc_mtime: bool = True) -> dict[str, Entry]:
    """Every path under root (as "/usr/bin/env"), without following symlinks.
    With pyc_mtime=False, the source mtime inside .pyc files is left out."""
    tree: dict[str, Entry] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(top, name)
            st = os.lstat(full)
            kind = _KINDS[stat.S_IFMT(st.st_mode)]
            if kind == "file" and not pyc_mtime and name.endswith(".pyc"):
                content = _pyc_sha256(full)
            elif kind == "file":
                content = _sha256(full)
            elif kind == "symlink":
                content = os.readlink(full)
            elif kind in ("char", "block"):
                content = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            else:
                content = ""
            path = "/" + os.path.relpath(full, root)
            tree[path] = Entry(
                kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content
            )
    return tree


@dataclass(frozen=True)
class Buildah:
    """buildah against storage of its own, run as a separate process."""

    root: Path
    runroot: Path
    registries_conf: Path

    def command(self, *args: str | os.PathLike[str]) -> list[str]:
        return [
            BUILDAH or "buildah",
            "--root", str(self.root),
            "--runroot", str(self.runroot),
            "--storage-driver", "overlay",
            "--cgroup-manager", "cgroupfs",
            "--registries-conf", str(self.registries_conf),
            *map(str, args),
        ]  # fmt: skip

    def run(
        self,
        *args: str | os.PathLike[str],
        input: bytes | None = None,
        timeout: float = 900,
    ) -> subprocess.CompletedProcess[str]:
        """Run buildah; its output on failure, in an AssertionError."""
        proc = subprocess.run(
            self.command(*args), capture_output=True, input=input, timeout=timeout
        )
        out, err = (
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"buildah {' '.join(map(str, args))} exited {proc.returncode}\n"
                f"--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
            )
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def bud(
        self, context: Path, tag: str, *args: str
    ) -> subprocess.CompletedProcess[str]:
        """`buildah bud` as the walkthrough's `docker build`, with this machine's needs:
        runc, the host network (apt and pip reach their servers only through it),
        and rlimits the caller can grant."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return self.run(
            "bud",
            "--runtime", "runc",
            "--isolation", "oci",
            "--network", "host",
            "--ulimit", f"nofile={min(soft, hard)}:{hard}",
            "--pull=never",
            "-t", tag,
            *args,
            context,
        )  # fmt: skip

    def import_rootfs(self, rootfs: Path, ref: str, cmd: str) -> None:
        """A root filesystem as a one-layer image, owners, modes and xattrs kept:
        what `buildpy import` does, in buildah's terms."""
        ctr = self.run("from", "scratch").stdout.strip()
        try:
            mountpoint = self.run("mount", ctr).stdout.strip()
            pack = subprocess.Popen(
                ["tar", "--numeric-owner", "--xattrs", "-C", rootfs, "-cf", "-", "."],
                stdout=subprocess.PIPE,
            )
            unpack = subprocess.run(
                ["tar", "--numeric-owner", "--xattrs", "-xpf", "-", "-C", mountpoint],
                stdin=pack.stdout,
                capture_output=True,
            )
            assert pack.stdout is not None
            pack.stdout.close()
            assert pack.wait() == 0 and unpack.returncode == 0, unpack.stderr[-2000:]
            self.run("umount", ctr)
            self.run("config", "--cmd", f'["{cmd}"]', ctr)
            self.run("commit", "--rm", "-q", ctr, ref)
        except BaseException:
            self.run("rm", ctr)
            raise

    @contextmanager
    def mounted(self, image: str) -> Iterator[Path]:
        """The root filesystem of an image, as a working container's mount."""
        ctr = self.run("from", "--pull=never", "-q", image).stdout.strip()
        try:
            yield Path(self.run("mount", ctr).stdout.strip())
        finally:
            self.run("rm", ctr)


@contextmanager
def buildah_storage(workdir: Path) -> Iterator[Buildah]:
    """A Buildah with storage of its own, all of it removed on exit, also on
    failure. The runroot holds sockets and lock files, so it gets a short path
    (below 50 characters) of its own under /tmp."""
    runroot = Path(tempfile.mkdtemp(prefix="buildah-run-", dir="/tmp"))
    registries_conf = workdir / "registries.conf"
    registries_conf.write_text(
        'unqualified-search-registries = []\nshort-name-mode = "permissive"\n'
    )
    buildah = Buildah(workdir / "storage", runroot, registries_conf)
    try:
        yield buildah
    finally:
        try:
            # Working containers left by a failed step hold overlay mounts.
            subprocess.run(
                buildah.command("rm", "--all"), capture_output=True, timeout=300
            )
        finally:
            unmount_all(buildah.root)
            unmount_all(runroot)
            shutil.rmtree(buildah.root, ignore_errors=True)
            shutil.rmtree(runroot, ignore_errors=True)
