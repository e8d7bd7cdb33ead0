"""Layers: the tar of a snapshot's upperdir, and its application to a directory.

Theory of operation. A committed snapshot's fs dir (an overlay upperdir) holds
exactly what its step changed, in overlayfs's own encoding of deletions: a
whiteout is a character device 0/0 named after the deleted entry, and a
directory whose lower contents are hidden carries the xattr
``trusted.overlay.opaque=y`` (kernel Documentation/filesystems/overlayfs.rst).
An OCI layer encodes the same two things as names: ``.wh.<name>`` and
``.wh..wh..opq`` (OCI image spec, layer.md, "Whiteouts"). ``write_layer`` turns
the first encoding into the second; ``apply_layer`` turns it back, into an
empty directory that becomes a lowerdir of an overlay stack, so a layer pulled
from a registry and one built here look alike on disk.

Entries are written depth first, siblings in byte order of their names, in
PAX format, with numeric owners and empty owner names, whole-second mtimes
(clamped to SOURCE_DATE_EPOCH when given) and xattrs as ``SCHILY.xattr.*``
records: the same tree always gives the same bytes. A sparse file is written
as plain bytes (its holes as zeros, produced without reading them) and applied
with its zero blocks as holes: snapshotter/sparse.py says why and how.
``trusted.overlay.*`` xattrs are overlayfs's bookkeeping and never enter a
layer, nor leave one.

Extraction never writes outside its destination: names are split into
components and refused when absolute or holding ``..``; every parent directory
is checked by lstat to be a real directory (never a symlink) before anything is
created in it, and the final component is created with O_EXCL/O_NOFOLLOW after
removing whatever was there. The destination belongs to the extraction alone,
so a check made by this code stays true until this code changes the entry;
``_Extractor._dirs`` remembers checked directories and forgets any that an
entry replaces.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import struct
import tarfile
from pathlib import Path
from typing import BinaryIO

from snapshotter.errors import (
    InvalidArchiveError,
    MachineError,
    SnapshotError,
    UnrepresentableFile,
    UnsafeArchiveError,
)
from snapshotter.overlay import overlay_in_user_namespace
from snapshotter.sparse import CHUNK, HoleSkippingReader, write_holey

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
# Other ".wh..wh." names are aufs bookkeeping (.wh..wh.plnk, ...): no meaning here.
WHITEOUT_META_PREFIX = ".wh..wh."
# In a user namespace (rootless buildpy) overlay is mounted with userxattr and
# keeps its bookkeeping in user.overlay.* xattrs instead of trusted.overlay.*.
OVERLAY_XATTR_PREFIX = (
    "user.overlay." if overlay_in_user_namespace() else "trusted.overlay."
)
OVERLAY_OPAQUE_XATTR = OVERLAY_XATTR_PREFIX + "opaque"
# Overlay features that put file data or names outside the upperdir; the probe
# in overlay.py turns them off, and a layer cannot be made if they were on.
_UNSUPPORTED_OVERLAY_XATTRS = tuple(
    OVERLAY_XATTR_PREFIX + name for name in ("redirect", "metacopy")
)
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # names and xattr values are bytes; keep them so
# Writes to a layer's stream smaller than this are gathered into one (_Blocks).
_GATHER = 64 * 1024
# The ustar header (POSIX.1-1988, as tarfile writes it): name, mode, uid, gid,
# size, mtime, checksum, type, link name, magic and version, owner names,
# device numbers, name prefix, then padding to a block.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_NAME_FIELD = 100
_OCTAL_7 = 8**7  # the largest number a field of 7 octal digits holds, plus 1
_OCTAL_11 = 8**11
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_END_OF_ARCHIVE = bytes(2 * tarfile.BLOCKSIZE)


# --------------------------------------------------------------------- writing


class _Blocks:
    """The tar stream being written: counts what went out, for the padding at
    the end, and gathers small writes. A header, a small file's data and each
    padding would otherwise be a write of their own into ``out``, and each
    write into a blob costs a system call and some Python; a layer of small
    files is almost all such writes. Large pieces (file data, a hole's
    ``ZEROS``, whose identity the blob writer uses) pass through as they are,
    after what was gathered before them."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.size = 0
        self._gathered = bytearray()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if len(data) >= _GATHER:
            self.flush()
            self._out.write(data)
            return
        self._gathered += data
        if len(self._gathered) >= _GATHER:
            self.flush()

    def flush(self) -> None:
        if self._gathered:
            # A copy: ``out`` may keep what it is given.
            self._out.write(bytes(self._gathered))
            self._gathered.clear()


