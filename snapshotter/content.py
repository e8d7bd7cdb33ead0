"""The content store: blobs addressed by their sha256 digest.

A blob lives at ``root/blobs/sha256/<hex>`` once it is complete, and only then.
A writer streams into a temp file in ``root/blobs/tmp/``, hashing as it goes;
``commit`` fsyncs the file, checks the digest, renames it into place and fsyncs
the directory, so a reader that finds a blob's path finds all of it (a blob that
is already there is kept, and the temp file dropped unsynced). Two
writers of the same content race harmlessly: the rename of identical bytes over
identical bytes changes nothing a reader can see.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from snapshotter.errors import BlobNotFound, DigestMismatch, InvalidDigest
from snapshotter.sparse import write_at

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")


class Descriptor(NamedTuple):
    """What the store knows of a blob: its digest and its size in bytes."""

    digest: str
    size: int


def parse_digest(digest: str) -> str:
    """The hex part of ``digest``; InvalidDigest unless it is sha256:<64 hex>."""
    match = _DIGEST_RE.fullmatch(digest)
    if match is None:
        raise InvalidDigest(f"invalid digest {digest!r}: expected sha256:<64 hex>")
    return match.group(1)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """A blob being written. Get one from ContentStore.writer()."""

    def __init__(self, store: ContentStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix=f"{os.getpid()}-")
        self._tmp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self.descriptor: Descriptor | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._file is None:
            raise ValueError("write to a blob writer that is committed or closed")
        self._hash.update(data)
        # Zero blocks (the holes of a sparse file in a layer) stay holes in the
        # blob, so positioned writes; commit() sets the size.
        write_at(self._file.fileno(), data, self._size)
        self._size += len(data)
        return len(data)

    def commit(self, expected: str | None = None) -> Descriptor:
        """Make the blob visible under its digest and return its descriptor.

        With ``expected``, a blob whose content has another digest raises
        DigestMismatch and nothing is left behind.
        """
        if self._file is None:
            raise ValueError("commit of a blob writer that is committed or closed")
        if expected is not None:
            parse_digest(expected)
        file, self._file = self._file, None
        digest = "sha256:" + self._hash.hexdigest()
        if expected is not None and digest != expected:
            file.close()
            self._tmp.unlink(missing_ok=True)
            raise DigestMismatch(expected, digest, "blob")
        if self._store.has(digest):
            # Already stored, and durable since its own commit: a rebuild writes
            # the same config and manifest again, and need not pay the fsyncs.
            file.close()
            self._tmp.unlink(missing_ok=True)
            self.descriptor = Descriptor(digest, self._size)
            return self.descriptor
        try:
            file.truncate(self._size)  # a trailing hole has no size otherwise
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        os.rename(self._tmp, self._store.path(digest))
        _fsync_dir(self._store.blobs_dir)
        self.descriptor = Descriptor(digest, self._size)
        return self.descriptor

    def abort(self) -> None:
        """Drop the blob; a no-op after commit."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.descriptor is None:
            self._tmp.unlink(missing_ok=True)


class ContentStore:
    """Blobs by digest under ``root/blobs/sha256``; safe across threads and
    processes (each writer has its own temp file, commit is a rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.tmp_dir = self.root / "blobs" / "tmp"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def writer(self) -> Iterator[BlobWriter]:
        """A BlobWriter; leaving the block without commit() drops what was written."""
        w = BlobWriter(self)
        try:
            yield w
        finally:
            w.abort()

    def put_bytes(self, data: bytes) -> Descriptor:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def put_file(self, path: Path, expected: str | None = None) -> Descriptor:
        """Copy the file at ``path`` into the store, streaming."""
        with open(path, "rb") as f:
            return self.put_stream(f, expected)

    def put_stream(self, f: BinaryIO, expected: str | None = None) -> Descriptor:
        """Copy a readable stream into the store until its end."""
        with self.writer() as w:
            while chunk := f.read(_CHUNK):
                w.write(chunk)
            return w.commit(expected)

    def path(self, digest: str) -> Path:
        """Where the blob ``digest`` is, or would be, stored."""
        return self.blobs_dir / parse_digest(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found in {self.blobs_dir}") from None

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found in {self.blobs_dir}") from None

    def delete(self, digest: str) -> None:
        """Remove a blob; BlobNotFound if it is not there."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found in {self.blobs_dir}") from None

    def digests(self) -> Iterator[str]:
        """The digests of all complete blobs, in no particular order."""
        with os.scandir(self.blobs_dir) as entries:
            for entry in entries:
                if _DIGEST_RE.fullmatch("sha256:" + entry.name):
                    yield "sha256:" + entry.name

    def copy_to(self, digest: str, out: BinaryIO) -> None:
        """Stream the blob ``digest`` into ``out``."""
        with self.open(digest) as f:
            shutil.copyfileobj(f, out, _CHUNK)

    def cleanup_stale(self) -> int:
        """Remove temp files of writers whose process is gone; returns how many.

        A temp file is named after the pid that writes it. A pid reused since
        keeps its file until that process too is gone: harmless, only space.
        """
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            pid, _, _ = entry.name.partition("-")
            if pid.isdigit() and _pid_alive(int(pid)):
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass  # its writer aborted in the meantime
        return removed


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
