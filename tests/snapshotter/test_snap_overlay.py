"""Snapshot conformance: active and committed snapshots on real overlay mounts."""

from __future__ import annotations

import errno
import io
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from snap_helpers import Mounts, needs_root

from snapshotter.diff import layer_is_empty, write_layer
from snapshotter.errors import (
    SnapshotExists,
    SnapshotNotFound,
    SnapshotStateError,
)
from snapshotter.overlay import Snapshotter

pytestmark = needs_root


def layer_names(snap: Snapshotter, name: str) -> list[str]:
    out = io.BytesIO()
    write_layer(snap.fs_path(name), out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        return tar.getnames()


def snapshot_dirs(snap: Snapshotter) -> list[str]:
    return sorted(set(os.listdir(snap.snapshots_dir)) - {"empty"})


def test_prepare_mount_write_commit(snap: Snapshotter, mounts: Mounts) -> None:
    """A file written through the mount lands in the fs dir and survives commit."""
    snap.prepare("k", None)
    assert layer_is_empty(snap.fs_path("k"))
    with mounts.mount("k") as root:
        assert os.listdir(root) == []
        (root / "hello").write_text("world")
    assert (snap.fs_path("k") / "hello").read_text() == "world"
    assert not layer_is_empty(snap.fs_path("k"))
    snap.commit("k", "base")
    assert not snap.exists("k") and snap.exists("base")
    assert snap.info("base").kind == "committed"
    with mounts.view("base") as root:
        assert (root / "hello").read_text() == "world"
        with pytest.raises(OSError) as info:
            (root / "new").write_text("x")
        assert info.value.errno == errno.EROFS


def test_child_sees_parent_and_leaves_it_alone(
    snap: Snapshotter, mounts: Mounts
) -> None:
    """A child sees its parent's files; its writes stay in its own fs dir."""
    snap.prepare("k1", None)
    with mounts.mount("k1") as root:
        (root / "a").write_text("parent")
    snap.commit("k1", "base")
    snap.prepare("k2", "base")
    with mounts.mount("k2") as root:
        assert (root / "a").read_text() == "parent"
        (root / "a").write_text("child")
    assert (snap.fs_path("base") / "a").read_text() == "parent"
    assert (snap.fs_path("k2") / "a").read_text() == "child"
    snap.commit("k2", "top")
    assert snap.chain("top") == ["base", "top"] and snap.parent("top") == "base"


def test_deletion_becomes_whiteout(snap: Snapshotter, mounts: Mounts) -> None:
    """A file deleted in a child is a 0/0 char device in its fs dir and a .wh. entry
    in its layer."""
    snap.prepare("k1", None)
    with mounts.mount("k1") as root:
        (root / "d").mkdir()
        (root / "d/gone").write_text("x")
    snap.commit("k1", "base")
    snap.prepare("k2", "base")
    with mounts.mount("k2") as root:
        (root / "d/gone").unlink()
    st = os.lstat(snap.fs_path("k2") / "d/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    snap.commit("k2", "top")
    assert layer_names(snap, "top") == ["d", "d/.wh.gone"]
    with mounts.view("top") as root:
        assert os.listdir(root / "d") == []


def test_opaque_directory(snap: Snapshotter, mounts: Mounts) -> None:
    """A directory removed and made again hides its lower contents: opaque in the
    fs dir, .wh..wh..opq right after the directory in the layer."""
    snap.prepare("k1", None)
    with mounts.mount("k1") as root:
        (root / "d").mkdir()
        (root / "d/old").write_text("x")
    snap.commit("k1", "base")
    snap.prepare("k2", "base")
    with mounts.mount("k2") as root:
        (root / "d/old").unlink()
        (root / "d").rmdir()
        (root / "d").mkdir()
        (root / "d/!new").write_text("y")
    assert os.getxattr(snap.fs_path("k2") / "d", "trusted.overlay.opaque") == b"y"
    snap.commit("k2", "top")
    assert layer_names(snap, "top") == ["d", "d/.wh..wh..opq", "d/!new"]
    with mounts.view("top") as root:
        assert os.listdir(root / "d") == ["!new"]


def test_commit_of_existing_name_drops_ours(snap: Snapshotter) -> None:
    """Two builds committing one name: the second returns normally and its
    directory goes."""
    snap.prepare("k1", None)
    snap.commit("k1", "same")
    snap.prepare("k2", None)
    (snap.fs_path("k2") / "f").write_text("ours")
    snap.commit("k2", "same")
    assert not snap.exists("k2")
    assert len(snapshot_dirs(snap)) == 1
    assert os.listdir(snap.fs_path("same")) == []


def test_misuse_is_refused(snap: Snapshotter, mounts: Mounts) -> None:
    """Existing keys, active parents, missing names, removing a parent or a
    mounted snapshot: each raises the error that names the rule."""
    snap.prepare("k", None)
    with pytest.raises(SnapshotExists):
        snap.prepare("k", None)
    with pytest.raises(SnapshotStateError, match="active; expected committed"):
        snap.prepare("k2", "k")
    with pytest.raises(SnapshotNotFound):
        snap.prepare("k3", "nope")
    with pytest.raises(SnapshotNotFound):
        snap.chain("nope")
    with mounts.mount("k"), pytest.raises(SnapshotStateError, match="mounted"):
        snap.remove("k")
    snap.commit("k", "base")
    with pytest.raises(SnapshotStateError):
        snap.commit("base", "again")
    snap.prepare("child", "base")
    with pytest.raises(SnapshotStateError, match="children"):
        snap.remove("base")
    snap.remove("child")
    snap.remove("base")
    assert snapshot_dirs(snap) == []
    assert not snap.exists("base")


def test_create_committed_failure_leaves_nothing(snap: Snapshotter) -> None:
    """A fill that fails leaves no row and no directory."""

    def fill(fs: Path) -> None:
        (fs / "half").write_text("written")
        raise RuntimeError("download broke")

    with pytest.raises(RuntimeError):
        snap.create_committed("layer", None, fill)
    assert not snap.exists("layer")
    assert snapshot_dirs(snap) == []


def test_create_committed_once(snap: Snapshotter, mounts: Mounts) -> None:
    """create_committed makes a committed snapshot; a second call skips fill."""
    snap.create_committed("base", None, lambda fs: (fs / "f").write_text("1"))
    snap.create_committed("base", None, lambda fs: pytest.fail("filled twice"))
    with mounts.view("base") as root:
        assert (root / "f").read_text() == "1"


def test_complete_names_whole_chains_only(
    snap: Snapshotter, db: sqlite3.Connection
) -> None:
    """complete() is exists() of a snapshot and all its ancestors, for many."""
    parent = None
    for name in ("a", "b", "c"):
        snap.create_committed(name, parent, lambda fs: None)
        parent = name
    snap.create_committed("x", None, lambda fs: None)
    snap.create_committed("y", "x", lambda fs: None)
    assert snap.complete(["c", "b", "y", "nothing"]) == {"c", "b", "y"}
    db.execute("DELETE FROM snapshots WHERE name = 'x'")  # a broken chain
    assert snap.complete(["y", "c", "x"]) == {"c"}
    assert snap.complete([]) == set()


def test_long_chain_mounts(
    snap: Snapshotter, tmp_path: Path, db: sqlite3.Connection, mounts: Mounts
) -> None:
    """A chain whose absolute lowerdirs exceed a page still mounts."""
    deep = Snapshotter(tmp_path / ("r" * 200) / ("o" * 200), db)
    parent = None
    for i in range(40):

        def fill(fs: Path, i: int = i) -> None:
            (fs / f"f{i}").write_text(str(i))
            (fs / "top").write_text(str(i))

        deep.create_committed(f"l{i}", parent, fill)
        parent = f"l{i}"
    deep.prepare("k", parent)
    target = tmp_path / "mnt-deep"
    target.mkdir()
    deep.mount("k", target)
    try:
        assert (target / "f0").read_text() == "0"
        assert (target / "top").read_text() == "39"
        assert len(os.listdir(target)) == 41
    finally:
        deep.unmount(target)


CRASHING_BUILD = """
import sqlite3, sys
from pathlib import Path
from snapshotter.overlay import Snapshotter
db = sqlite3.connect(sys.argv[1], isolation_level=None, check_same_thread=False)
s = Snapshotter(Path(sys.argv[2]), db)
s.prepare("crashed", None)
s.mount("crashed", Path(sys.argv[3]))
print("ready", flush=True)
sys.stdin.read()
"""


def test_cleanup_stale_after_crash(
    snap: Snapshotter, tmp_path: Path, mounts: Mounts
) -> None:
    """A build killed with its snapshot mounted: cleanup unmounts and removes it,
    and leaves the snapshots of a live build alone."""
    target = tmp_path / "crash-mnt"
    target.mkdir()
    snap.prepare("alive", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CRASHING_BUILD,
            str(tmp_path / "meta.db"),
            str(snap.root),
            str(target),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
    finally:
        proc.kill()
        proc.wait()
    assert os.path.ismount(target)
    (snap.snapshots_dir / "deadbeef").mkdir()  # a directory without a row
    assert snap.cleanup_stale() == 2
    assert not os.path.ismount(target)
    assert not snap.exists("crashed") and snap.exists("alive")
    assert snapshot_dirs(snap) == [snap.fs_path("alive").parent.name]
