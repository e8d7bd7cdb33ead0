"""Streaming compression of layers: gzip, zstd, or none.

Output is reproducible: gzip headers carry mtime 0 and no file name; zstd runs
with at least one worker thread, and zstd's output for a given level does not
depend on how many workers there are (only on whether there are any).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import zlib
from typing import BinaryIO, Literal, cast

import pyzstd

from snapshotter.errors import InvalidArchiveError

Compression = Literal["gzip", "zstd", "none"]

# Appended to application/vnd.oci.image.layer.v1.tar (OCI image spec, layer.md).
MEDIA_TYPE_SUFFIX: dict[str, str] = {"gzip": "+gzip", "zstd": "+zstd", "none": ""}

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878, section 3.1.1

_CHUNK = 1 << 20
# zlib's own default: Python's gzip defaults to 9, slower for little gain.
_GZIP_DEFAULT_LEVEL = 6
_ZSTD_DEFAULT_LEVEL = 3


def compress(
    src: BinaryIO, dst: BinaryIO, kind: Compression, level: int | None = None
) -> None:
    """Compress all of ``src`` into ``dst``, streaming, in the format ``kind``."""
    if kind == "gzip":
        _compress_gzip(src, dst, _GZIP_DEFAULT_LEVEL if level is None else level)
    elif kind == "zstd":
        _compress_zstd(src, dst, _ZSTD_DEFAULT_LEVEL if level is None else level)
    elif kind == "none":
        shutil.copyfileobj(src, dst, _CHUNK)
    else:
        raise ValueError(f"unknown compression {kind!r}: expected gzip, zstd or none")


def _compress_gzip(src: BinaryIO, dst: BinaryIO, level: int) -> None:
    # filename="" keeps the FNAME field out even when dst has a .name.
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=dst, compresslevel=level, mtime=0
    ) as gz:
        shutil.copyfileobj(src, gz, _CHUNK)


def _compress_zstd(src: BinaryIO, dst: BinaryIO, level: int) -> None:
    options: dict[int, int] = {
        pyzstd.CParameter.compressionLevel: level,
        pyzstd.CParameter.checksumFlag: 1,
        pyzstd.CParameter.nbWorkers: max(1, os.cpu_count() or 1),
    }
    compressor = pyzstd.ZstdCompressor(options)
    while chunk := src.read(_CHUNK):
        dst.write(compressor.compress(chunk))
    dst.write(compressor.flush())


class _Prefixed(io.RawIOBase):
    """A stream that replays bytes already read from ``f`` before the rest of it."""

    def __init__(self, prefix: bytes, f: BinaryIO) -> None:
        self._prefix = prefix
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)


def _read_exactly_up_to(f: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def detect(prefix: bytes) -> Compression:
    """Which compression a stream starting with ``prefix`` (4 bytes) uses."""
    if prefix.startswith(GZIP_MAGIC):
        return "gzip"
    if prefix.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _Checked(io.RawIOBase):
    """Reads a decompressor; a corrupt or truncated stream raises
    InvalidArchiveError (the input's fault) instead of zlib's or zstd's own
    exceptions, which callers would otherwise have to know one by one."""

    def __init__(self, inner: BinaryIO, kind: Compression) -> None:
        self._inner = inner
        self._kind = kind

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(b))
        except (zlib.error, EOFError, gzip.BadGzipFile, pyzstd.ZstdError) as exc:
            raise InvalidArchiveError(f"corrupt {self._kind} data: {exc}") from None
        b[: len(data)] = data
        return len(data)


def open_decompressed(f: BinaryIO) -> BinaryIO:
    """A readable stream of the decompressed content of ``f``.

    gzip, zstd or plain is told by the magic bytes. ``f`` need not be seekable.
    Closing the result does not close ``f``.
    """
    prefix = _read_exactly_up_to(f, 4)
    raw = io.BufferedReader(_Prefixed(prefix, f), _CHUNK)
    kind = detect(prefix)
    if kind == "gzip":
        inner = cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    elif kind == "zstd":
        inner = cast(BinaryIO, pyzstd.ZstdFile(raw, mode="rb"))
    else:
        return cast(BinaryIO, raw)
    return cast(BinaryIO, io.BufferedReader(_Checked(inner, kind), _CHUNK))
