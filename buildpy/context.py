"""Content checksums of what a COPY reads from the build context.

Theory of operation
-------------------
The solver's cache key for a COPY from the context must change exactly when the
copy's result would: ``ContextHasher.checksum`` hashes (sha256) the list that
``fileops.select_sources`` gives for the action, the same list the copy writes,
one line per entry with the entry's place in the result (with COPY --parents
the kept parents too, and the kept parent directories as entries of their own),
its type, the mode and owner the copy will write (after --chmod and --chown), a
symlink's target, a device's numbers, a hard link to an earlier entry, and a
regular file's content checksum (xxh3-128). mtimes are left out, and so are
modes that --chmod replaces.

Reading every file on every build would make a cached rebuild as slow as the
first one, so a file's content checksum is remembered in the table
``context_files`` under its physical path, with the stat fields that change
when the file does: size, mtime_ns, ctime_ns, inode and mode. ctime is the
guard a user cannot put back (``touch -d`` or ``os.utime`` restore mtime but set
ctime to now).

Timestamps are coarse, though: the kernel stamps a write with its coarse clock
(one scheduler tick, 1-10 ms), so a file written again within the tick of the
stat we recorded keeps the same stat. Like git's racy-index rule, a record is
trusted only when the file's mtime and ctime are older than the moment the
hashing started by more than a margin (``racy_margin_ns``); a file written later
than that is read again on every build until it settles. The moment is taken
before the tree is walked, so a write during the walk or the read always lands
inside the margin.

Records of one context directory are read with one query per hasher (one
hasher per build) and new ones written in one transaction; the connection is
shared between threads, so every statement runs under this hasher's lock.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from buildpy.fileops import Ignore, Selected, parse_chmod, select_sources
from solver.graph import CopyAction

# Bump when the encoding of an entry changes: old cache keys must not match.
CHECKSUM_VERSION = b"buildpy-context-checksum-v3"
_CHUNK = 1 << 20
_CLOCK_REALTIME_COARSE = 5  # <linux/time.h>; Python 3.11 does not name it


@dataclass(frozen=True)
class _Record:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    mode: int
    checksum: str
    recorded_ns: int


def _coarse_tick_ns() -> int:
    try:
        return int(time.clock_getres(_CLOCK_REALTIME_COARSE) * 1e9)
    except OSError:
        return 10_000_000  # HZ=100, the coarsest tick Linux builds use


_TICK_NS = _coarse_tick_ns()


def racy_margin_ns(mtime_ns: int, ctime_ns: int) -> int:
    """How much older than the recording moment a file's timestamps must be
    before its record is trusted.

    Inode timestamps come from the kernel's coarse clock, which lags the clock
    we read by up to one tick; twice the tick (at least 10 ms) covers that with
    room for the two clocks' reads. Timestamps with no sub-second part come
    from a file system that keeps whole seconds (ext3, FAT keeps two): there a
    write within the same two seconds keeps the stamp, so the margin is 2 s.
    """
    if mtime_ns % 1_000_000_000 == 0 and ctime_ns % 1_000_000_000 == 0:
        return 2_000_000_000
    return max(2 * _TICK_NS, 10_000_000)


def hash_file(path: Path) -> str:
    """The xxh3-128 of a file's content, streamed. Tests count calls to this."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _key(path: Path) -> bytes:
    # Bytes, not text: file names need not be UTF-8.
    return os.fsencode(path)


