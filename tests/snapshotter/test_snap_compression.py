"""Compression: streaming round trips and reproducible output."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest

from snapshotter.compression import MEDIA_TYPE_SUFFIX, compress, open_decompressed


class OneWay(io.RawIOBase):
    """A readable stream that cannot seek, like a socket."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        data = self._f.read(min(len(b), 1000))
        b[: len(data)] = data
        return len(data)


DATA = os.urandom(1 << 20) + b"repetitive " * 200_000


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_round_trip(kind: str) -> None:
    """What compress writes, open_decompressed reads back from a one-way stream."""
    out = io.BytesIO()
    compress(io.BytesIO(DATA), out, kind)  # type: ignore[arg-type]
    if kind != "none":
        assert len(out.getvalue()) < len(DATA)
    with open_decompressed(OneWay(out.getvalue())) as f:  # type: ignore[arg-type]
        assert f.read() == DATA


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_output_is_reproducible(kind: str, tmp_path: Path) -> None:
    """Two runs give identical bytes, whatever the output file is called."""
    outputs = []
    for name in ("first.tar.gz", "second.tar.gz"):
        with open(tmp_path / name, "wb") as dst:
            compress(io.BytesIO(DATA), dst, kind)  # type: ignore[arg-type]
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]


def test_gzip_header_has_no_time_or_name(tmp_path: Path) -> None:
    """The gzip header carries mtime 0 and no file name (RFC 1952, 2.3)."""
    with open(tmp_path / "layer.gz", "wb") as dst:
        compress(io.BytesIO(b"abc"), dst, "gzip")
    header = (tmp_path / "layer.gz").read_bytes()[:10]
    assert header[3] & 0x08 == 0  # FNAME flag
    assert header[4:8] == b"\0\0\0\0"
    assert gzip.decompress((tmp_path / "layer.gz").read_bytes()) == b"abc"


@pytest.mark.parametrize("data", [b"", b"ab", b"\x1f"])
def test_short_plain_input(data: bytes) -> None:
    """Inputs shorter than a magic number are plain data."""
    with open_decompressed(io.BytesIO(data)) as f:
        assert f.read() == data


def test_unknown_kind_refused() -> None:
    """A compression name other than gzip, zstd or none is an error."""
    with pytest.raises(ValueError, match="brotli"):
        compress(io.BytesIO(b""), io.BytesIO(), "brotli")  # type: ignore[arg-type]


def test_media_type_suffixes() -> None:
    """Suffixes complete the OCI layer media type."""
    assert MEDIA_TYPE_SUFFIX == {"gzip": "+gzip", "zstd": "+zstd", "none": ""}


@pytest.mark.parametrize(
    "data",
    [
        b"\x1f\x8b\x08\x00" + b"not deflate data at all" * 4,
        b"\x28\xb5\x2f\xfd" + b"not a zstd frame" * 4,
    ],
    ids=["gzip", "zstd"],
)
def test_corrupt_stream_raises_invalid_archive(data: bytes) -> None:
    """A corrupt download or tarball is the input's fault, in one exception type."""
    from snapshotter.errors import InvalidArchiveError

    with pytest.raises(InvalidArchiveError, match="corrupt"):
        open_decompressed(io.BytesIO(data)).read()
