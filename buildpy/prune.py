"""What the store holds, and taking cache out of it: ``buildpy du``, ``buildpy
prune`` and the cap of ``--max-storage``.

Theory of operation
-------------------
Three things take space under the state root: snapshots (snapshots/), blobs
(blobs/sha256/) and the database. What must stay is reached from two kinds of
roots:

- a cache record keeps its result snapshot and, through the parent chain,
  every snapshot below it;
- a tagged image keeps its manifest, config and layer blobs (an index keeps
  its manifests), and, unless ``--all``, the snapshots its layers were
  unpacked into (``layer-<chain id>``), so that the next build on it need not
  unpack again.

A committed snapshot reached from no root is removed, leaves first (the
snapshotter refuses to remove a parent). A blob is kept when a tagged image
names it, when it is the layer of a kept snapshot, or a compressed variant of
such a layer; the rest is removed. Active snapshots belong to running builds
and are never touched.

Eviction removes records, least recently used first, and then collects what
they alone kept. It runs only while no build runs on the store: every build
holds ``locks/builds`` shared (``building``), and eviction takes it exclusive
(``buildpy prune`` waits for it; the cap after a build only tries, and leaves
the work to the last build that ends). A record that a build holds is thus
never evicted; the per-key USE locks of solver.keylock are checked as well, for
a daemon that keeps one process running across builds.

Sizes are apparent sizes (st_size) of every file and directory, counting hard
links once, which is what ``du -sb`` adds up: ``buildpy du``'s total agrees
with it. A snapshot can share files with another (an incremental COPY links
the unchanged files of its last run's result, snapshotter.clone): its size in
``buildpy du`` counts them, and what removing it frees does not, which is what
the cap subtracts as it evicts and what ``du`` calls reclaimable.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildpy.engine import LAYER_PREFIX, Engine, chain_ids
from solver.cachestore import CacheRecord
from solver.keylock import KeyLocks

MEDIA_INDEXES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


def tree_size(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Apparent size of ``path`` and everything below it, as ``du -sb``
    counts: every entry's st_size, a hard-linked file once."""
    seen = set() if seen is None else seen
    total = 0
    for st in _stats(path):
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            ident = (st.st_dev, st.st_ino)
            if ident in seen:
                continue
            seen.add(ident)
        total += st.st_size
    return total


def freed_size(*paths: Path) -> int:
    """What removing ``paths`` frees, as ``du -sb`` counts it: their
    ``tree_size``, but a file that has names elsewhere too (a snapshot's files
    that an incremental COPY linked into a later one, snapshotter.clone) is
    left out, since it stays."""
    total = 0
    # (st_dev, st_ino) of a file with several names -> [names seen here,
    # names in all, size]
    linked: dict[tuple[int, int], list[int]] = {}
    for path in paths:
        for st in _stats(path):
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                names = linked.setdefault(ident, [0, st.st_nlink, st.st_size])
                names[0] += 1
                continue
            total += st.st_size
    return total + sum(size for here, nlink, size in linked.values() if here >= nlink)


def _stats(path: Path) -> Iterator[os.stat_result]:
    """The lstat of ``path`` and of every entry below it; entries removed
    meanwhile are no longer there, and left out."""
    try:
        yield os.lstat(path)
    except FileNotFoundError:
        return
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                yield os.lstat(os.path.join(top, name))
            except FileNotFoundError:
                continue


# --- the builds lock --------------------------------------------------------------


