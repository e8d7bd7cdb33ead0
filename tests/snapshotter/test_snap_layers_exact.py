"""Layers, exactly: owners above 2^21 (PAX), security.capability, long names,
special files, and a large sparse-ish file that streams."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
from pathlib import Path

import pytest
from snap_helpers import needs_root

from snapshotter.diff import extract_tree, write_tree

pytestmark = needs_root

# VFS_CAP_REVISION_2, effective bit, CAP_NET_BIND_SERVICE (10) permitted.
CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def _round_trip(src: Path, dest: Path) -> list[tarfile.TarInfo]:
    out = io.BytesIO()
    write_tree(src, out)
    out.seek(0)
    dest.mkdir()
    extract_tree(out, dest)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        return tar.getmembers()


def test_big_owners_capabilities_long_names_and_specials(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big-owner"
    big.write_text("x")
    os.chown(big, 3_000_000, 2**31 - 2)  # above the 2^21 of ustar's octal fields
    ping = src / "ping"
    ping.write_bytes(b"\x7fELF")
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", CAP_NET_BIND)
    long_name = "n" * 250
    (src / long_name).write_text("long")
    os.mkfifo(src / "fifo")
    os.mknod(src / "tty", stat.S_IFCHR | 0o620, os.makedev(4, 1))
    os.mknod(src / "sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    setgid = src / "shared"
    setgid.mkdir()
    os.chmod(setgid, 0o2775)

    members = {m.name: m for m in _round_trip(src, tmp_path / "dest")}
    dest = tmp_path / "dest"
    st = os.lstat(dest / "big-owner")
    assert (st.st_uid, st.st_gid) == (3_000_000, 2**31 - 2)
    assert members["big-owner"].pax_headers["uid"] == "3000000"
    assert os.getxattr(dest / "ping", "security.capability") == CAP_NET_BIND
    assert (dest / long_name).read_text() == "long"
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    assert os.lstat(dest / "tty").st_rdev == os.makedev(4, 1)
    assert stat.S_ISBLK(os.lstat(dest / "sda").st_mode)
    assert stat.S_IMODE(os.lstat(dest / "shared").st_mode) == 0o2775


@pytest.mark.slow
def test_a_large_sparse_file_streams(tmp_path: Path) -> None:
    """A 9 GiB file with one byte at its end: the tar is streamed to a sink
    (never held in memory), and the size field is PAX/base-256 past 8 GiB."""
    src = tmp_path / "src"
    src.mkdir()
    size = 9 << 30
    with open(src / "huge", "wb") as f:
        f.truncate(size - 1)
        f.seek(size - 1)
        f.write(b"!")

    class Tail(io.RawIOBase):
        """Counts what it is given and keeps only its last bytes."""

        def __init__(self) -> None:
            self.count = 0
            self.head = b""

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # type: ignore[override]
            if len(self.head) < 4096:
                self.head += bytes(data[: 4096 - len(self.head)])
            self.count += len(data)
            return len(data)

    sink = Tail()
    write_tree(src, sink)  # type: ignore[arg-type]
    assert sink.count > size
    header = tarfile.TarInfo.frombuf(sink.head[1024:1536], "utf-8", "strict")
    assert header.name == "huge"


def _tarfile_tree(root: Path, epoch: int | None) -> bytes:
    """The tar that tarfile's own TarFile writes for a plain tree, as a layer
    is defined: depth first, names in byte order, PAX, numeric owners and no
    owner names, whole-second mtimes (clamped to ``epoch``), hard links after
    their first name, and xattrs as SCHILY records."""
    out = io.BytesIO()
    links: dict[int, str] = {}

    def walk(tar: tarfile.TarFile, directory: Path, prefix: str) -> None:
        for name in sorted(os.listdir(directory), key=os.fsencode):
            path = directory / name
            st = os.lstat(path)
            info = tarfile.TarInfo(prefix + name)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
            info.mtime = st.st_mtime_ns // 10**9
            if epoch is not None:
                info.mtime = min(info.mtime, epoch)
            info.pax_headers = {
                "SCHILY.xattr." + key: os.getxattr(
                    path, key, follow_symlinks=False
                ).decode("utf-8", "surrogateescape")
                for key in sorted(os.listxattr(path, follow_symlinks=False))
            }
            data = None
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
            elif not stat.S_ISREG(st.st_mode):
                info.type = (
                    tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else (tarfile.BLKTYPE)
                )
                info.devmajor, info.devminor = (
                    os.major(st.st_rdev),
                    os.minor(st.st_rdev),
                )
            elif st.st_nlink > 1 and st.st_ino in links:
                info.type, info.linkname = tarfile.LNKTYPE, links[st.st_ino]
            else:
                links.setdefault(st.st_ino, info.name)
                info.size = st.st_size
                data = io.BytesIO(path.read_bytes())
            tar.addfile(info, data)
            if stat.S_ISDIR(st.st_mode):
                walk(tar, path, info.name + "/")

    with tarfile.open(
        fileobj=out,
        mode="w",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
    ) as tar:
        walk(tar, root, "")
    return out.getvalue()


@pytest.mark.parametrize("epoch", [None, 1_400_000_000])
def test_layer_bytes_are_those_tarfile_writes(
    tmp_path: Path, epoch: int | None
) -> None:
    """The layer writer frames its tar and writes most headers itself: every
    kind of entry, name, number and size gives tarfile's own bytes."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty").write_bytes(b"")
    (src / "small").write_bytes(b"hello\n")
    (src / "block").write_bytes(b"b" * 512)
    (src / "chunks").write_bytes(os.urandom((1 << 20) * 2 + 3))  # CHUNK pieces
    with open(src / "holes", "wb") as f:  # a hole, data, and a hole at the end
        f.seek(3 << 20)
        f.write(b"data")
        f.truncate(5 << 20)
    (src / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "setuid", 0o4755)
    os.link(src / "small", src / "small-link")
    (src / "sym").symlink_to("small")
    (src / "long-target").symlink_to("t" * 150)
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "big-dev", stat.S_IFBLK | 0o600, os.makedev(259, 70000))
    for length in (99, 100, 101):  # a directory's name gets a "/" in the tar
        (src / ("d" * length)).mkdir()
        (src / ("f" * length)).write_text("x")
    (src / "caf\u00e9").write_text("not ascii")
    (src / os.fsdecode(b"raw-\xff")).write_text("not utf-8")
    (src / "xattr").write_text("x")
    os.setxattr(src / "xattr", "user.note", b"\xffbinary")
    owners = {"uid-max": (8**7 - 1, 0), "uid-big": (8**7, 2**31 - 2)}
    for name, (uid, gid) in owners.items():
        (src / name).write_text(name)
        os.chown(src / name, uid, gid)
    times = {"epoch0": 0, "before-1970": -5, "far": 8**11 - 1, "too-far": 8**11}
    for name, seconds in times.items():
        (src / name).write_text(name)
        try:
            os.utime(src / name, ns=(0, seconds * 10**9 + 999_999_999))
        except OSError:
            pytest.skip(f"this file system cannot hold an mtime of {seconds} s")
    (src / "sub/deeper").mkdir(parents=True)
    (src / "sub/deeper/file").write_text("deep")
    os.utime(src / "sub", ns=(0, 1_500_000_000 * 10**9))

    layer = io.BytesIO()
    write_tree(src, layer, source_date_epoch=epoch)
    assert layer.getvalue() == _tarfile_tree(src, epoch)