def _ustar_header(
    name: str,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    kind: bytes,
    linkname: str,
) -> bytes | None:
    """The header tarfile's PAX format writes for an entry that needs no pax
    record, or None for an entry that does.

    Such an entry (ASCII names of at most 100 bytes, numbers that fit their
    octal fields, no owner names, no device numbers, no xattrs) gets a lone
    ustar header. ``TarInfo.tobuf`` makes these same bytes, but through a
    dozen checks and conversions that cost four times this on every entry of
    a layer; a test holds the two to the same bytes.
    """
    if not (
        name.isascii()
        and len(name) <= _NAME_FIELD
        and linkname.isascii()
        and len(linkname) <= _NAME_FIELD
        and uid < _OCTAL_7
        and gid < _OCTAL_7
        and size < _OCTAL_11
        and 0 <= mtime < _OCTAL_11
    ):
        return None
    block = _USTAR.pack(
        name.encode("ascii"),
        b"%07o\0" % mode,
        b"%07o\0" % uid,
        b"%07o\0" % gid,
        b"%011o\0" % size,
        b"%011o\0" % mtime,
        b" " * 8,  # the checksum counts its own field as spaces
        kind,
        linkname.encode("ascii"),
        tarfile.POSIX_MAGIC,
        b"",  # owner names: empty, as in all our layers
        b"",
        b"",  # device numbers: none, as for every entry but a device's
        b"",
        b"",  # prefix: unused, the name fits
    )
    # Six octal digits and a NUL over the first seven bytes of the field; the
    # eighth stays a space.
    return block[:148] + b"%06o\0" % sum(block) + block[155:]


def write_layer(
    upperdir: Path, out: BinaryIO, *, source_date_epoch: int | None = None
) -> None:
    """Write the tar of an overlay upperdir as an OCI layer into ``out``."""
    _TreeWriter(out, source_date_epoch, overlay=True).write(Path(upperdir))


def write_tree(
    root: Path, out: BinaryIO, *, source_date_epoch: int | None = None
) -> None:
    """Write the tar of a plain directory (no whiteouts) into ``out``."""
    _TreeWriter(out, source_date_epoch, overlay=False).write(Path(root))


def layer_is_empty(upperdir: Path) -> bool:
    """Whether an upperdir holds no change at all (its layer would have no entry)."""
    with os.scandir(upperdir) as entries:
        return next(entries, None) is None


