"""Sparse files through layers: the layer is the plain (non-sparse) tar of the
file, its blob in the store and the applied file keep the holes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from snap_helpers import needs_root

from snapshotter.content import ContentStore
from snapshotter.diff import apply_layer, extract_tree, write_layer, write_tree

pytestmark = needs_root

MiB = 1 << 20
# (offset, bytes): one piece at the start, one across a block boundary, one at
# the end, so the holes between are neither first nor last nor aligned.
PIECES = [(0, b"head"), (5 * MiB + 4090, b"across a block"), (None, b"tail!")]


def _make_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in PIECES:
            f.seek(size - len(data) if offset is None else offset)
            f.write(data)
    os.utime(path, (1_000_000, 1_000_000))


def _make_dense(path: Path, size: int) -> None:
    """The same bytes as _make_sparse, every block written (no hole)."""
    with open(path, "wb") as f:
        left = size
        while left:
            left -= f.write(bytes(min(MiB, left)))
        for offset, data in PIECES:
            f.seek(size - len(data) if offset is None else offset)
            f.write(data)
    os.utime(path, (1_000_000, 1_000_000))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _layer_of(store: ContentStore, root: Path) -> str:
    with store.writer() as w:
        write_layer(root, w)  # type: ignore[arg-type]
        return w.commit().digest


def test_sparse_file_layer_equals_dense_one_and_applies_sparse(tmp_path: Path) -> None:
    size = 64 * MiB
    sparse_root, dense_root = tmp_path / "sparse", tmp_path / "dense"
    sparse_root.mkdir()
    dense_root.mkdir()
    _make_sparse(sparse_root / "disk.img", size)
    _make_dense(dense_root / "disk.img", size)
    assert _allocated(sparse_root / "disk.img") < MiB
    assert _allocated(dense_root / "disk.img") >= size

    store = ContentStore(tmp_path / "store")
    sparse_layer = _layer_of(store, sparse_root)
    dense_layer = _layer_of(ContentStore(tmp_path / "other-store"), dense_root)
    # The layer is the plain tar: how the file lay on disk changes nothing.
    assert sparse_layer == dense_layer
    blob = store.path(sparse_layer)
    assert os.stat(blob).st_size > size
    assert _allocated(blob) < MiB  # the blob's zeros are holes too
    with tarfile.open(blob) as tar:
        (member,) = tar.getmembers()
        assert member.isreg() and not member.issparse() and member.size == size

    dest = tmp_path / "applied"
    dest.mkdir()
    with store.open(sparse_layer) as f:
        apply_layer(f, dest)
    applied = dest / "disk.img"
    assert os.stat(applied).st_size == size
    assert _allocated(applied) < MiB
    assert _sha256(applied) == _sha256(dense_root / "disk.img")
    assert os.stat(applied).st_mtime == 1_000_000


def test_zero_blocks_of_a_dense_file_are_applied_as_holes(tmp_path: Path) -> None:
    """Zeros written out in full still come back as holes: what is on disk
    after an apply does not depend on how the layer's writer stored them."""
    src = tmp_path / "src"
    src.mkdir()
    _make_dense(src / "f", 16 * MiB)
    (src / "small-zeros").write_bytes(bytes(100))  # shorter than a block
    tar_path = tmp_path / "layer.tar"
    with open(tar_path, "wb") as out:
        write_tree(src, out)
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(tar_path, "rb") as f:
        extract_tree(f, dest)
    assert _allocated(dest / "f") < MiB
    assert _sha256(dest / "f") == _sha256(src / "f")
    assert (dest / "small-zeros").read_bytes() == bytes(100)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_gnu_sparse_entries_are_read_and_applied_sparse(
    tmp_path: Path, fmt: str
) -> None:
    """A layer written by GNU tar --sparse (PAX 1.0 or old GNU sparse entries)
    applies to the same bytes, with the holes kept."""
    src = tmp_path / "src"
    src.mkdir()
    _make_sparse(src / "disk.img", 256 * MiB)
    tar_path = tmp_path / "gnu.tar"
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-C", src, "-cf", tar_path, "."],
        check=True,
    )
    assert tar_path.stat().st_size < MiB
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(tar_path, "rb") as f:
        apply_layer(f, dest)
    assert os.stat(dest / "disk.img").st_size == 256 * MiB
    assert _allocated(dest / "disk.img") < MiB
    assert _sha256(dest / "disk.img") == _sha256(src / "disk.img")


@pytest.mark.slow
def test_a_10_gib_sparse_file_round_trips_without_its_zeros_on_disk(
    tmp_path: Path,
) -> None:
    size = 10 << 30
    src = tmp_path / "src"
    src.mkdir()
    _make_sparse(src / "huge", size)
    store = ContentStore(tmp_path / "store")
    layer = _layer_of(store, src)
    assert _allocated(store.path(layer)) < MiB
    dest = tmp_path / "dest"
    dest.mkdir()
    with store.open(layer) as f:
        apply_layer(f, dest)
    huge = dest / "huge"
    assert os.stat(huge).st_size == size
    assert _allocated(huge) < MiB
    with open(huge, "rb") as f:
        for offset, data in PIECES:
            f.seek(size - len(data) if offset is None else offset)
            assert f.read(len(data)) == data
