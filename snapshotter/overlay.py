"""Overlay snapshots: filesystem states stacked with overlayfs.

Theory of operation
-------------------
A *snapshot* is a directory ``root/snapshots/<id>/fs`` plus a row in the
``snapshots`` table. An *active* snapshot is one that can change: it is mounted
as an overlay whose upperdir is its fs dir (``.../work`` is overlay's workdir)
and whose lowerdirs are the fs dirs of its committed parents, newest first. A
*committed* snapshot never changes again; its fs dir holds exactly the changes
its step made, with deletions as overlay whiteouts, so it is both a lowerdir
for its children and the source of its layer (diff.write_layer).

Keys and names share one key space, as in containerd: an active snapshot is
known by its *key*, and ``commit(key, name)`` renames the row to *name* and
makes it committed. Only a committed snapshot can be a parent. The directory is
named by a short random ``id`` that never changes, so renaming is a row update
and lowerdir options stay short.

Invariants, each kept by the order of steps:
- A row exists before its directory, and a directory is deleted only after its
  row is gone. So a directory whose id has no row is garbage, whoever made it.
  (``cleanup_stale`` lists directories before reading ids, so a snapshot made
  between the two steps is seen as having a row.)
- A committed row points to a complete directory: ``create_committed`` fills a
  ``new-<id>`` directory while its row is active, renames it into place, then
  commits. A crash at any point leaves an active row or an orphan directory.
- An active row records the process that owns it (pid and start time, so a
  reused pid does not count). ``cleanup_stale`` removes active snapshots whose
  owner is gone, with any mount still using them; those of live processes
  (another build) are never touched.
- Two builds that commit the same name made the same thing (the name is a
  cache key): the second commit drops its own snapshot and succeeds.

The database connection is shared with the rest of buildpy (autocommit, WAL);
every change here is one SQL statement, so no transaction is ever left open on
it, and ``self._lock`` keeps this object's statements from interleaving.

Mounts: the overlay options are probed once by a real mount (``index=off`` so a
lowerdir may sit under many upperdirs, ``redirect_dir=off`` and
``metacopy=off`` so an upperdir holds all of its changes as plain files). The
mount data is limited to one page; a long chain is mounted from a helper
process whose working directory is ``root/snapshots``, with lowerdirs as short
relative paths (``<id>/fs``), because the working directory is per process and
changing ours would race with other threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from snapshotter.clone import link_tree
from snapshotter.errors import (
    MachineError,
    MountError,
    SnapshotExists,
    SnapshotNotFound,
    SnapshotStateError,
    UsageError,
)

# Names per SELECT ... IN (...): below SQLite's default limit of bound variables.
_BATCH = 500

log = logging.getLogger(__name__)

Kind = Literal["active", "committed"]

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS snapshots (
        name TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        parent TEXT,
        kind TEXT NOT NULL CHECK (kind IN ('active', 'committed')),
        created REAL NOT NULL,
        owner_pid INTEGER,
        owner_start INTEGER
    )
    """,
    "CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots (parent)",
)

_MS_RDONLY = 1
_MNT_DETACH = 2
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Overlay refuses more lowerdirs than this (OVL_MAX_STACK in fs/overlayfs).
_MAX_STACK = 500
_PROBED_OPTIONS = ("index=off", "redirect_dir=off", "metacopy=off")
# In a user namespace (rootless) overlay needs userxattr, which refuses
# redirect_dir=off (it means "follow" there) and wants "nofollow" instead.
_USERNS_OPTIONS = ("userxattr", "index=off", "redirect_dir=nofollow", "metacopy=off")


