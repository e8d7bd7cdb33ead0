"""``buildpy build -f - PATH`` and ``buildpy build -``: what docker build reads
from stdin.

``-f -`` reads the Dockerfile from stdin; the context is PATH, as always.
``build -`` reads the context from stdin: a tar archive (plain, gzip, bzip2 or
xz, as docker accepts) unpacked into a temporary directory, where ``-f`` names
a file inside the archive (``Dockerfile`` at its top by default); or, when stdin
is not an archive, the Dockerfile itself and no context at all, so that a COPY
from the context finds nothing. Both at once is refused, as docker does.

Standard library and ``buildpy.errors`` only: the TCP client
(buildpy/remoteclient.py) unpacks a context here too, on its own machine, before
it sends what the build reads.
"""

from __future__ import annotations

import lzma
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from buildpy.errors import InfraError, UsageError

STDIN = Path("-")

# A Dockerfile is text read whole, so stdin is read whole only up to this; an
# archive streams through tarfile instead, whatever its size.
MAX_DOCKERFILE = 16 << 20

# What starts each archive docker takes as a context: tar has "ustar" at 257.
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_TAR_MAGIC_AT = 257
_HEAD = 512


@dataclass(frozen=True)
class BuildInput:
    """Where a build reads its context and its Dockerfile from. ``dockerfile``
    None means ``context/Dockerfile``; ``dockerfile_text`` is set when the
    Dockerfile came from stdin and has no path."""

    context: Path
    dockerfile: Path | None
    dockerfile_text: str | None = None


def uses_stdin(context: Path, dockerfile: Path | None) -> bool:
    return context == STDIN or dockerfile == STDIN


@contextmanager
def build_input(
    context: Path, dockerfile: Path | None, stream: BinaryIO, tmp: Path | None
) -> Iterator[BuildInput]:
    """The build's input, reading stdin (``stream``) when the context or the
    Dockerfile is ``-``. A context from stdin lives in a directory made under
    ``tmp`` (the system's when None) and removed on the way out, whatever
    happened."""
    if context == STDIN and dockerfile == STDIN:
        raise UsageError(
            "cannot read both the build context and the Dockerfile from stdin"
        )
    if dockerfile == STDIN:
        yield BuildInput(context, None, _dockerfile_text(_read_head(stream), stream))
        return
    if context != STDIN:
        yield BuildInput(context, dockerfile)
        return
    if dockerfile is not None and dockerfile.is_absolute():
        raise UsageError(
            f"-f {dockerfile}: with the context from stdin, -f names a file "
            "in the archive, relative to its top"
        )
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix="stdin-context-", dir=tmp))
    try:
        head = _read_head(stream)
        if _is_archive(head):
            _unpack(_Prefixed(head, stream), where)
            inside = dockerfile or Path("Dockerfile")
            if not (where / inside).is_file():
                raise UsageError(
                    f"cannot read Dockerfile: the context archive on stdin has no "
                    f"file {inside}"
                )
            yield BuildInput(where, where / inside)
        elif dockerfile is not None:
            raise UsageError(
                f"-f {dockerfile}: stdin holds a Dockerfile, not a context archive"
            )
        else:
            yield BuildInput(where, None, _dockerfile_text(head, stream))
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _read_head(stream: BinaryIO) -> bytes:
    """The first bytes of stdin, enough to tell an archive."""
    return _read_up_to(stream, _HEAD)


def _read_up_to(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes, or all there are: a pipe gives them in pieces.
    (snapshotter.compression has its own: this module stays standard library
    only, for the TCP client.)"""
    data = bytearray()
    while len(data) < n:
        piece = stream.read(n - len(data))
        if not piece:
            break
        data += piece
    return bytes(data)


def _is_archive(head: bytes) -> bool:
    if head.startswith(_COMPRESSED_MAGIC):
        return True
    return head[_TAR_MAGIC_AT : _TAR_MAGIC_AT + 5] == b"ustar"


def _dockerfile_text(head: bytes, stream: BinaryIO) -> str:
    data = head + _read_up_to(stream, MAX_DOCKERFILE + 1 - len(head))
    if len(data) > MAX_DOCKERFILE:
        raise UsageError(
            f"the Dockerfile on stdin is larger than {MAX_DOCKERFILE >> 20} MiB"
        )
    try:
        return data.decode()  # as Path.read_text reads a Dockerfile from its file
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"cannot read the Dockerfile on stdin: not UTF-8 at byte {exc.start}"
        ) from None


class _Prefixed:
    """``head`` and then the rest of ``stream``, as one stream for tarfile."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size < 0 or size >= len(self._head):
            out, self._head = self._head, b""
            rest = self._stream.read(-1 if size < 0 else size - len(out))
            return out + rest
        out, self._head = self._head[:size], self._head[size:]
        return out


def _member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "tar" filter (no absolute names, nothing written or linked
    outside ``dest``), but with the archive's mode bits: a context's modes are
    what COPY gives its files, as from a directory. Devices are refused: a
    context holds files, directories and links."""
    if member.ischr() or member.isblk():
        raise UsageError(f"context archive on stdin: {member.name} is a device")
    checked = tarfile.tar_filter(member, dest)
    if not checked.issym() and not checked.islnk():
        checked = checked.replace(mode=member.mode & 0o7777, deep=False)
    return checked


def _unpack(stream: _Prefixed, where: Path) -> None:
    """Stream the archive into ``where`` (tarfile's ``r|*``: one pass, any of
    its compressions)."""
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:  # type: ignore[call-overload]
            archive.extractall(where, numeric_owner=True, filter=_member_filter)
    except tarfile.FilterError as exc:
        # tarfile's own message names the temporary directory: the member is
        # what the user can find.
        name = exc.tarinfo.name
        raise UsageError(
            f"context archive on stdin: {name} leads outside the context"
        ) from None
    except OSError as exc:
        if exc.errno is None:  # gzip's BadGzipFile: the archive, not the disk
            message = f"cannot read the context archive on stdin: {exc}"
            raise UsageError(message) from None
        raise InfraError(
            f"cannot unpack the context archive on stdin into {where}: {exc.strerror}"
        ) from None
    except (tarfile.TarError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
        reason = str(exc) or type(exc).__name__
        raise UsageError(
            f"cannot read the context archive on stdin: {reason}"
        ) from None


__all__ = ["STDIN", "BuildInput", "build_input", "uses_stdin"]
