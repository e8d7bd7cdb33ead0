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
