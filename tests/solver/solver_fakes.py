"""A fake worker and helpers for the solver's tests.

Vertices are ``step(name, *inputs)``: an ExecOp whose only argument is the name,
so tests read as graphs of names. The context is ``context()``, the one vertex
the fake worker does not cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import trio
import trio.testing

from solver.cachestore import CacheStore
from solver.graph import ContextSource, ExecOp, Vertex, VertexMeta
from solver.progress import Event
from solver.worker import LogSink


def step(name: str, *inputs: Vertex, ignore_cache: bool = False) -> Vertex:
    meta = VertexMeta(name=name, ignore_cache=ignore_cache)
    return Vertex(ExecOp(args=(name,)), tuple(inputs), meta)


def context() -> Vertex:
    return Vertex(ContextSource(), (), VertexMeta(name="context"))


def name_of(vertex: Vertex) -> str:
    if isinstance(vertex.op, ExecOp):
        return vertex.op.args[0]
    return vertex.meta.name


class FakeWorker:
    """Executes nothing real; records what the solver asked of it.

    ``gates[name]``: execute waits for the event first. ``failures[name]``:
    execute raises it (after the gate). ``on_cancel[name]``: raised instead of
    Cancelled, as a worker whose killed process fails would. Cleanup after a
    cancellation takes 10 s of (mock) time, shielded, as killing a process does.
    """

    def __init__(self) -> None:
        self.contents: dict[str, str | None] = {}
        self.checksum_failures: dict[str, Exception] = {}
        self.gates: dict[str, trio.Event] = {}
        self.failures: dict[str, Exception] = {}
        self.on_cancel: dict[str, Exception] = {}
        self.executed: list[str] = []
        self.inputs_seen: dict[str, list[str]] = {}
        self.running: set[str] = set()
        self.max_running = 0
        self.cleaned: list[str] = []
        self.results: set[str] = set()

    async def content_checksum(self, vertex: Vertex) -> str | None:
        await trio.lowlevel.checkpoint()
        name = name_of(vertex)
        if name in self.checksum_failures:
            raise self.checksum_failures[name]
        return self.contents.get(name)

    async def exists(self, result: str) -> bool:
        await trio.lowlevel.checkpoint()
        return result in self.results

    async def exists_many(self, results: Collection[str]) -> set[str]:
        await trio.lowlevel.checkpoint()
        return {r for r in results if r in self.results}

    async def execute(self, vertex: Vertex, inputs: Sequence[str], log: LogSink) -> str:
        name = name_of(vertex)
        self.executed.append(name)
        self.inputs_seen[name] = list(inputs)
        self.running.add(name)
        self.max_running = max(self.max_running, len(self.running))
        try:
            await log(1, f"running {name}\n".encode())
            if name in self.gates:
                await self.gates[name].wait()
            if name in self.failures:
                raise self.failures[name]
            result = f"{name}#{len(self.executed)}"
            self.results.add(result)
            return result
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(10)
            self.cleaned.append(name)
            if name in self.on_cancel:
                raise self.on_cancel[name] from None
            raise
        finally:
            self.running.discard(name)

    def cacheable(self, vertex: Vertex) -> bool:
        return not isinstance(vertex.op, ContextSource)


class Events:
    """A reporter that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[str]:
        return [name_of(e.vertex) for e in self.events if isinstance(e, kind)]


async def settle() -> None:
    """Return once every task is blocked and no cache call is in a thread:
    wait_all_tasks_blocked alone counts a task waiting for a thread as blocked."""
    threads = trio.to_thread.current_default_thread_limiter()
    await trio.testing.wait_all_tasks_blocked()
    while threads.borrowed_tokens:
        await trio.testing.wait_all_tasks_blocked()


def run(fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn`` under trio with a clock that jumps whenever all tasks wait.

    No deadline guards against a hang: the cache calls run in real threads, and
    the jumping clock would count a task waiting for one as idle and fire it.
    pytest's faulthandler_timeout reports a hung test instead.
    """
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def open_db(path: Path) -> sqlite3.Connection:
    """A connection as buildpy opens it: WAL, autocommit, any thread."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=30.0
    )
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    assert mode == "wal"
    return conn


@contextmanager
def cache_store(path: Path) -> Iterator[CacheStore]:
    conn = open_db(path)
    try:
        store = CacheStore(conn)
        store.init_schema()
        yield store
    finally:
        conn.close()
