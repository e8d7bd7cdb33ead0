"""Cache records: which result a cache key stands for, in the shared database.

The solver owns the ``cache_records`` table of the one SQLite database that
buildpy opens (WAL mode, autocommit, ``check_same_thread=False``) and hands in.
Every method is one statement or a short read-only sequence, guarded by this
store's own lock because the scheduler calls it from worker threads; SQLite's own
locking keeps concurrent builds (other connections, other processes) apart.

Beside each record the store keeps what its key was computed from (the op's
digest, the input keys as a JSON array, the content checksum: a
``cachekey.KeyOrigin``), so that a miss can be explained by the nearest earlier
record: ``explain_miss`` says which part of the key changed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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
    content TEXT               -- KeyOrigin: the content checksum, or NULL
);
CREATE INDEX IF NOT EXISTS cache_records_op_digest ON cache_records(op_digest);
CREATE INDEX IF NOT EXISTS cache_records_input_keys ON cache_records(input_keys);
"""

_COLUMNS = "key, result, created, last_used, op_digest, input_keys, content"

# The answers of explain_miss, nearest record first.
MISS_RESULT_GONE = "its earlier result no longer exists"
MISS_CONTENT = "content of the files it reads changed"
MISS_INPUT = "input step changed"
MISS_INSTRUCTION = "instruction changed"
MISS_NO_RECORD = "no earlier record"


class CacheStoreError(SolveError):
    """The database failed (the machine's fault: disk full, locked, corrupt)."""


@dataclass(frozen=True)
class CacheRecord:
    key: str
    result: str
    created: float
    last_used: float
    origin: KeyOrigin | None  # None for records put without one


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
        inputs = None if origin is None else json.dumps(list(origin.input_keys))
        params: tuple[Any, ...] = (
            key,
            result,
            now,
            now,
            None if origin is None else origin.op_digest,
            inputs,
            None if origin is None else origin.content,
        )
        self._guarded(
            f"write {key}",
            lambda: self._conn.execute(
                f"INSERT INTO cache_records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET result = excluded.result,"
                " last_used = excluded.last_used, op_digest = excluded.op_digest,"
                " input_keys = excluded.input_keys, content = excluded.content",
                params,
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

    def explain_miss(
        self, vertex: Vertex, input_keys: Sequence[str], content: str | None
    ) -> str:
        """Why no usable record exists for the key of ``vertex``: one of the
        ``MISS_*`` phrases, from the nearest earlier record.

        Nearest means, in this order: the same key (its result is gone); the
        same op and inputs (so the content differs); the same op (an input
        differs); the same inputs, for a vertex that has some (the instruction
        differs: a step edited in place on the same parent).
        """
        origin = key_origin(vertex, input_keys, content)
        inputs = json.dumps(list(origin.input_keys))
        key = cache_key(vertex, input_keys, content)
        if self.get(key) is not None:
            return MISS_RESULT_GONE
        probes: list[tuple[str, str, tuple[Any, ...]]] = [
            (
                MISS_CONTENT,
                "op_digest = ? AND input_keys = ?",
                (origin.op_digest, inputs),
            ),
            (MISS_INPUT, "op_digest = ?", (origin.op_digest,)),
        ]
        if origin.input_keys:
            probes.append((MISS_INSTRUCTION, "input_keys = ?", (inputs,)))
        for reason, where, params in probes:
            if self._exists(where, params):
                return reason
        return MISS_NO_RECORD

    def _exists(self, where: str, params: tuple[Any, ...]) -> bool:
        row = self._guarded(
            "look for an earlier record",
            lambda: self._conn.execute(
                f"SELECT 1 FROM cache_records WHERE {where} LIMIT 1", params
            ).fetchone(),
        )
        return row is not None


def _record(row: tuple[Any, ...]) -> CacheRecord:
    key, result, created, last_used, op_dig, inputs, content = row
    origin = None
    if op_dig is not None and inputs is not None:
        origin = KeyOrigin(op_dig, tuple(json.loads(inputs)), content)
    return CacheRecord(key, result, created, last_used, origin)
