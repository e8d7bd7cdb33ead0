"""Sparse files through layers: holes read without reading, zeros written as holes.

Theory of operation. A layer stays a plain, non-sparse tar: a file's entry holds
all its bytes, holes included, as zeros. GNU sparse entries (PAX 1.0) would make
a smaller tar, but a layer's digest would then depend on how the file happened
to be stored on disk rather than on its content, docker and containerd write
layers non-sparse (so our layers would stop matching theirs), and Python's
tarfile reads sparse entries but cannot write them. So the saving is made
where it costs nothing in compatibility:

- Writing a layer, ``HoleSkippingReader`` asks the filesystem where the data is
  (lseek SEEK_DATA / SEEK_HOLE) and produces a hole as zeros from memory, never
  reading it from disk. Every read of a hole returns the one ``ZEROS`` object,
  so whoever receives it (the content store's writer) can tell a hole by
  identity before comparing bytes.
- Storing a blob, ``BlobWriter`` writes with ``write_at``, which skips every
  aligned block of zeros, so an uncompressed layer of a sparse file is a sparse
  blob: its zeros cost hashing, not disk.
- Applying a layer, ``write_holey`` writes runs of zero blocks as holes (seek
  over them, ftruncate to the size at the end), as ``tar --sparse`` does on
  extraction; the content read back is the same byte for byte. A tar that has
  GNU sparse entries (written by GNU tar) is read by tarfile, its holes come as
  zeros and become holes again here.
"""

from __future__ import annotations

import errno
import os
from typing import IO

CHUNK = 1 << 20
# The unit of allocation of common filesystems: a run of zeros shorter than a
# block saves nothing as a hole.
BLOCK = 4096
ZEROS = bytes(CHUNK)
_ZERO_BLOCK = bytes(BLOCK)


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is all zero bytes (False for anything but bytes, which
    would need a copy to compare)."""
    if data is ZEROS:
        return True
    if not isinstance(data, bytes) or not data or data[0] or data[-1]:
        return False  # the ends tell most data from zeros at once
    if len(data) == CHUNK:
        return data == ZEROS
    if len(data) < CHUNK:
        return data == ZEROS[: len(data)]
    return data.count(0) == len(data)


class HoleSkippingReader:
    """Reads ``size`` bytes of the open regular file ``fd`` from its start,
    producing holes as zeros without reading them. ``read`` returns fewer bytes
    than asked only at the end (or when the file shrank meanwhile)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._pos = 0
        self._data_end = 0  # [pos, data_end) is known to be data
        self._hole_end = 0  # [pos, hole_end) is known to be a hole

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self._size - self._pos
        parts: list[bytes] = []
        want = min(n, self._size - self._pos)
        while want > 0:
            part = self._next(want)
            if not part:
                break
            parts.append(part)
            self._pos += len(part)
            want -= len(part)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def _next(self, n: int) -> bytes:
        if self._pos >= self._data_end and self._pos >= self._hole_end:
            self._locate()
        if self._pos < self._hole_end:
            count = min(n, self._hole_end - self._pos, CHUNK)
            return ZEROS if count == CHUNK else ZEROS[:count]
        count = min(n, self._data_end - self._pos, CHUNK)
        return os.pread(self._fd, count, self._pos)

    def _locate(self) -> None:
        """Find whether the file at pos is data or a hole, and until where."""
        try:
            data = os.lseek(self._fd, self._pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos: a hole to the end
                self._hole_end = self._size
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                self._data_end = self._size  # no hole reporting: all data
                return
            raise
        if data > self._pos:
            self._hole_end = min(data, self._size)
            return
        hole = os.lseek(self._fd, self._pos, os.SEEK_HOLE)
        self._data_end = min(hole, self._size)
        if self._data_end <= self._pos:  # the file shrank under us
            self._data_end = self._size


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written


def write_holey(src: IO[bytes], fd: int) -> int:
    """Copy ``src`` to its end into the empty file ``fd``, leaving every block-
    aligned run of zero blocks as a hole; the number of bytes copied."""
    offset = 0
    while chunk := src.read(CHUNK):
        write_at(fd, chunk, offset)
        offset += len(chunk)
    # A trailing hole gives the file no size of its own: set it.
    os.ftruncate(fd, offset)
    return offset


def write_at(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write ``data`` at ``offset`` of a file whose unwritten ranges read as
    zeros (new, or ftruncated later), skipping every aligned block of zeros.
    The caller sets the file's size at the end (a trailing hole has none)."""
    if is_zero(data):
        return
    if not isinstance(data, bytes):
        _pwrite_all(fd, memoryview(data), offset)
        return
    view = memoryview(data)
    if len(data) < 2 * BLOCK or data.find(_ZERO_BLOCK) < 0:
        # Most data has no block of zeros at all; find() tells that fast.
        _pwrite_all(fd, view, offset)
        return
    # Walk blocks aligned to the file's offsets (where holes can be), writing
    # each run of non-zero blocks at once.
    chunk = data
    end = len(chunk)
    start = 0  # first byte of the pending run of data
    pos = 0
    while pos < end:
        nxt = min(end, (offset + pos) // BLOCK * BLOCK + BLOCK - offset)
        if nxt - pos == BLOCK and chunk[pos:nxt] == _ZERO_BLOCK:
            if start < pos:
                _pwrite_all(fd, view[start:pos], offset + start)
            start = nxt
        pos = nxt
    if start < end:
        _pwrite_all(fd, view[start:end], offset + start)
