"""A snapshot's tree made again elsewhere, its regular files as hard links.

``link_tree`` is how a step is built from an earlier run of itself
(``Snapshotter.populate``): the new upperdir starts as the old one, each
regular file a second name of the old inode, so that only what changed needs
writing. A hard link shares the file's content, mode, owner, times and
xattrs, which is what makes it cheap and also what makes it safe only under
one rule, which the writers of a snapshot keep: a file is never written in
place, it is unlinked and created anew (buildpy.fileops ``_clear``; overlay's
copy-up for a RUN). Directories, symlinks and special files (overlay's
whiteouts among them) are created with the old ones' metadata and xattrs.
"""

from __future__ import annotations

import os
import stat


def link_tree(src: str, dst: str) -> set[str]:
    """Fill the empty directory ``dst`` with the tree below ``src``.

    Returns the paths (relative, "/"-separated) of the regular files that
    have one name in ``src``'s tree: the files a writer may keep as they are.
    A file with several names there is linked too, but left out, since a new
    copy decides again which of its names share an inode.
    """
    linker = _Linker()
    _copy_meta_later(src, dst, os.lstat(src), linker.dirs)
    linker.walk(src, dst, "")
    # Directory times last: creating entries in a directory changes them.
    for target, st in reversed(linker.dirs):
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    return set(linker.names.values()) - linker.shared


class _Linker:
    """One ``link_tree``: what its walk has seen so far."""

    def __init__(self) -> None:
        # Inode -> its first name here. The inode alone is unique: a
        # snapshot's tree is one filesystem, with nothing mounted inside it.
        self.names: dict[int, str] = {}
        self.shared: set[str] = set()  # names of files with several here
        self.dirs: list[tuple[str, os.stat_result]] = []  # times to set last

    def walk(self, src: str, dst: str, prefix: str) -> None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        src_fd, dst_fd = os.open(src, flags), os.open(dst, flags)
        try:
            with os.scandir(src_fd) as it:
                entries = list(it)
            for entry in entries:
                name = entry.name
                rel = prefix + name
                # Most entries are files: their type and inode come with the
                # directory's listing, and the link is made relative to the two
                # directories, so a file costs one system call.
                if entry.is_file(follow_symlinks=False):
                    os.link(
                        name,
                        name,
                        src_dir_fd=src_fd,
                        dst_dir_fd=dst_fd,
                        follow_symlinks=False,
                    )
                    first = self.names.setdefault(entry.inode(), rel)
                    if first != rel:
                        self.shared.update((first, rel))
                else:
                    self._other(f"{src}/{name}", f"{dst}/{name}", rel)
        finally:
            os.close(src_fd)
            os.close(dst_fd)

    def _other(self, source: str, target: str, rel: str) -> None:
        """A directory (walked), symlink or special file, with its metadata."""
        st = os.lstat(source)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(target, 0o700)
            _copy_meta_later(source, target, st, self.dirs)
            self.walk(source, target, rel + "/")
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(source), target)
            _copy_xattrs(source, target)
            os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
            times = (st.st_atime_ns, st.st_mtime_ns)
            os.utime(target, ns=times, follow_symlinks=False)
        else:
            # A device, a fifo, or overlay's whiteout (a 0/0 character device).
            os.mknod(target, stat.S_IFMT(mode) | 0o600, st.st_rdev)
            _copy_xattrs(source, target)
            os.chown(target, st.st_uid, st.st_gid)
            os.chmod(target, stat.S_IMODE(mode))
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_meta_later(
    source: str,
    target: str,
    st: os.stat_result,
    dirs: list[tuple[str, os.stat_result]],
) -> None:
    """A directory's owner, mode and xattrs (overlay's opaque mark among
    them) now; its times once its entries are made."""
    _copy_xattrs(source, target)
    os.chown(target, st.st_uid, st.st_gid)  # before chmod: chown clears setgid
    os.chmod(target, stat.S_IMODE(st.st_mode))
    dirs.append((target, st))


def _copy_xattrs(source: str, target: str) -> None:
    for key in os.listxattr(source, follow_symlinks=False):
        value = os.getxattr(source, key, follow_symlinks=False)
        os.setxattr(target, key, value, follow_symlinks=False)