def _builds_lock(engine: Engine) -> int:
    directory = engine.root / "locks"
    directory.mkdir(exist_ok=True)
    return os.open(directory / "builds", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


@contextmanager
def building(engine: Engine) -> Iterator[None]:
    """Held (shared) by every build while it runs: eviction waits for it."""
    fd = _builds_lock(engine)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextmanager
def no_builds(engine: Engine, *, wait: bool) -> Iterator[bool]:
    """Hold the builds lock exclusively: yields False (without it) when a build
    runs and ``wait`` is False."""
    fd = _builds_lock(engine)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# --- what is there --------------------------------------------------------------


@dataclass
class Snapshot:
    name: str
    sid: str
    parent: str | None
    kind: str
    size: int = 0


@dataclass
class Usage:
    """What ``buildpy du`` shows."""

    records: list[tuple[CacheRecord, int]]  # record, its own snapshot's size
    snapshots: int  # bytes of snapshots/
    record_snapshots: int  # bytes of snapshots that are records' results
    blobs: int  # bytes of blobs/
    database: int
    total: int  # of the whole root: what du -sb says
    reclaimable: int = 0  # bytes that prune (without --all) would free
    names: dict[str, str] = field(default_factory=dict)  # key -> step name


def _snapshots(engine: Engine) -> dict[str, Snapshot]:
    with engine.snapshots._lock:  # noqa: SLF001 (the snapshotter's statement lock)
        rows = engine.state.db.execute(
            "SELECT name, id, parent, kind FROM snapshots"
        ).fetchall()
    return {row[0]: Snapshot(*row) for row in rows}


def _sizes(engine: Engine, snaps: dict[str, Snapshot]) -> None:
    for snap in snaps.values():
        snap.size = tree_size(engine.snapshots.snapshots_dir / snap.sid)


def usage(engine: Engine) -> Usage:
    snaps = _snapshots(engine)
    _sizes(engine, snaps)
    records = engine.cache.records()
    per_record = [
        (r, snaps[r.result].size if r.result in snaps else 0) for r in records
    ]
    db = sum(tree_size(p) for p in engine.root.glob("buildpy.db*") if p.is_file())
    # What `buildpy prune` would free: every record out, tagged images kept.
    plan = _plan(engine, snaps, set(), keep_layers=True)
    snapshots_dir = engine.snapshots.snapshots_dir
    return Usage(
        records=per_record,
        snapshots=tree_size(snapshots_dir),
        record_snapshots=sum(size for _, size in per_record),
        blobs=tree_size(engine.root / "blobs"),
        database=db,
        total=tree_size(engine.root),
        reclaimable=freed_size(*(snapshots_dir / s.sid for s in plan.snapshots))
        + sum(_blob_size(engine, d) for d in plan.blobs),
        names={r.key: r.origin.name for r in records if r.origin and r.origin.name},
    )


# --- what may go ------------------------------------------------------------------


@dataclass
class _Garbage:
    snapshots: list[Snapshot]  # leaves first
    blobs: list[str]


def _image_roots(engine: Engine) -> tuple[set[str], set[str]]:
    """(blobs, layer snapshot names) that tagged images need."""
    blobs: set[str] = set()
    layers: set[str] = set()
    for record in engine.images.list():
        _image_blobs(engine, record.digest, blobs, layers)
    return blobs, layers


def _image_blobs(
    engine: Engine, digest: str, blobs: set[str], layers: set[str]
) -> None:
    if digest in blobs or not engine.content.has(digest):
        return
    blobs.add(digest)
    doc: dict[str, Any] = engine.images.read_json(digest)
    if doc.get("mediaType") in MEDIA_INDEXES or "manifests" in doc:
        for child in doc.get("manifests", []):
            _image_blobs(engine, child["digest"], blobs, layers)
        return
    config = doc.get("config", {}).get("digest")
    if config:
        blobs.add(config)
    blobs.update(layer["digest"] for layer in doc.get("layers", []))
    if config and engine.content.has(config):
        diff_ids = engine.images.read_json(config).get("rootfs", {}).get("diff_ids", [])
        blobs.update(diff_ids)  # uncompressed layers of pulled images, if kept
        layers.update(
            LAYER_PREFIX + c.removeprefix("sha256:") for c in chain_ids(list(diff_ids))
        )


def _plan(
    engine: Engine, snaps: dict[str, Snapshot], keep_keys: set[str], keep_layers: bool
) -> _Garbage:
    """What goes when only the records ``keep_keys`` are kept."""
    image_blobs, image_layers = _image_roots(engine)
    roots = {r.result for r in engine.cache.records() if r.key in keep_keys}
    roots |= {s.name for s in snaps.values() if s.kind == "active"}
    if keep_layers:
        roots |= image_layers
    live: set[str] = set()
    for name in roots:
        while name is not None and name in snaps and name not in live:
            live.add(name)
            name = snaps[name].parent  # type: ignore[assignment]
    dead = [s for s in snaps.values() if s.name not in live and s.kind == "committed"]
    dead.sort(key=lambda s: _depth(s, snaps), reverse=True)
    keep_blobs = set(image_blobs)
    with engine.images._lock:  # noqa: SLF001 (the image store's statement lock)
        rows = engine.state.db.execute(
            "SELECT snapshot, diff_id FROM layers WHERE diff_id IS NOT NULL"
        ).fetchall()
        live_diffs = {d for s, d in rows if s in live} | image_blobs
        keep_blobs |= live_diffs
        variants = engine.state.db.execute(
            "SELECT diff_id, digest FROM layer_variants"
        ).fetchall()
    keep_blobs |= {digest for diff_id, digest in variants if diff_id in live_diffs}
    blobs = [d for d in engine.content.digests() if d not in keep_blobs]
    return _Garbage(dead, blobs)


def _depth(snap: Snapshot, snaps: dict[str, Snapshot]) -> int:
    depth = 0
    while snap.parent is not None and snap.parent in snaps:
        snap = snaps[snap.parent]
        depth += 1
    return depth


def _blob_size(engine: Engine, digest: str) -> int:
    try:
        return engine.content.size(digest)
    except OSError:
        return 0


# --- prune ------------------------------------------------------------------------


@dataclass
class PruneResult:
    records: int = 0
    snapshots: int = 0
    blobs: int = 0
    freed: int = 0
    skipped_held: int = 0


def prune(
    engine: Engine,
    *,
    all_: bool = False,
    keep_storage: int | None = None,
    until: float | None = None,
    now: float | None = None,
) -> PruneResult:
    """Evict records (see the module docstring) and collect what they kept.

    Without ``keep_storage`` every record goes (``until``: every record last
    used more than that many seconds ago). With it, records go least recently
    used first until the store is at most that many bytes. The caller holds
    ``no_builds``.
    """
    now = time.time() if now is None else now
    locks = KeyLocks(engine.root / "locks")
    snaps = _snapshots(engine)  # sizes unread: what goes is measured as it goes
    result = PruneResult()
    records = engine.cache.records()  # least recently used first
    if until is not None:
        records = [r for r in records if r.last_used <= now - until]
    kept = {r.key for r in engine.cache.records()}
    if keep_storage is None:
        for record in records:
            _evict(engine, locks, record, kept, result)
        _collect(engine, snaps, kept, not all_, result)
        return result
    total = tree_size(engine.root)
    if total > keep_storage:
        total -= _collect(engine, snaps, kept, not all_, result)
    for record in records:
        if total <= keep_storage:
            break
        if _evict(engine, locks, record, kept, result):
            total -= _collect(engine, snaps, kept, not all_, result)
    return result


def _evict(
    engine: Engine,
    locks: KeyLocks,
    record: CacheRecord,
    kept: set[str],
    result: PruneResult,
) -> bool:
    with locks.evicting(record.key) as free:
        if not free:
            result.skipped_held += 1
            return False
        engine.cache.remove(record.key)
    kept.discard(record.key)
    result.records += 1
    return True


def _collect(
    engine: Engine,
    snaps: dict[str, Snapshot],
    kept: set[str],
    keep_layers: bool,
    result: PruneResult,
) -> int:
    """Remove what only evicted records kept; returns the bytes freed."""
    garbage = _plan(engine, snaps, kept, keep_layers)
    freed = 0
    for snap in garbage.snapshots:
        # Measured now, one removal after another: a file this snapshot shares
        # with another that goes too is counted when its last name goes.
        freed += freed_size(engine.snapshots.snapshots_dir / snap.sid)
        engine.snapshots.remove(snap.name)
        del snaps[snap.name]
        result.snapshots += 1
    with engine.images._lock:  # noqa: SLF001 (the image store's statement lock)
        engine.state.db.executemany(
            "DELETE FROM layers WHERE snapshot = ?",
            [(s.name,) for s in garbage.snapshots],
        )
    for digest in garbage.blobs:
        freed += _blob_size(engine, digest)
        engine.content.delete(digest)
        result.blobs += 1
    result.freed += freed
    return freed


def enforce_max_storage(engine: Engine, max_storage: int) -> PruneResult | None:
    """The cap after a build: evict least recently used records until the store
    fits, unless another build runs (then the last one to end does it)."""
    with no_builds(engine, wait=False) as alone:
        if not alone:
            return None
        return prune(engine, keep_storage=max_storage)
