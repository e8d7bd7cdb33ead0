"""The content store: blobs by digest, written atomically."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from snapshotter.content import ContentStore
from snapshotter.errors import BlobNotFound, DigestMismatch, InvalidDigest


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "root")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_bytes_stores_under_digest(store: ContentStore) -> None:
    """A blob is found by its sha256 digest, with its size and content."""
    digest, size = store.put_bytes(b"hello")
    assert digest == sha(b"hello") and size == 5
    assert store.path(digest) == store.root / "blobs/sha256" / digest[7:]
    assert store.has(digest) and store.size(digest) == 5
    with store.open(digest) as f:
        assert f.read() == b"hello"
    assert list(store.digests()) == [digest]


def test_put_file_streams_large_file(store: ContentStore, tmp_path: Path) -> None:
    """A file bigger than the copy buffer is stored whole."""
    src = tmp_path / "big"
    data = os.urandom(3 * (1 << 20) + 17)
    src.write_bytes(data)
    desc = store.put_file(src)
    assert desc.digest == sha(data) and desc.size == len(data)
    assert store.path(desc.digest).read_bytes() == data


def test_blob_invisible_until_commit(store: ContentStore) -> None:
    """While a writer writes, the blob has no path and only a temp file exists."""
    with store.writer() as w:
        w.write(b"part one, ")
        assert not store.has(sha(b"part one, "))
        assert len(os.listdir(store.tmp_dir)) == 1
        w.write(b"part two")
        desc = w.commit()
    assert store.has(desc.digest)
    assert os.listdir(store.tmp_dir) == []


def test_digest_mismatch_leaves_nothing(store: ContentStore) -> None:
    """A commit with the wrong expected digest raises and stores nothing."""
    with store.writer() as w:
        w.write(b"actual")
        with pytest.raises(DigestMismatch) as info:
            w.commit(expected=sha(b"claimed"))
    assert info.value.actual == sha(b"actual")
    assert list(store.digests()) == []
    assert os.listdir(store.tmp_dir) == []


def test_writer_dropped_on_error(store: ContentStore) -> None:
    """Leaving the writer's block by an exception removes the temp file."""
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"x")
        raise RuntimeError("the source failed")
    assert os.listdir(store.tmp_dir) == [] and list(store.digests()) == []


def test_missing_blob_and_delete(store: ContentStore) -> None:
    """A deleted blob is gone; asking for it raises BlobNotFound."""
    digest, _ = store.put_bytes(b"x")
    store.delete(digest)
    assert not store.has(digest)
    with pytest.raises(BlobNotFound):
        store.open(digest)
    with pytest.raises(BlobNotFound):
        store.size(digest)
    with pytest.raises(BlobNotFound):
        store.delete(digest)


@pytest.mark.parametrize(
    "digest", ["sha256:../../etc/passwd", "md5:abcd", "sha256:" + "A" * 64, ""]
)
def test_invalid_digest_refused(store: ContentStore, digest: str) -> None:
    """Only sha256:<64 lowercase hex> names a blob; nothing else reaches a path."""
    with pytest.raises(InvalidDigest):
        store.path(digest)


def test_cleanup_stale_keeps_live_writers(store: ContentStore) -> None:
    """Temp files of dead writers go; the temp file of a live writer stays."""
    # pid_max is at most 2**22, so this pid never lives.
    (store.tmp_dir / f"{2**22 + 1}-abandoned").write_bytes(b"x")
    with store.writer() as w:
        w.write(b"y")
        assert store.cleanup_stale() == 1
        assert len(os.listdir(store.tmp_dir)) == 1
        w.commit()
