"""Layers: write_layer / apply_layer round trips, reproducibility, and archives
that try to write outside their root."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from snap_helpers import Mounts, needs_root

from snapshotter.diff import apply_layer, extract_tree, write_layer, write_tree
from snapshotter.errors import (
    InvalidArchiveError,
    UnrepresentableFile,
    UnsafeArchiveError,
)
from snapshotter.overlay import Snapshotter

pytestmark = needs_root

Entry = tuple[object, ...]


def describe(root: Path) -> dict[str, Entry]:
    """Everything a user of the tree could see, per path, hard links as groups."""
    tree: dict[str, Entry] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            xattrs = {
                k: os.getxattr(path, k, follow_symlinks=False)
                for k in os.listxattr(path, follow_symlinks=False)
            }
            detail: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    detail = hashlib.file_digest(f, "sha256").hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = st.st_rdev
            tree[rel] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                detail,
                xattrs,
                st.st_mtime_ns // 1_000_000_000,
            )
    for group in inodes.values():
        for rel in group:
            tree[rel] = (*tree[rel], tuple(sorted(group)))
    return tree


def layer_bytes(snap: Snapshotter, name: str, **kw: int) -> bytes:
    out = io.BytesIO()
    write_layer(snap.fs_path(name), out, **kw)  # type: ignore[arg-type]
    return out.getvalue()


def build(
    snap: Snapshotter,
    mounts: Mounts,
    key: str,
    parent: str | None,
    name: str,
    change: Callable[[Path], None],
) -> None:
    snap.prepare(key, parent)
    with mounts.mount(key) as root:
        change(root)
    snap.commit(key, name)


def base_tree(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0\n")
    (root / "etc/gone").write_text("deleted by the child\n")
    (root / "opaque").mkdir()
    (root / "opaque/old").write_text("hidden by the child\n")
    (root / "keep").mkdir(mode=0o750)


def child_tree(root: Path) -> None:
    (root / "etc/gone").unlink()
    (root / "opaque/old").unlink()
    (root / "opaque").rmdir()
    (root / "opaque").mkdir()
    (root / "opaque/new").write_text("fresh")
    big = root / "keep/big.bin"
    with open(big, "wb") as f:
        for i in range(40):
            f.write(hashlib.sha256(str(i).encode()).digest() * 2048)
    (root / "keep/suid").write_text("#!/bin/sh\n")
    os.chmod(root / "keep/suid", 0o4755)
    (root / "keep/sgid-dir").mkdir()
    os.chmod(root / "keep/sgid-dir", 0o2775)
    os.chown(root / "keep/sgid-dir", 1234, 5678)
    (root / "owned").write_text("owned")
    os.chown(root / "owned", 1000, 100)
    os.link(root / "owned", root / "owned-link")
    os.symlink("../etc/passwd", root / "keep/rel-link")
    os.symlink("/nowhere/at/all", root / "dangling")
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.setxattr(root / "owned", "user.comment", b"\xffbinary\x00value")
    os.setxattr(root / "keep", "trusted.mark", b"kept")
    (root / "caf\u00e9 \u2603").write_text("unicode name")
    long_dir = root / ("d" * 120) / ("e" * 120)
    long_dir.mkdir(parents=True)
    (long_dir / "f").write_text("long path")
    (root / "empty-dir").mkdir()
    os.utime(root / "owned", (1_000_000, 1_000_000))
    # Last, as a child's creation changes its directory's mtime.
    os.utime(root / "empty-dir", (2_000_000, 2_000_000))
    os.utime(root / "keep", (3_000_000, 3_000_000))


def test_round_trip_reproduces_tree(snap: Snapshotter, mounts: Mounts) -> None:
    """Layers of a two-snapshot stack, applied into a fresh stack, mount to the
    same tree: names, types, modes, owners, contents, links, xattrs, mtimes."""
    build(snap, mounts, "k1", None, "base", base_tree)
    build(snap, mounts, "k2", "base", "child", child_tree)
    base_layer, child_layer = layer_bytes(snap, "base"), layer_bytes(snap, "child")

    snap.create_committed(
        "base2", None, lambda d: apply_layer(io.BytesIO(base_layer), d)
    )
    snap.create_committed(
        "child2", "base2", lambda d: apply_layer(io.BytesIO(child_layer), d)
    )
    with mounts.view("child") as original, mounts.view("child2") as copy:
        expected = describe(original)
        assert describe(copy) == expected
    assert "etc/gone" not in expected and "opaque/old" not in expected
    assert expected["keep/suid"][0] == stat.S_IFREG | 0o4755
    assert expected["owned"][-1] == ("owned", "owned-link")
    assert expected["owned"][4] == {"user.comment": b"\xffbinary\x00value"}
    assert expected["empty-dir"][5] == 2_000_000
    # The layer of the copy is the layer of the original.
    assert layer_bytes(snap, "child2") == child_layer


def test_identical_trees_give_identical_layers(
    snap: Snapshotter, mounts: Mounts
) -> None:
    """Two snapshots made apart, with the same content, give byte-identical layers
    when mtimes are clamped; without clamping mtimes show through."""
    build(snap, mounts, "k1", None, "a", _flat_tree)
    build(snap, mounts, "k2", None, "b", _flat_tree)
    os.utime(snap.fs_path("a") / "x", (5, 5))
    os.utime(snap.fs_path("b") / "x", (5, 5))
    epoch = 1_000_000
    layer_a = layer_bytes(snap, "a", source_date_epoch=epoch)
    assert layer_a == layer_bytes(snap, "b", source_date_epoch=epoch)
    with tarfile.open(fileobj=io.BytesIO(layer_a)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["sub", "sub/a", "sub/b", "x", "y"]
    assert {m.mtime for m in members} == {5, epoch}
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert [m.name for m in members if m.mtime == 5] == ["x"]
    assert layer_bytes(snap, "a") != layer_a


def _flat_tree(root: Path) -> None:
    (root / "y").write_text("y")
    (root / "x").write_text("x")
    (root / "sub").mkdir()
    (root / "sub/b").write_text("b")
    (root / "sub/a").write_text("a")


def test_whiteout_name_in_upperdir_refused(snap: Snapshotter, mounts: Mounts) -> None:
    """A file named .wh.* cannot be told from a whiteout in a layer: refused."""
    build(snap, mounts, "k", None, "bad", lambda r: (r / ".wh.x").write_text(""))
    with pytest.raises(UnrepresentableFile, match=r"\.wh\.x"):
        layer_bytes(snap, "bad")


def test_plain_tree_round_trip(tmp_path: Path) -> None:
    """write_tree / extract_tree keep a plain tree; a 0/0 device stays a device."""
    src = tmp_path / "src"
    src.mkdir()
    _flat_tree(src)
    os.mknod(src / "zero", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.symlink("x", src / "link")
    out = io.BytesIO()
    write_tree(src, out)
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_tree(io.BytesIO(out.getvalue()), dest)
    assert describe(dest) == describe(src)


# ---------------------------------------------------------------- unsafe archives


def tar_of(*entries: tuple[str, bytes, str, bytes]) -> bytes:
    """A tar of (name, type, linkname, content) entries, written without checks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, linkname, content in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            if kind == tarfile.REGTYPE:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the snapshots, with a file an archive must not reach."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_text("secret")
    return d


