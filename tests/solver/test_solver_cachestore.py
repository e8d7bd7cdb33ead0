"""CacheStore on a real SQLite file in WAL mode, as buildpy opens it."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from solver.cachekey import KeyOrigin, cache_key, key_origin, op_digest
from solver.cachestore import (
    MISS_CONTENT,
    MISS_INSTRUCTION,
    MISS_NO_RECORD,
    MISS_RESULT_GONE,
    CacheStore,
    CacheStoreError,
)
from solver.graph import ExecOp, ScratchSource, Vertex, VertexMeta
from tests.solver.solver_fakes import cache_store, open_db

PARENT = "sha256:" + "1" * 64
OTHER_PARENT = "sha256:" + "2" * 64


def test_put_get_touch_remove(tmp_path: Path) -> None:
    now = [100.0]
    conn = open_db(tmp_path / "buildpy.db")
    try:
        store = CacheStore(conn, clock=lambda: now[0])
        store.init_schema()
        store.init_schema()  # idempotent: every build calls it
        assert store.get("sha256:k") is None
        store.put("sha256:k", "snap-1")
        now[0] = 200.0
        store.put("sha256:k", "snap-2")  # replaces, keeps created
        now[0] = 300.0
        store.touch("sha256:k")
        [record] = store.records()
        assert (record.key, record.result) == ("sha256:k", "snap-2")
        assert (record.created, record.last_used) == (100.0, 300.0)
        assert record.origin is None
        store.remove("sha256:k")
        assert store.get("sha256:k") is None and store.records() == []
    finally:
        conn.close()


def test_records_keep_their_origin(store: CacheStore) -> None:
    vertex = Vertex(ExecOp(args=("make",)), (Vertex(ScratchSource()),))
    origin = key_origin(vertex, [PARENT], "xxh3:1")
    store.put("sha256:k", "snap-1", origin)
    [record] = store.records()
    assert record.origin == origin


def test_two_connections_see_each_others_records(tmp_path: Path) -> None:
    path = tmp_path / "buildpy.db"
    with cache_store(path) as first, cache_store(path) as second:
        first.put("sha256:a", "snap-a")
        assert second.get("sha256:a") == "snap-a"
        second.remove("sha256:a")
        assert first.get("sha256:a") is None


def test_concurrent_writers_from_threads_and_connections(tmp_path: Path) -> None:
    path = tmp_path / "buildpy.db"
    with cache_store(path) as first, cache_store(path) as second:
        errors: list[BaseException] = []

        def write(store: CacheStore, prefix: str) -> None:
            try:
                for i in range(100):
                    store.put(f"sha256:{prefix}{i}", f"snap-{prefix}{i}")
                    assert store.get(f"sha256:{prefix}{i}") == f"snap-{prefix}{i}"
            except BaseException as exc:  # reported by the test thread below
                errors.append(exc)

        threads = [
            threading.Thread(target=write, args=(store, f"{name}{n}-"))
            for store, name in ((first, "a"), (second, "b"))
            for n in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(first.records()) == len(second.records()) == 400


def test_a_database_error_names_what_failed(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "buildpy.db", isolation_level=None)
    try:
        store = CacheStore(conn)  # no init_schema: the table is missing
        with pytest.raises(
            CacheStoreError, match="cannot read sha256:k: no such table"
        ):
            store.get("sha256:k")
    finally:
        conn.close()


def make(args: str, parent: str = PARENT) -> tuple[Vertex, list[str]]:
    base = Vertex(ExecOp(args=("base",)), meta=VertexMeta(name="[1/2] RUN base"))
    meta = VertexMeta(name=f"[2/2] RUN {args}")
    return Vertex(ExecOp(args=(args,)), (base,), meta), [parent]


def record(store: CacheStore, vertex: Vertex, inputs: list[str], content: str) -> None:
    key = cache_key(vertex, inputs, content)
    store.put(key, "snap", key_origin(vertex, inputs, content))


def test_explain_miss_names_the_part_that_changed(store: CacheStore) -> None:
    vertex, inputs = make("make")
    assert store.explain_miss(vertex, inputs, "xxh3:1") == MISS_NO_RECORD
    record(store, vertex, inputs, "xxh3:1")
    assert store.explain_miss(vertex, inputs, "xxh3:1") == MISS_RESULT_GONE
    assert store.explain_miss(vertex, inputs, "xxh3:2") == MISS_CONTENT
    assert (
        store.explain_miss(vertex, [OTHER_PARENT], "xxh3:1")
        == 'parent step "[1/2] RUN base" changed'
    )
    edited, _ = make("make install")
    assert (
        store.explain_miss(edited, inputs, "xxh3:1")
        == f'{MISS_INSTRUCTION} (was "RUN make")'
    )
    # Only the name links an edited step on a changed parent to its record.
    assert store.explain_miss(edited, [OTHER_PARENT], "xxh3:1") == MISS_NO_RECORD


def test_an_old_record_without_detail_gets_the_short_phrases(store: CacheStore) -> None:
    vertex, inputs = make("make")
    key = cache_key(vertex, inputs, "xxh3:1")
    store.put(key, "snap", KeyOrigin(op_digest(vertex), tuple(inputs), "xxh3:1"))
    assert store.explain_miss(vertex, inputs, "xxh3:2") == MISS_CONTENT
    edited, _ = make("make install")
    assert store.explain_miss(edited, inputs, "xxh3:1") == MISS_INSTRUCTION


def test_a_new_source_has_no_earlier_record(store: CacheStore) -> None:
    # Sources have no inputs: another source is not "the same step edited".
    old = Vertex(ScratchSource())
    record(store, old, [], "")
    new = Vertex(ExecOp(args=("x",)))
    assert store.explain_miss(new, [], None) == MISS_NO_RECORD