def overlay_in_user_namespace() -> bool:
    """True in a user namespace other than the host's: overlay is mounted with
    userxattr there and keeps its xattrs under user.overlay.*."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


_EMPTY = "empty"  # the lowerdir of a snapshot with no parent

# Run by a child process with cwd = root/snapshots: argv is target, data, flags.
_MOUNT_HELPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
target, data, flags = sys.argv[1], sys.argv[2], int(sys.argv[3])
if libc.mount(b"overlay", os.fsencode(target), b"overlay", flags, os.fsencode(data)):
    err = ctypes.get_errno()
    sys.stderr.write(os.strerror(err))
    sys.exit(1)
"""

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    rc = _libc.mount(
        source.encode(), os.fsencode(target), fstype.encode(), flags, data.encode()
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def _umount(target: Path, flags: int = 0) -> None:
    if _libc.umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after its last ')'.
    # What follows starts at field 3; starttime is field 22.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def _owner_alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and _process_start(pid) == start


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts() -> Iterator[tuple[Path, str, str]]:
    """(mount point, fstype, super options) of each mount in our namespace."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            yield (
                Path(_unescape_mountinfo(fields[4])),
                fields[sep + 1],
                fields[sep + 3] if len(fields) > sep + 3 else "",
            )


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    parent: str | None
    kind: Kind
    created: float


class Snapshotter:
    """Overlay snapshots under ``root/snapshots``, recorded in ``db``."""

    def __init__(self, root: Path, db: sqlite3.Connection) -> None:
        root = Path(root).absolute()
        if any(c in str(root) for c in ",:\\"):
            # Separators in overlay's mount options; escaping them is fragile.
            raise UsageError(f"snapshot root {root}: must not contain ',', ':' or '\\'")
        self.root = root
        self.snapshots_dir = root / "snapshots"
        self._db = db
        self._lock = threading.Lock()
        self._options: tuple[str, ...] | None = None
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        (self.snapshots_dir / _EMPTY).mkdir(exist_ok=True)

    def init_schema(self) -> None:
        with self._lock:
            for statement in _SCHEMA:
                self._db.execute(statement)

    # ------------------------------------------------------------ queries

    def _row(self, name: str) -> tuple[str, str | None, Kind, float]:
        """(id, parent, kind, created) of ``name``; SnapshotNotFound if absent."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, parent, kind, created FROM snapshots WHERE name = ?",
                (name,),
            ).fetchone()
        if row is None:
            raise SnapshotNotFound(f"snapshot {name!r} not found")
        return row

    def exists(self, name: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM snapshots WHERE name = ?", (name,)
            ).fetchone()
        return row is not None

    def complete(self, names: Collection[str]) -> set[str]:
        """Those of ``names`` that are recorded with every ancestor: what a
        rebuild's lookups ask of many results, in a few queries in all."""
        parents: dict[str, str | None] = {}
        looked: set[str] = set()
        wanted = set(names)
        while wanted:
            batch = list(wanted)[:_BATCH]
            looked.update(batch)
            marks = ",".join("?" * len(batch))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT name, parent FROM snapshots WHERE name IN ({marks})",
                    batch,
                ).fetchall()
            parents.update(rows)
            wanted.difference_update(batch)
            wanted.update(p for _, p in rows if p is not None and p not in looked)
        whole: dict[str, bool] = {}
        for name in names:
            path: list[str] = []
            node: str | None = name
            while node is not None and node not in whole and node in parents:
                path.append(node)
                node = parents[node]
            # The walk stopped at the base (None), at a known answer, or at a
            # name with no record: a broken chain.
            verdict = node is None or whole.get(node, False)
            whole.update(dict.fromkeys(path, verdict))
            whole.setdefault(name, verdict)
        return {n for n in names if whole[n]}

    def info(self, name: str) -> SnapshotInfo:
        _, parent, kind, created = self._row(name)
        return SnapshotInfo(name, parent, kind, created)

    def set_created(self, name: str, created: float) -> None:
        """Date the committed snapshot ``name`` as another store made it: an
        image's ``created`` is its last step snapshot's, so a snapshot rebuilt
        from a shared cache keeps the image ID of the build that exported it."""
        with self._lock:
            self._db.execute(
                "UPDATE snapshots SET created = ? WHERE name = ? "
                "AND kind = 'committed'",
                (created, name),
            )

    def parent(self, name: str) -> str | None:
        return self._row(name)[1]

    def chain(self, name: str) -> list[str]:
        """``name`` and its ancestors, base first, ``name`` last."""
        return [n for n, _ in self._chain_ids(name)]

    def _chain_ids(self, name: str) -> list[tuple[str, str]]:
        with self._lock:
            rows = self._db.execute(
                """
                WITH RECURSIVE up(name, parent, id, depth) AS (
                    SELECT name, parent, id, 0 FROM snapshots WHERE name = ?
                    UNION ALL
                    SELECT s.name, s.parent, s.id, up.depth + 1
                    FROM snapshots s JOIN up ON s.name = up.parent
                )
                SELECT name, id FROM up ORDER BY depth DESC
                """,
                (name,),
            ).fetchall()
        if not rows:
            raise SnapshotNotFound(f"snapshot {name!r} not found")
        return rows

    def fs_path(self, name: str) -> Path:
        """The fs dir of ``name``: the upperdir, or the unpacked layer."""
        return self._dir(self._row(name)[0]) / "fs"

    def _dir(self, sid: str) -> Path:
        return self.snapshots_dir / sid

    # ------------------------------------------------------------ changes

    def _insert_active(self, key: str, parent: str | None) -> str:
        """Record an active snapshot owned by this process; returns its id."""
        pid = os.getpid()
        start = _process_start(pid)
        while True:
            sid = secrets.token_hex(4)
            try:
                with self._lock:
                    cur = self._db.execute(
                        """
                        INSERT INTO snapshots
                            (name, id, parent, kind, created, owner_pid, owner_start)
                        SELECT ?, ?, ?, 'active', ?, ?, ?
                        WHERE ?3 IS NULL OR EXISTS (
                            SELECT 1 FROM snapshots
                            WHERE name = ?3 AND kind = 'committed'
                        )
                        """,
                        (key, sid, parent, time.time(), pid, start),
                    )
            except sqlite3.IntegrityError as exc:
                if "snapshots.id" in str(exc):
                    continue  # two random ids met: draw again
                raise SnapshotExists(f"snapshot {key!r} already exists") from exc
            if cur.rowcount == 1:
                return sid
            assert parent is not None
            if self._row(parent)[2] != "committed":
                raise SnapshotStateError(
                    f"parent {parent!r} of {key!r} is active; expected committed"
                )
            raise AssertionError("unreachable: insert of an active snapshot lost")

    def prepare(self, key: str, parent: str | None) -> Path:
        """Create the active snapshot ``key`` on top of the committed ``parent``
        (None: an empty filesystem). Returns its fs dir."""
        sid = self._insert_active(key, parent)
        try:
            (self._dir(sid) / "fs").mkdir(parents=True)
            (self._dir(sid) / "work").mkdir()
        except OSError as exc:
            self._delete_row(key)
            shutil.rmtree(self._dir(sid), ignore_errors=True)
            raise MachineError(f"cannot create snapshot {key!r}: {exc}") from exc
        return self._dir(sid) / "fs"

    def populate(self, key: str, like: str) -> set[str]:
        """Fill the fs dir of the active, unmounted snapshot ``key`` with that
        of the committed ``like``, which has the same parent: the start of a
        step built from an earlier run of itself (snapshotter.clone). Returns
        the paths of the regular files that a writer may keep. On failure the
        fs dir is left empty again."""
        sid, parent, kind, _ = self._row(key)
        like_sid, like_parent, like_kind, _ = self._row(like)
        if kind != "active" or like_kind != "committed" or like_parent != parent:
            raise SnapshotStateError(
                f"cannot populate {key!r} from {like!r}: expected an active "
                "snapshot and a committed one on the same parent"
            )
        fs = self._dir(sid) / "fs"
        try:
            return link_tree(str(self._dir(like_sid) / "fs"), str(fs))
        except OSError as exc:
            shutil.rmtree(fs, ignore_errors=True)
            fs.mkdir(exist_ok=True)
            raise MachineError(f"cannot populate {key!r} from {like!r}: {exc}") from exc

    def commit(self, key: str, name: str) -> None:
        """Make the active snapshot ``key`` committed under ``name``.

        If ``name`` is already committed, another build made the same thing:
        ``key`` is removed and the call returns normally.
        """
        try:
            with self._lock:
                cur = self._db.execute(
                    """
                    UPDATE snapshots
                    SET name = ?, kind = 'committed', created = ?,
                        owner_pid = NULL, owner_start = NULL
                    WHERE name = ? AND kind = 'active'
                    """,
                    (name, time.time(), key),
                )
        except sqlite3.IntegrityError:
            if self._row(name)[2] != "committed":
                raise SnapshotExists(
                    f"cannot commit {key!r} as {name!r}: {name!r} is active"
                ) from None
            log.debug("snapshot %r already committed; dropping %r", name, key)
            self.remove(key)
            return
        if cur.rowcount != 1:
            if self._row(key)[2] != "active":
                raise SnapshotStateError(
                    f"cannot commit {key!r}: it is committed; expected active"
                )

    def remove(self, name: str) -> None:
        """Remove a snapshot without children (and, if active, not mounted)."""
        sid, _, kind, _ = self._row(name)
        if kind == "active" and self._mounted_upper(sid):
            raise SnapshotStateError(f"cannot remove {name!r}: it is mounted")
        if not self._delete_row(name):
            if self.exists(name):
                raise SnapshotStateError(f"cannot remove {name!r}: it has children")
            raise SnapshotNotFound(f"snapshot {name!r} not found")
        self._remove_dir(sid)

    def _delete_row(self, name: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                """
                DELETE FROM snapshots WHERE name = ?1
                AND NOT EXISTS (SELECT 1 FROM snapshots WHERE parent = ?1)
                """,
                (name,),
            )
        return cur.rowcount == 1

    def _remove_dir(self, sid: str) -> None:
        """Delete a snapshot's directories; its row is already gone."""
        for path in (self._dir(sid), self.snapshots_dir / f"new-{sid}"):
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # The row is gone, so nothing can use the directory, and
                # cleanup_stale removes it later: not worth failing for.
                log.warning("cannot remove snapshot directory %s: %s", path, exc)

    def create_committed(
        self, name: str, parent: str | None, fill: Callable[[Path], None]
    ) -> None:
        """Create the committed snapshot ``name`` whose fs dir ``fill`` writes
        (for a base layer: fill applies it). Atomic: on any failure, nothing is
        left. If ``name`` exists already, ``fill`` is not called."""
        if self.exists(name):
            return
        key = f"create-{secrets.token_hex(8)}"
        sid = self._insert_active(key, parent)
        staging = self.snapshots_dir / f"new-{sid}"
        try:
            (staging / "fs").mkdir(parents=True)
            (staging / "work").mkdir()
            fill(staging / "fs")
            os.rename(staging, self._dir(sid))
            self.commit(key, name)
        except BaseException:
            if self._delete_row(key):
                self._remove_dir(sid)
            raise

    # ------------------------------------------------------------- mounts

    def mount(self, key: str, target: Path) -> None:
        """Mount the active snapshot ``key`` read-write at ``target``."""
        chain = self._chain_ids(key)
        sid = chain[-1][1]
        if self._row(key)[2] != "active":
            raise SnapshotStateError(
                f"cannot mount {key!r} read-write: it is committed"
            )
        lowers = [f"{i}/fs" for _, i in reversed(chain[:-1])] or [_EMPTY]
        upper = self._dir(sid)
        extra = f"upperdir={upper}/fs,workdir={upper}/work"
        self._mount_overlay(target, lowers, extra, 0)

    def view(self, name: str, target: Path) -> None:
        """Mount the committed snapshot ``name`` read-only at ``target``."""
        chain = self._chain_ids(name)
        if self._row(name)[2] != "committed":
            raise SnapshotStateError(f"cannot view {name!r}: it is active")
        lowers = [f"{i}/fs" for _, i in reversed(chain)]
        if len(lowers) == 1:
            lowers.append(_EMPTY)  # an overlay without upperdir needs two lowers
        self._mount_overlay(target, lowers, "", _MS_RDONLY)

    def unmount(self, target: Path, *, detach: bool = False) -> None:
        try:
            _umount(Path(target), _MNT_DETACH if detach else 0)
        except OSError as exc:
            raise MountError(f"cannot unmount {target}: {exc.strerror}") from exc

    def _mount_overlay(
        self, target: Path, lowers: list[str], extra: str, flags: int
    ) -> None:
        if len(lowers) > _MAX_STACK:
            raise MountError(
                f"cannot mount {target}: {len(lowers)} layers; overlay allows "
                f"{_MAX_STACK}"
            )
        options = [*self.overlay_options(), *([extra] if extra else [])]
        absolute = ":".join(str(self.snapshots_dir / p) for p in lowers)
        data = ",".join([f"lowerdir={absolute}", *options])
        if len(data) < _PAGE_SIZE:
            try:
                _mount("overlay", target, "overlay", flags, data)
            except OSError as exc:
                raise MountError(
                    f"cannot mount overlay at {target}: {exc.strerror}"
                ) from exc
            return
        data = ",".join([f"lowerdir={':'.join(lowers)}", *options])
        if len(data) >= _PAGE_SIZE:
            raise MountError(
                f"cannot mount {target}: {len(lowers)} layers exceed overlay's "
                "option length"
            )
        done = subprocess.run(
            [sys.executable, "-c", _MOUNT_HELPER, str(target), data, str(flags)],
            cwd=self.snapshots_dir,
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip().splitlines()
            raise MountError(
                f"cannot mount overlay at {target}: {reason[-1] if reason else '?'}"
            )

    def overlay_options(self) -> tuple[str, ...]:
        """The options every overlay mount gets, probed once by a real mount."""
        with self._lock:
            if self._options is None:
                self._options = self._probe()
            return self._options

    def _probe(self) -> tuple[str, ...]:
        tmp = Path(
            tempfile.mkdtemp(dir=self.snapshots_dir, prefix=f"probe-{os.getpid()}-")
        )
        try:
            for d in ("lower", "upper", "work", "merged"):
                (tmp / d).mkdir()
            base = f"lowerdir={tmp}/lower,upperdir={tmp}/upper,workdir={tmp}/work"

            def accepted(options: tuple[str, ...]) -> bool:
                try:
                    _mount(
                        "overlay",
                        tmp / "merged",
                        "overlay",
                        0,
                        ",".join([base, *options]),
                    )
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise MountError(
                            f"overlayfs unusable under {self.snapshots_dir}: "
                            f"{exc.strerror}"
                        ) from exc
                    return False
                _umount(tmp / "merged")
                return True

            if overlay_in_user_namespace():
                if accepted(_USERNS_OPTIONS):
                    return _USERNS_OPTIONS
                raise MountError(
                    f"overlayfs refuses userxattr under {self.snapshots_dir}: "
                    "rootless builds need Linux >= 5.11"
                )
            if accepted(_PROBED_OPTIONS):
                return _PROBED_OPTIONS
            if not accepted(()):
                raise MountError(
                    f"overlayfs refuses a plain mount under {self.snapshots_dir}"
                )
            return tuple(o for o in _PROBED_OPTIONS if accepted((o,)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _mounted_upper(self, sid: str) -> list[Path]:
        """Mount points of overlays whose upperdir is snapshot ``sid``'s fs."""
        needle = f"upperdir={self._dir(sid)}/fs"
        return [
            point
            for point, fstype, options in _mounts()
            if fstype == "overlay" and needle in options.split(",")
        ]

    # ------------------------------------------------------------ cleanup

    def cleanup_stale(self) -> int:
        """Remove what crashed builds left: active snapshots whose process is
        gone (unmounting them first), staging and probe directories, and
        directories without a row. Returns how many snapshot directories went."""
        removed = 0
        with self._lock:
            actives = self._db.execute(
                "SELECT name, id, owner_pid, owner_start FROM snapshots "
                "WHERE kind = 'active'"
            ).fetchall()
        for name, sid, pid, start in actives:
            if _owner_alive(pid, start):
                continue
            for point in self._mounted_upper(sid):
                with contextlib.suppress(OSError):  # gone in the meantime
                    _umount(point, _MNT_DETACH)
            with self._lock:
                cur = self._db.execute(
                    "DELETE FROM snapshots WHERE name = ? AND kind = 'active' "
                    "AND owner_pid IS ? AND owner_start IS ?",
                    (name, pid, start),
                )
            if cur.rowcount == 1:
                self._remove_dir(sid)
                removed += 1
        # Directories first, ids second: see the theory of operation.
        entries = os.listdir(self.snapshots_dir)
        with self._lock:
            ids = {r[0] for r in self._db.execute("SELECT id FROM snapshots")}
        for entry in entries:
            path = self.snapshots_dir / entry
            if entry == _EMPTY:
                continue
            if entry.startswith("probe-"):
                pid_text = entry.split("-")[1]
                if pid_text.isdigit() and _process_start(int(pid_text)) is not None:
                    continue
                with contextlib.suppress(OSError):  # not mounted: the usual case
                    _umount(path / "merged", _MNT_DETACH)
            elif entry.removeprefix("new-") in ids:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        return removed