UNSAFE = {
    "dot-dot": lambda o: [
        ("ok", tarfile.REGTYPE, "", b"1"),
        ("../../../../outside/x", tarfile.REGTYPE, "", b"x"),
    ],
    "absolute": lambda o: [(f"{o}/x", tarfile.REGTYPE, "", b"x")],
    "symlink-then-write": lambda o: [
        ("link", tarfile.SYMTYPE, str(o), b""),
        ("link/x", tarfile.REGTYPE, "", b"x"),
    ],
    "hard-link-outside": lambda o: [("h", tarfile.LNKTYPE, f"{o}/secret", b"")],
    "hard-link-dot-dot": lambda o: [
        ("h", tarfile.LNKTYPE, "../../../../outside/secret", b"")
    ],
    "hard-link-via-symlink": lambda o: [
        ("link", tarfile.SYMTYPE, str(o), b""),
        ("h", tarfile.LNKTYPE, "link/secret", b""),
    ],
    "whiteout-dot-dot": lambda o: [("d/.wh...", tarfile.REGTYPE, "", b"")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_layer_refused(snap: Snapshotter, outside: Path, case: str) -> None:
    """A layer entry that would write outside its root raises UnsafeArchiveError;
    no snapshot, no directory and no file outside remain."""
    data = tar_of(*UNSAFE[case](outside))
    with pytest.raises(UnsafeArchiveError):
        snap.create_committed("layer", None, lambda d: apply_layer(io.BytesIO(data), d))
    assert not snap.exists("layer")
    assert sorted(os.listdir(snap.snapshots_dir)) == ["empty"]
    assert os.listdir(outside) == ["secret"]
    assert os.stat(outside / "secret").st_nlink == 1


@pytest.mark.parametrize("case", sorted(set(UNSAFE) - {"whiteout-dot-dot"}))
def test_unsafe_tree_refused(tmp_path: Path, outside: Path, case: str) -> None:
    """extract_tree refuses the same archives and writes nothing outside."""
    dest = tmp_path / "a" / "b" / "c" / "dest"
    dest.mkdir(parents=True)
    data = tar_of(*UNSAFE[case](outside))
    with pytest.raises(UnsafeArchiveError):
        extract_tree(io.BytesIO(data), dest)
    assert os.listdir(outside) == ["secret"]
    assert os.stat(outside / "secret").st_nlink == 1


@pytest.mark.parametrize(
    "data",
    [b"not a tar at all" * 64, tar_of(("f", tarfile.REGTYPE, "", b"x" * 4096))[:1024]],
)
def test_broken_archive_refused(snap: Snapshotter, data: bytes) -> None:
    """Garbage or a truncated layer raises InvalidArchiveError and leaves nothing."""
    with pytest.raises(InvalidArchiveError):
        snap.create_committed("layer", None, lambda d: apply_layer(io.BytesIO(data), d))
    assert sorted(os.listdir(snap.snapshots_dir)) == ["empty"]
