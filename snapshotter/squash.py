"""``build --squash``: the upperdirs of a build's steps stacked into one.

Theory of operation. Each committed step is an overlay upperdir holding what it
changed, deletions encoded as overlayfs encodes them (snapshotter/diff.py): a
whiteout, a character device 0/0, for a deleted entry, and the xattr
``opaque=y`` on a directory whose lower contents are hidden. ``merge_upperdirs``
applies them bottom first into one directory, as the kernel would stack them:
an entry of a higher upperdir replaces the same path below (a file or link
replaces whatever was there; a directory merges with a directory below unless
it is opaque); a whiteout removes what lower steps put there and stays, since
it must still hide the base image's entry of that name. The result is itself
an upperdir, so ``write_layer`` makes its layer; what the base image holds is
not in it, which is what buildah's ``--squash`` means: the new layers as one.

Regular files are hard links to the steps' own files (a squash copies no data),
or copies when the destination is on another filesystem. The destination is a
fresh directory that belongs to the merge alone.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from snapshotter.diff import OVERLAY_OPAQUE_XATTR


def merge_upperdirs(upperdirs: Sequence[Path], dest: Path) -> None:
    """Stack ``upperdirs`` (lowest first) into the empty directory ``dest``."""
    for upper in upperdirs:
        _merge(str(upper), str(dest))


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _merge(src: str, dst: str) -> None:
    with os.scandir(src) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        source = os.path.join(src, name)
        target = os.path.join(dst, name)
        st = os.lstat(source)
        if stat.S_ISDIR(st.st_mode):
            _merge_directory(source, target, st)
            continue
        _remove(target)
        if _is_whiteout(st):
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            _copy_metadata(source, target, st)
        elif stat.S_ISREG(st.st_mode):
            _link_or_copy(source, target, st)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), target)
            _copy_metadata(source, target, st)
        else:  # fifos and devices: made anew, as the step made them
            os.mknod(target, st.st_mode, st.st_rdev)
            _copy_metadata(source, target, st)


def _merge_directory(source: str, target: str, st: os.stat_result) -> None:
    try:
        there = os.lstat(target)
    except FileNotFoundError:
        there = None
    if there is not None and (not stat.S_ISDIR(there.st_mode) or _is_opaque(source)):
        _remove(target)  # an opaque directory hides what lower steps put there
        there = None
    if there is None:
        os.mkdir(target)
    _merge(source, target)
    # The highest step's directory is the one the image shows: its owner,
    # mode, xattrs (opaque included) and time, set after its contents.
    _copy_metadata(source, target, st)


def _link_or_copy(source: str, target: str, st: os.stat_result) -> None:
    try:
        os.link(source, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
            raise
    shutil.copyfile(source, target, follow_symlinks=False)
    _copy_metadata(source, target, st)


def _copy_metadata(source: str, target: str, st: os.stat_result) -> None:
    os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError:
        names = []
    if stat.S_ISDIR(st.st_mode):
        # A directory merged over one below keeps none of the lower's xattrs.
        for stale in set(os.listxattr(target, follow_symlinks=False)) - set(names):
            os.removexattr(target, stale, follow_symlinks=False)
    for name in names:
        value = os.getxattr(source, name, follow_symlinks=False)
        os.setxattr(target, name, value, follow_symlinks=False)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


__all__ = ["merge_upperdirs"]
