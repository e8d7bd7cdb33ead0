"""Cache records: which result a cache key stands for, in the shared database.

The solver owns the ``cache_records`` table of the one SQLite database that
buildpy opens (WAL mode, autocommit, ``check_same_thread=False``) and hands in.
Every method is one statement or a short read-only sequence, guarded by this
store's own lock because the scheduler calls it from worker threads; SQLite's own
locking keeps concurrent builds (other connections, other processes) apart.

Beside each record the store keeps what its key was computed from (the op's
digest, the input keys as a JSON array, the content checksum: a
``cachekey.KeyOrigin``, with the op's encoding, the step's name and the
per-file detail of a context copy), so that a miss can be explained by the
nearest earlier record: ``explain_miss`` says what differs from it, down to the
file, the build arg or the base image digest (solver.explain).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from solver import explain
from solver.cachekey import KeyOrigin, cache_key, key_origin
from solver.errors import SolveError
from solver.graph import Vertex

# T: whatever a guarded database call returns.
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_records (
    key TEXT PRIMARY KEY,      -- the cache key (solver.cachekey)
    result TEXT NOT NULL,      -- the worker's opaque result for it
    created REAL NOT NULL,     -- time.time() of the first put
    last_used REAL NOT NULL,   -- time.time() of the last put or touch
    op_digest TEXT,            -- KeyOrigin: sha256 of the op's encoding
    input_keys TEXT,           -- KeyOrigin: JSON array of the input keys
    content TEXT,              -- KeyOrigin: the content checksum, or NULL
    op TEXT,                   -- KeyOrigin: the op's encoding (JSON), explanation only
    name TEXT,                 -- KeyOrigin: the step's name, explanation only
    detail TEXT                -- KeyOrigin: per-file detail (JSON), explanation only
);
CREATE INDEX IF NOT EXISTS cache_records_op_digest ON cache_records(op_digest);
CREATE INDEX IF NOT EXISTS cache_records_input_keys ON cache_records(input_keys);
"""

# Keys per SELECT ... IN (...): below SQLite's default limit of bound variables.
_BATCH = 500

# Columns added after the first release of the table, added in place to an older
# database by init_schema (they only serve explanations: NULL is fine).
_ADDED_COLUMNS = ("op", "name", "detail")

_COLUMNS = (
    "key, result, created, last_used, op_digest, input_keys, content, op, name, detail"
)

# The answers of explain_miss that need no detail; the rest are built by
# solver.explain, which these names are re-exported from.
MISS_RESULT_GONE = explain.RESULT_GONE
MISS_CONTENT = explain.CONTENT
MISS_INPUT = explain.INPUT
MISS_INSTRUCTION = explain.INSTRUCTION
MISS_NO_RECORD = explain.NO_RECORD


class CacheStoreError(SolveError):
    """The database failed (the machine's fault: disk full, locked, corrupt)."""


@dataclass(frozen=True)
class CacheRecord:
    key: str
    result: str
    created: float
    last_used: float
    origin: KeyOrigin | None  # None for records put without one


@dataclass(frozen=True)
class Miss:
    """Why a key has no usable record (one line), and ``earlier``: the most
    recently used record of the same op on the same inputs that read other
    content (files of the context it copies changed), which a worker may
    build the new result from (buildpy.worker), or None."""

    reason: str
    earlier: CacheRecord | None


