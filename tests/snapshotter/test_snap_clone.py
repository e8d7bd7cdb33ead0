"""snapshotter.clone.link_tree: an upperdir made again with hard-linked files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from snapshotter.clone import link_tree
from snapshotter.diff import OVERLAY_OPAQUE_XATTR

OLD_NS = 1_500_000_000 * 10**9


def state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: type and mode, owner, mtime, xattrs, and
    the content, link target or device."""
    out: dict[str, tuple[object, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = os.lstat(path)
            xattrs = {
                key: os.getxattr(path, key, follow_symlinks=False)
                for key in os.listxattr(path, follow_symlinks=False)
            }
            what: object = None
            if stat.S_ISREG(st.st_mode):
                what = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode):
                what = st.st_rdev
            rel = str(path.relative_to(root))
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs, what)
    return out


def test_a_tree_is_made_again_with_its_files_linked(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "app/sub").mkdir(parents=True)
    (src / "app/a").write_text("a")
    os.chown(src / "app/a", 1000, 1001)
    os.chmod(src / "app/a", 0o4750)
    (src / "app/sub/b").write_text("b")
    os.link(src / "app/sub/b", src / "app/b-again")  # linked within the tree
    (src / "app/link").symlink_to("a")
    os.chown(src / "app/link", 7, 8, follow_symlinks=False)
    os.mknod(src / "app/gone", stat.S_IFCHR | 0o600, 0)  # a whiteout
    os.mkfifo(src / "app/fifo", 0o640)
    (src / "opaque").mkdir(mode=0o2775)
    os.setxattr(src / "opaque", OVERLAY_OPAQUE_XATTR, b"y")
    os.chown(src / "opaque", 5, 6)
    os.chmod(src / "opaque", 0o2775)
    for path in [*src.rglob("*"), src]:
        os.utime(path, ns=(OLD_NS, OLD_NS + len(str(path))), follow_symlinks=False)
    dst.mkdir()

    placed = link_tree(str(src), str(dst))

    assert state(dst) == state(src)
    assert placed == {"app/a"}  # not the two names of one file
    assert os.stat(dst / "app/a").st_ino == os.stat(src / "app/a").st_ino
    assert os.stat(dst / "app/b-again").st_ino == os.stat(dst / "app/sub/b").st_ino


def test_unlinking_a_name_in_the_copy_leaves_the_original(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("old")
    link_tree(str(src), str(dst))
    (dst / "f").unlink()  # as a copy replaces a file: never in place
    (dst / "f").write_text("new")
    assert (src / "f").read_text() == "old"