class _TreeWriter:
    """Writes a tree as a tar, the layout of tarfile's TarFile in PAX format:
    each entry's header, its data padded to whole blocks, and at the end two
    zero blocks and padding to a whole record. The headers come from
    ``_ustar_header`` or, for the entries it leaves, ``TarInfo.tobuf``; the
    framing is written here, not by a TarFile, which would copy every TarInfo
    and keep them all (a layer of a million files would hold a million)."""

    def __init__(self, out: BinaryIO, epoch: int | None, *, overlay: bool) -> None:
        self._blocks = _Blocks(out)
        self._epoch = epoch
        self._overlay = overlay
        # (st_dev, st_ino) of a file with several links -> its first name here.
        self._links: dict[tuple[int, int], str] = {}

    def write(self, root: Path) -> None:
        self._walk(str(root), "")
        blocks = self._blocks
        blocks.write(_END_OF_ARCHIVE)
        if tail := blocks.size % tarfile.RECORDSIZE:
            blocks.write(bytes(tarfile.RECORDSIZE - tail))
        blocks.flush()

    def _walk(self, dirpath: str, prefix: str) -> None:
        names = sorted(os.listdir(dirpath), key=os.fsencode)
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                self._entry(path, prefix + name, name, st)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise  # the tar's destination is full: its writer names it
                raise MachineError(f"{path}: cannot add to a tar: {exc}") from exc

    def _entry(self, path: str, rel: str, name: str, st: os.stat_result) -> None:
        add = self._blocks.write
        if self._overlay and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            parent, _, base = rel.rpartition("/")
            wh = (parent + "/" if parent else "") + WHITEOUT_PREFIX + base
            add(self._header(wh, st, tarfile.REGTYPE, {}))
            return
        if self._overlay and name.startswith(WHITEOUT_PREFIX):
            raise UnrepresentableFile(
                f"{path}: a name starting with {WHITEOUT_PREFIX!r} cannot be in a layer"
            )
        xattrs = self._xattrs(path)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            add(self._header(rel, st, tarfile.DIRTYPE, xattrs))
            if self._overlay and xattrs.get(OVERLAY_OPAQUE_XATTR) == b"y":
                # Right after its directory, before any child: a reader that
                # applies layers onto a merged tree clears the directory here.
                opq = rel + "/" + WHITEOUT_OPAQUE
                add(self._header(opq, st, tarfile.REGTYPE, {}, mode=0o644))
            self._walk(path, rel + "/")
        elif stat.S_ISREG(mode):
            self._regular(path, rel, st, xattrs)
        elif stat.S_ISLNK(mode):
            target = os.readlink(path)
            add(self._header(rel, st, tarfile.SYMTYPE, xattrs, linkname=target))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            add(self._header(rel, st, kind, xattrs, device=st.st_rdev))
        elif stat.S_ISFIFO(mode):
            add(self._header(rel, st, tarfile.FIFOTYPE, xattrs))
        else:
            # A socket: tar has no type for it, and it means nothing once its
            # process is gone (GNU tar skips them too).
            log.warning("%s: skipping a socket, which a tar cannot hold", path)

    def _regular(
        self, path: str, rel: str, st: os.stat_result, xattrs: dict[str, bytes]
    ) -> None:
        add = self._blocks.write
        if st.st_nlink > 1:
            first = self._links.setdefault((st.st_dev, st.st_ino), rel)
            if first != rel:
                add(self._header(rel, st, tarfile.LNKTYPE, xattrs, linkname=first))
                return
        size = st.st_size
        add(self._header(rel, st, tarfile.REGTYPE, xattrs, size=size))
        if size == 0:
            return
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if size <= CHUNK and st.st_blocks * 512 >= size:
                # Small, and as many bytes allocated as it holds: no hole to
                # skip, so one read.
                data = os.pread(fd, size, 0)
                if len(data) < size:
                    raise OSError("unexpected end of data")
                add(data)
            else:
                # In CHUNK pieces, the file never all in memory; holes as
                # zeros that are not read (snapshotter/sparse.py).
                reader = HoleSkippingReader(fd, size)
                left = size
                while left:
                    piece = reader.read(min(left, CHUNK))
                    if not piece:
                        raise OSError("unexpected end of data")  # it shrank
                    add(piece)
                    left -= len(piece)
        finally:
            os.close(fd)
        if tail := size % tarfile.BLOCKSIZE:
            add(_ZERO_BLOCK[tail:])

    def _xattrs(self, path: str) -> dict[str, bytes]:
        try:
            keys = os.listxattr(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise
        if self._overlay and any(k in _UNSUPPORTED_OVERLAY_XATTRS for k in keys):
            raise MachineError(
                f"{path}: overlay redirect or metacopy in an upperdir; mount with "
                "redirect_dir=off,metacopy=off to make layers of it"
            )
        result = {}
        for key in sorted(keys):
            if key == OVERLAY_OPAQUE_XATTR or not key.startswith(OVERLAY_XATTR_PREFIX):
                result[key] = os.getxattr(path, key, follow_symlinks=False)
        return result

    def _header(
        self,
        name: str,
        st: os.stat_result,
        kind: bytes,
        xattrs: dict[str, bytes],
        *,
        mode: int | None = None,
        size: int = 0,
        linkname: str = "",
        device: int | None = None,
    ) -> bytes:
        """The header of one entry: the mode, owners and mtime of ``st`` (the
        mtime in whole seconds, clamped to the epoch), no owner names, and the
        xattrs as pax records."""
        if mode is None:
            mode = stat.S_IMODE(st.st_mode)
        mtime = st.st_mtime_ns // 1_000_000_000
        if self._epoch is not None:
            mtime = min(mtime, self._epoch)
        pax = {
            _XATTR_PAX_PREFIX + key: value.decode(_ENCODING, _ERRORS)
            for key, value in xattrs.items()
            if key != OVERLAY_OPAQUE_XATTR
        }
        if not pax and device is None:
            # tarfile names a directory with a trailing slash.
            plain = name + "/" if kind == tarfile.DIRTYPE else name
            header = _ustar_header(
                plain, mode, st.st_uid, st.st_gid, size, mtime, kind, linkname
            )
            if header is not None:
                return header
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.size = size
        info.mtime = mtime
        info.linkname = linkname
        if device is not None:
            info.devmajor, info.devminor = os.major(device), os.minor(device)
        info.pax_headers = pax
        return info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS)