class CacheStore:
    """The cache records in ``conn``; call ``init_schema()`` once before use."""

    def __init__(
        self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._lock = threading.Lock()

    def _guarded(self, what: str, call: Callable[[], T]) -> T:
        with self._lock:
            try:
                return call()
            except sqlite3.Error as exc:
                raise CacheStoreError(f"cache records: cannot {what}: {exc}") from exc

    def init_schema(self) -> None:
        self._guarded("create the table", lambda: self._conn.executescript(_SCHEMA))
        have = {
            row[1]
            for row in self._guarded(
                "read the table's columns",
                lambda: self._conn.execute(
                    "PRAGMA table_info(cache_records)"
                ).fetchall(),
            )
        }
        for column in _ADDED_COLUMNS:
            if column not in have:
                self._guarded(
                    f"add the column {column}",
                    lambda column=column: self._conn.execute(  # type: ignore[misc]
                        f"ALTER TABLE cache_records ADD COLUMN {column} TEXT"
                    ),
                )

    def get(self, key: str) -> str | None:
        """The result recorded for ``key``, or None."""
        row = self._guarded(
            f"read {key}",
            lambda: self._conn.execute(
                "SELECT result FROM cache_records WHERE key = ?", (key,)
            ).fetchone(),
        )
        return None if row is None else str(row[0])

    def put(self, key: str, result: str, origin: KeyOrigin | None = None) -> None:
        """Record ``result`` for ``key``, replacing an earlier one; ``created``
        stays that of the first record."""
        now = self._clock()
        params: tuple[Any, ...] = (key, result, now, now, *_origin_columns(origin))
        self._guarded(
            f"write {key}",
            lambda: self._conn.execute(
                f"INSERT INTO cache_records ({_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET result = excluded.result,"
                " last_used = excluded.last_used, op_digest = excluded.op_digest,"
                " input_keys = excluded.input_keys, content = excluded.content,"
                " op = excluded.op, name = excluded.name, detail = excluded.detail",
                params,
            ),
        )

    def get_many(self, keys: Collection[str]) -> dict[str, str]:
        """The results recorded for those of ``keys`` that have a record."""
        found: dict[str, str] = {}
        keys = list(keys)
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            rows = self._guarded(
                f"read {len(batch)} records",
                lambda batch=batch, marks=marks: self._conn.execute(
                    f"SELECT key, result FROM cache_records WHERE key IN ({marks})",
                    batch,
                ).fetchall(),
            )
            found.update((str(k), str(r)) for k, r in rows)
        return found

    def touch_many(self, keys: Collection[str]) -> None:
        """Mark the records of ``keys`` used now: a statement per batch of keys,
        each its own transaction (the connection is in autocommit mode)."""
        now = self._clock()
        keys = list(keys)
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            self._guarded(
                f"touch {len(batch)} records",
                lambda batch=batch, marks=marks: self._conn.execute(
                    f"UPDATE cache_records SET last_used = ? WHERE key IN ({marks})",
                    [now, *batch],
                ),
            )

    def touch(self, key: str) -> None:
        """Mark the record of ``key`` used now (pruning keeps recent records)."""
        now = self._clock()
        self._guarded(
            f"touch {key}",
            lambda: self._conn.execute(
                "UPDATE cache_records SET last_used = ? WHERE key = ?", (now, key)
            ),
        )

    def remove(self, key: str) -> None:
        self._guarded(
            f"remove {key}",
            lambda: self._conn.execute(
                "DELETE FROM cache_records WHERE key = ?", (key,)
            ),
        )

    def records(self) -> list[CacheRecord]:
        """Every record, least recently used first."""
        rows = self._guarded(
            "list the records",
            lambda: self._conn.execute(
                f"SELECT {_COLUMNS} FROM cache_records ORDER BY last_used, key"
            ).fetchall(),
        )
        return [_record(row) for row in rows]

    def record(self, key: str) -> CacheRecord | None:
        """The whole record of ``key``, or None."""
        row = self._guarded(
            f"read {key}",
            lambda: self._conn.execute(
                f"SELECT {_COLUMNS} FROM cache_records WHERE key = ?", (key,)
            ).fetchone(),
        )
        return None if row is None else _record(row)

    def explain_miss(
        self,
        vertex: Vertex,
        input_keys: Sequence[str],
        content: str | None,
        detail: dict[str, list[str]] | None = None,
        build_args: Collection[str] = (),
    ) -> str:
        """Why no usable record exists for the key of ``vertex``, in one line
        (``miss``'s reason)."""
        return self.miss(vertex, input_keys, content, detail, build_args).reason

    def miss(
        self,
        vertex: Vertex,
        input_keys: Sequence[str],
        content: str | None,
        detail: dict[str, list[str]] | None = None,
        build_args: Collection[str] = (),
    ) -> Miss:
        """Why no usable record exists for the key of ``vertex``, and the
        earlier run a worker may build on.

        The nearest earlier record is, in this order: the same key (its result
        is gone); the same op and inputs (so the content differs); the same op
        (an input differs); the same inputs, for a vertex that has some (the
        instruction differs: a step edited in place on the same parent); the
        same step name (several parts differ). The most recently used one
        wins. What differs from it is said by solver.explain: the files, the
        build args (``build_args`` names them; other variables are "env"),
        the base image digest, the parent step, the instruction.
        """
        origin = key_origin(vertex, input_keys, content, detail)
        key = cache_key(vertex, input_keys, content)
        if self.get(key) is not None:
            inputs = json.dumps(list(origin.input_keys))
            earlier = self._latest(
                "op_digest = ? AND input_keys = ? AND content IS NOT ?",
                (origin.op_digest, inputs, origin.content),
            )
            return Miss(MISS_RESULT_GONE, earlier)
        nearest = self._nearest(origin)
        if nearest is None or nearest.origin is None:
            return Miss(MISS_NO_RECORD, None)
        reason = explain.describe(
            vertex, origin, nearest.origin, self._input_op, build_args
        )
        # No record has this key, so one of the same op on the same inputs
        # (the nearest's first kind) read other content.
        same_run = (nearest.origin.op_digest, nearest.origin.input_keys) == (
            origin.op_digest,
            origin.input_keys,
        )
        return Miss(reason, nearest if same_run else None)

    def _nearest(self, origin: KeyOrigin) -> CacheRecord | None:
        inputs = json.dumps(list(origin.input_keys))
        probes: list[tuple[str, tuple[Any, ...]]] = [
            ("op_digest = ? AND input_keys = ?", (origin.op_digest, inputs)),
            ("op_digest = ?", (origin.op_digest,)),
        ]
        if origin.input_keys:
            probes.append(("input_keys = ?", (inputs,)))
        if origin.name:
            probes.append(("name = ?", (origin.name,)))
        for where, params in probes:
            record = self._latest(where, params)
            if record is not None:
                return record
        return None

    def _latest(self, where: str, params: tuple[Any, ...]) -> CacheRecord | None:
        row = self._guarded(
            "look for an earlier record",
            lambda: self._conn.execute(
                f"SELECT {_COLUMNS} FROM cache_records WHERE {where}"
                " ORDER BY last_used DESC LIMIT 1",
                params,
            ).fetchone(),
        )
        return None if row is None else _record(row)

    def _input_op(self, key: str) -> dict[str, Any] | None:
        """The op encoding recorded for an (old) input key, if any."""
        record = self.record(key)
        return None if record is None or record.origin is None else record.origin.op


def _origin_columns(origin: KeyOrigin | None) -> tuple[Any, ...]:
    if origin is None:
        return (None,) * 6
    return (
        origin.op_digest,
        json.dumps(list(origin.input_keys)),
        origin.content,
        None if origin.op is None else json.dumps(origin.op, sort_keys=True),
        origin.name,
        None if origin.detail is None else json.dumps(origin.detail, sort_keys=True),
    )


def _record(row: tuple[Any, ...]) -> CacheRecord:
    key, result, created, last_used, op_dig, inputs, content, op, name, detail = row
    origin = None
    if op_dig is not None and inputs is not None:
        origin = KeyOrigin(
            op_dig,
            tuple(json.loads(inputs)),
            content,
            op=None if op is None else json.loads(op),
            name=name or "",
            detail=None if detail is None else json.loads(detail),
        )
    return CacheRecord(key, result, created, last_used, origin)