class ContextHasher:
    """Content checksums of context copies, remembered in SQLite.

    One hasher serves one build: the records of a context directory are read
    once, on its first checksum, and kept. ``clock`` gives wall-clock
    nanoseconds; tests replace it to control the racy rule.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        verify: bool = False,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.db = db
        self.verify = verify
        self.clock = clock
        self._lock = threading.Lock()
        self._records: dict[Path, dict[bytes, _Record]] = {}

    def init_schema(self) -> None:
        with self._lock:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS context_files ("
                " path BLOB PRIMARY KEY, size INTEGER NOT NULL,"
                " mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
                " inode INTEGER NOT NULL, mode INTEGER NOT NULL,"
                " checksum TEXT NOT NULL, recorded_ns INTEGER NOT NULL"
                ") WITHOUT ROWID"
            )

    def checksum(
        self,
        context_dir: Path,
        action: CopyAction,
        ignore: Ignore | None,
        detail: dict[str, list[str]] | None = None,
        selected: list[Selected] | None = None,
    ) -> str:
        """sha256 over what ``action`` reads from ``context_dir`` and the
        metadata it writes. Raises fileops.FileOpError for a missing source.

        ``detail``, when given, gets one entry per path read (relative to the
        context): ``[kind, value, mode]`` as solver.explain.file_changes reads
        it, so that a cache miss can name the file that changed. ``selected``,
        when given, gets the entries read (``select_sources``'s list), which
        the copy can write without walking the context again."""
        root = context_dir.resolve()
        started = self.clock()  # before the walk: see the theory above
        entries = select_sources(root, action, ignore, from_context=True)
        if selected is not None:
            selected.extend(entries)
        records = self._load(root)
        fresh: dict[bytes, _Record] = {}
        chmod = parse_chmod(action.chmod)
        owner = (action.chown or "0:0").encode()
        first_link: dict[tuple[int, int], int] = {}
        h = hashlib.sha256(CHECKSUM_VERSION + b"\n")
        for n, e in enumerate(entries):
            st = e.st
            content = link = b""
            if stat.S_ISREG(st.st_mode):
                content = self._content(e, records, fresh, started).encode()
                if st.st_nlink > 1:
                    # Only a link to an earlier entry of this copy shows in the
                    # result; links to files it does not read change nothing.
                    first = first_link.setdefault((st.st_dev, st.st_ino), n)
                    if first != n:
                        link = str(first).encode()
            elif e.link is not None:
                link = os.fsencode(e.link)
            mode = b"%o" % _written_mode(st.st_mode, chmod)
            fields = [
                str(e.source).encode(),
                os.fsencode(e.top),
                os.fsencode(e.inner),
                os.fsencode(e.place),
                b"p" if e.parent else b"",
                str(stat.S_IFMT(st.st_mode)).encode(),
                mode,
                owner,
                link,
                str(st.st_rdev if _is_device(st.st_mode) else 0).encode(),
                content,
            ]
            # No field can hold a NUL (paths and link targets cannot), so the
            # encoding is unambiguous.
            h.update(b"\0".join(fields) + b"\0\n")
            if detail is not None:
                detail[e.relpath] = _detail(st.st_mode, content, e.link, mode)
        self._store(root, fresh)
        return "sha256:" + h.hexdigest()

    # --- remembered content checksums ------------------------------------------

    def _content(
        self,
        e: Selected,
        records: dict[bytes, _Record],
        fresh: dict[bytes, _Record],
        started: int,
    ) -> str:
        st = e.st
        key = os.fsencode(e.fspath)
        rec = records.get(key)
        if rec is not None and not self.verify and _trusted(rec, st):
            return rec.checksum
        checksum = hash_file(e.path)
        fresh[key] = _Record(
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_mode,
            checksum,
            started,
        )
        return checksum

    def forget(self, root: Path) -> None:
        """Drop the records of the context directory ``root``: a temporary one
        (a remote client's materialised context) is never hashed again."""
        self._records.pop(root, None)
        with self._lock:
            self.db.execute(
                "DELETE FROM context_files WHERE path >= ? AND path < ?",
                (_key(root) + b"/", _key(root) + b"0"),
            )

    def _load(self, root: Path) -> dict[bytes, _Record]:
        """Every record under ``root``, in one query, once per hasher."""
        if root in self._records:
            return self._records[root]
        low = _key(root) + b"/"
        high = _key(root) + b"0"  # "0" follows "/": the end of the prefix range
        with self._lock:
            rows = self.db.execute(
                "SELECT path, size, mtime_ns, ctime_ns, inode, mode, checksum,"
                " recorded_ns FROM context_files WHERE path >= ? AND path < ?",
                (low, high),
            ).fetchall()
            # setdefault: another thread may have loaded the same root meanwhile.
            return self._records.setdefault(
                root, {bytes(row[0]): _Record(*row[1:]) for row in rows}
            )

    def _store(self, root: Path, fresh: dict[bytes, _Record]) -> None:
        if not fresh:
            return
        rows = [
            (
                k,
                r.size,
                r.mtime_ns,
                r.ctime_ns,
                r.inode,
                r.mode,
                r.checksum,
                r.recorded_ns,
            )
            for k, r in fresh.items()
        ]
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT OR REPLACE INTO context_files (path, size, mtime_ns,"
                    " ctime_ns, inode, mode, checksum, recorded_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            self._records[root].update(fresh)


def _trusted(rec: _Record, st: os.stat_result) -> bool:
    """The racy-index rule: the stat must match and be older than the moment
    the record's hashing started, by more than the margin."""
    same = (rec.size, rec.mtime_ns, rec.ctime_ns, rec.inode, rec.mode) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_mode,
    )
    newest = max(rec.mtime_ns, rec.ctime_ns)
    return same and newest < rec.recorded_ns - racy_margin_ns(
        rec.mtime_ns, rec.ctime_ns
    )


def _written_mode(st_mode: int, chmod: int | None) -> int:
    if stat.S_ISLNK(st_mode):
        return 0o777  # a symlink's own mode is not written
    return chmod if chmod is not None else stat.S_IMODE(st_mode)


def _detail(st_mode: int, content: bytes, link: str | None, mode: bytes) -> list[str]:
    if stat.S_ISREG(st_mode):
        return ["file", content.decode(), mode.decode()]
    if stat.S_ISDIR(st_mode):
        return ["dir", "", mode.decode()]
    if link is not None:
        return ["symlink", link, mode.decode()]
    return ["special", str(stat.S_IFMT(st_mode)), mode.decode()]


def _is_device(st_mode: int) -> bool:
    return stat.S_ISCHR(st_mode) or stat.S_ISBLK(st_mode)