# ------------------------------------------------------------------ extracting


def apply_layer(stream: BinaryIO, dest: Path) -> None:
    """Apply a plain (decompressed) OCI layer tar to the empty directory ``dest``,
    turning OCI whiteouts into overlay whiteouts, so that ``dest`` can be a
    lowerdir. Raises UnsafeArchiveError for an entry that would write outside
    ``dest``; what was written before that stays for the caller to remove."""
    _Extractor(Path(dest), overlay=True).run(stream)


def extract_tree(stream: BinaryIO, dest: Path) -> None:
    """Extract a plain rootfs tar into ``dest`` (whiteout names are not special),
    never writing outside ``dest``."""
    _Extractor(Path(dest), overlay=False).run(stream)


class _Forward:
    """A readable stream that tarfile's mode "r:" can use although ``stream``
    cannot seek: reads pass through, seeks go forward by reading, and the one
    seek back tarfile makes (one byte, to check a member's data was all there)
    replays the last byte read."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pos = 0
        self._last = b""  # the last byte read, for that one seek back
        self._replay = b""

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        head, self._replay = self._replay, b""
        if n >= 0:
            n -= len(head)
        parts = [head] if head else []
        while n != 0:
            data = self._stream.read(n if n > 0 else CHUNK)
            if not data:
                break
            parts.append(data)
            if n > 0:
                n -= len(data)
        result = parts[0] if len(parts) == 1 else b"".join(parts)
        if result:
            self._pos += len(result)
            self._last = result[-1:]
        return result

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            pos += self._pos
        elif whence != os.SEEK_SET:
            raise tarfile.StreamError("cannot seek from the end of a stream")
        if pos == self._pos - 1 and self._last and not self._replay:
            self._replay, self._pos = self._last, pos
        elif pos < self._pos:
            raise tarfile.StreamError(f"cannot seek back to {pos} in a stream")
        while self._pos < pos:
            if not self.read(min(CHUNK, pos - self._pos)):
                break  # past the end: the next read finds nothing, as in a file
        return self._pos


def _mtime_ns(member: tarfile.TarInfo) -> int:
    # A PAX mtime may have a fraction: tarfile gives a float then.
    return round(member.mtime * 1_000_000_000)


def _components(name: str, what: str) -> list[str]:
    """The path components of an archive name; UnsafeArchiveError if it leaves
    the root."""
    if name.startswith("/"):
        raise UnsafeArchiveError(f"{what} {name!r}: absolute name in archive")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{what} {name!r}: '..' in a name in archive")
    return parts


class _Extractor:
    def __init__(self, dest: Path, *, overlay: bool) -> None:
        self._dest = str(dest)
        self._overlay = overlay
        # Relative paths of directories checked to be real directories.
        self._dirs: set[str] = set()
        self._dir_mtimes: list[tuple[str, int]] = []

    def run(self, stream: BinaryIO) -> None:
        try:
            # Mode "r:" over a forward-only reader rather than the stream mode
            # "r|": the same single pass, but member data is read in CHUNK
            # pieces straight from ``stream``, where "r|" re-buffers all of it
            # through 10 KiB records (five times slower on large files).
            tar = tarfile.open(  # type: ignore[call-overload]
                fileobj=_Forward(stream),
                mode="r:",
                encoding=_ENCODING,
                errors=_ERRORS,
            )
            with tar:
                for member in tar:
                    self._member(tar, member)
            # Last: creating a child changes its directory's mtime.
            for path, mtime in self._dir_mtimes:
                os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
        except tarfile.TarError as exc:
            raise InvalidArchiveError(f"cannot read archive: {exc}") from exc
        except OSError as exc:
            raise MachineError(f"cannot extract into {self._dest}: {exc}") from exc

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _components(member.name, "entry")
        if not parts:
            return  # the root itself: its metadata is not part of a layer
        try:
            parent = self._parent(parts, member.name)
            base = parts[-1]
            if self._overlay and base.startswith(WHITEOUT_PREFIX):
                self._whiteout(parent, parts, member.name)
            else:
                self._create(tar, member, parent, parts)
        except SnapshotError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the destination is full, not this entry bad: said below
            raise MachineError(f"entry {member.name!r}: cannot extract: {exc}") from exc

    def _parent(self, parts: list[str], name: str, *, create: bool = True) -> str:
        """The path of the parent of ``parts``, each component checked to be a
        real directory, missing ones created (tars may omit directories)."""
        path = self._dest
        for i in range(len(parts) - 1):
            path = os.path.join(path, parts[i])
            rel = "/".join(parts[: i + 1])
            if rel in self._dirs:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    raise UnsafeArchiveError(
                        f"entry {name!r}: links to a missing path {rel!r}"
                    ) from None
                os.mkdir(path, 0o755)
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise UnsafeArchiveError(
                        f"entry {name!r}: writes through the symlink {rel!r}"
                    )
                if not stat.S_ISDIR(st.st_mode):
                    raise InvalidArchiveError(
                        f"entry {name!r}: parent {rel!r} is not a directory"
                    )
            self._dirs.add(rel)
        return path

    def _clear(self, path: str, rel: str, *, keep_dir: bool) -> bool:
        """Remove what is at ``path`` (a later entry wins); True if a directory
        was kept because the new entry is a directory too."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(path)
            self._dirs = {
                d for d in self._dirs if d != rel and not d.startswith(rel + "/")
            }
        else:
            os.unlink(path)
        return False

    def _whiteout(self, parent: str, parts: list[str], name: str) -> None:
        base = parts[-1]
        if base == WHITEOUT_OPAQUE:
            os.setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise UnsafeArchiveError(f"entry {name!r}: whiteout of {target!r}")
        path = os.path.join(parent, target)
        self._clear(path, "/".join([*parts[:-1], target]), keep_dir=False)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def _create(
        self,
        tar: tarfile.TarFile,
        member: tarfile.TarInfo,
        parent: str,
        parts: list[str],
    ) -> None:
        rel = "/".join(parts)
        path = os.path.join(parent, parts[-1])
        kept = self._clear(path, rel, keep_dir=member.isdir())
        if member.isdir():
            if not kept:
                os.mkdir(path, 0o700)
            self._dirs.add(rel)
            self._metadata(path, member)
            self._dir_mtimes.append((path, _mtime_ns(member)))
        elif member.isreg():
            self._regular(tar, member, path)
        elif member.issym():
            os.symlink(member.linkname, path)
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
            self._xattrs(path, member)
            mtime = _mtime_ns(member)
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
        elif member.islnk():
            target = self._link_target(member)
            os.link(target, path, follow_symlinks=False)
        elif member.ischr() or member.isblk() or member.isfifo():
            if member.isfifo():
                os.mkfifo(path, 0o600)
            else:
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                dev = os.makedev(member.devmajor, member.devminor)
                os.mknod(path, kind | 0o600, dev)
            self._metadata(path, member)
            mtime = _mtime_ns(member)
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
        else:
            raise InvalidArchiveError(
                f"entry {member.name!r}: unsupported tar type {member.type!r}"
            )

    def _regular(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            src = tar.extractfile(member)
            if src is not None:
                with src:
                    write_holey(src, fd)  # zero blocks stay holes
            # chown before chmod: chown clears setuid/setgid bits.
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._xattrs(fd, member)
            mtime = _mtime_ns(member)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)

    def _link_target(self, member: tarfile.TarInfo) -> str:
        parts = _components(member.linkname, f"hard link {member.name!r} to")
        if not parts:
            raise UnsafeArchiveError(f"entry {member.name!r}: hard link to the root")
        parent = self._parent(parts, member.name, create=False)
        target = os.path.join(parent, parts[-1])
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            raise InvalidArchiveError(
                f"entry {member.name!r}: hard link to {member.linkname!r}, "
                "which is not in the archive before it"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArchiveError(
                f"entry {member.name!r}: hard link to the directory {member.linkname!r}"
            )
        return target

    def _metadata(self, path: str, member: tarfile.TarInfo) -> None:
        # path was created by this extraction and is not a symlink.
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
        os.chmod(path, member.mode & 0o7777)
        self._xattrs(path, member)

    def _xattrs(self, target: str | int, member: tarfile.TarInfo) -> None:
        for key, value in sorted(member.pax_headers.items()):
            if not key.startswith(_XATTR_PAX_PREFIX):
                continue
            name = key[len(_XATTR_PAX_PREFIX) :]
            if name.startswith(OVERLAY_XATTR_PREFIX):
                continue  # overlay bookkeeping must come from whiteouts only
            data = value.encode(_ENCODING, _ERRORS)
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, data)
                else:
                    os.setxattr(target, name, data, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                # The filesystem refuses this xattr (user.* on a symlink, an
                # LSM's label): the file itself is still right.
                log.warning("entry %r: xattr %s not set: %s", member.name, name, exc)
