"""The scheduler: solve a build graph on one Trio nursery.

Theory of operation
-------------------
A solve has two phases, each on its own nursery.

1. Keys. Every vertex gets its cache key before anything runs. The worker's
   content checksums do not depend on each other, so all of them are fetched at
   once; then the keys are computed in topological order, inputs first
   (``key(v) = cache_key(v, [key(i) for i in v.inputs], checksum(v))``).

2. Resolution. Resolving a vertex means getting its result, from a cache record
   (a *hit*) or by executing its op. It is driven from the final vertices
   down. Each vertex has at most one *flight* per solve: a task, keyed by
   digest, that the first reader to need the vertex starts and every later
   reader joins by waiting on its Event. So a vertex shared by many readers is
   resolved once, and independent inputs resolve at the same time.

   A flight first looks up the record of its key (a cacheable vertex without
   ``meta.ignore_cache`` only), and accepts it when ``worker.exists`` still
   accepts its result. On a hit the flight ends: the vertex's inputs are not
   resolved, since a cached result needs no input results. They are only
   *probed*: looked up, never executed, so that a display can show every step
   whose record is still there as cached. On a miss, with
   ``fail_on_cache_miss`` the flight raises CacheMiss; otherwise it starts its
   inputs' flights, waits for all of them, executes the op inside the ``jobs``
   limiter and records the result under the key (cacheable vertices only; the
   context is never recorded and always executed).

   Lookups are memoised per digest too, so a vertex that is both probed and
   resolved is looked up, and reported cached, once.

   A vertex that reads content (files of the context) and misses may still
   have a record of an earlier run on the same inputs that read other
   content. When the worker has the optional ``execute_from``, it gets that
   run (its result and per-file detail) and may build the new result from
   it, rewriting only what changed: the rebuild after one file of a large
   context changed copies that file, not the context.

Failure. Every task catches its own exceptions, so that nothing but Cancelled
ever reaches the nursery (and solve() never raises a MultiError). The first
failure is kept, wrapped in VertexFailed (a CacheMiss is kept as it is: it
already names its vertex and has its own exit code), reported as VertexError,
and the nursery is cancelled. Trio 0.22's ``cancel()`` takes no reason, so the
solve keeps the reason itself ("canceled: <step> failed") and every vertex that
was executing reports VertexCanceled with it. Later failures, usually caused by
the cancellation, are dropped. solve() raises the kept failure only after the
nursery has exited, that is after every task has finished its cleanup.
Cancellation from outside and KeyboardInterrupt pass through unchanged.

Before resolution, the records of every vertex that may be looked up are read
in one batch (with their USE locks taken, so that no eviction removes them
meanwhile) and checked with one ``worker.exists_many``; each batched answer is
used once, and a second lookup of the same key (after waiting for another
build's RUN lock) asks the store again. The records a solve used are touched
in one batch at its end.

The cache store is SQLite: every call to it runs in ``trio.to_thread``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from solver.cachekey import cache_key, key_origin
from solver.cachestore import CacheStore, Miss
from solver.errors import CacheMiss, SolveError, VertexFailed
from solver.graph import BuildGraph, Vertex
from solver.keylock import RUN, USE, KeyLocks
from solver.progress import (
    Event,
    Reporter,
    VertexCached,
    VertexCanceled,
    VertexDone,
    VertexError,
    VertexLog,
    VertexStarted,
    VertexWaiting,
    discard,
)
from solver.worker import EarlierRun, Worker

log = logging.getLogger("solver")

# The reason executing vertices report when the cancellation came from outside.
CANCELED_FROM_OUTSIDE = "build canceled"
MISS_IGNORED = "cache disabled for this step (--no-cache)"
MISS_FILTERED = "cache disabled for its stage (--no-cache-filter)"
MISS_IGNORED_INPUT = "an input step runs again (--no-cache-filter)"


@dataclass
class VertexRecord:
    """What happened to one vertex in a solve.

    ``started``/``ended`` are time.time() values of its execution, None when it
    was cached. ``miss_reason`` says why a cacheable vertex ran (see
    CacheStore.explain_miss); None when it was cached or is never cached.
    """

    vertex: Vertex
    key: str
    cached: bool
    result: str
    started: float | None
    ended: float | None
    miss_reason: str | None = None


@dataclass
class SolveResult:
    results: dict[str, str]  # vertex digest -> result, for every vertex resolved
    records: dict[str, VertexRecord]  # vertex digest -> record
    graph: BuildGraph | None = None  # what was solved
    keys: dict[str, str] = field(default_factory=dict)  # digest -> cache key

    def result(self, vertex: Vertex) -> str:
        try:
            return self.results[vertex.digest]
        except KeyError:
            raise KeyError(
                f"{vertex!r} was not resolved in this solve (a cached reader does "
                "not resolve its inputs)"
            ) from None


class Solver:
    """Solves build graphs with one worker and one cache store.

    ``jobs`` bounds how many vertices execute at once, across every solve of
    this solver (None: no bound). ``fail_on_cache_miss`` turns every execution
    of a cacheable vertex into a CacheMiss. ``no_cache_stages`` (--no-cache-filter)
    ignores the records of the vertices of those stages and of every vertex that
    reads one, as ``meta.ignore_cache`` (--no-cache) does for a single vertex.
    ``build_args`` names the build args the user set, so that a miss calls a
    changed one a build arg. ``locks`` (solver.keylock) makes a key run once
    across solves and processes, and keeps the records a solve uses from
    eviction; without it only this solve's flights deduplicate.
    """

    def __init__(
        self,
        worker: Worker,
        cache: CacheStore,
        reporter: Reporter = discard,
        jobs: int | None = None,
        fail_on_cache_miss: bool = False,
        *,
        no_cache_stages: Collection[str] = (),
        build_args: Collection[str] = (),
        locks: KeyLocks | None = None,
    ) -> None:
        if jobs is not None and jobs < 1:
            raise ValueError(f"jobs must be at least 1 or None, got {jobs}")
        self.worker = worker
        self.cache = cache
        self.reporter = reporter
        self.limiter = trio.CapacityLimiter(jobs) if jobs is not None else None
        self.fail_on_cache_miss = fail_on_cache_miss
        self.no_cache_stages = frozenset(no_cache_stages)
        self.build_args = frozenset(build_args)
        self.locks = locks

    async def solve(self, *finals: Vertex) -> SolveResult:
        """Resolve ``finals`` (and whatever they need); see the module docstring.

        Raises VertexFailed for the first vertex that failed, CacheMiss with
        ``fail_on_cache_miss``.
        """
        run = _Solve(self, BuildGraph(*finals))
        try:
            await run.run()
        finally:
            run.release()
        return run.result()

    async def dry_run(self, *finals: Vertex) -> SolveResult:
        """Which vertices a solve would take from the cache and which it would
        run (with the reason), running none: ``records`` has an entry for every
        vertex the solve would need, ``cached`` saying which; results of the
        vertices that would run are "". Content checksums are computed (they
        read the context), and hits are reported as VertexCached."""
        run = _Solve(self, BuildGraph(*finals))
        try:
            await run.plan()
        finally:
            run.release()
        return run.result()


def _name(vertex: Vertex) -> str:
    return vertex.meta.name or f"{vertex.op.kind} {vertex.digest[7:19]}"


@dataclass
class _Flight:
    """One resolution (or lookup) of one vertex, which later callers join."""

    done: trio.Event = field(default_factory=trio.Event)
    result: str | None = None  # set before ``done``


def _joined(flight: _Flight) -> str:
    """The result of a flight whose ``done`` was set."""
    assert flight.result is not None, "a flight is done only with a result"
    return flight.result


class _Solve:
    """The state of one solve() call."""

    def __init__(self, solver: Solver, graph: BuildGraph) -> None:
        self.solver = solver
        self.worker = solver.worker
        self.graph = graph
        self.contents: dict[str, str | None] = {}
        self.details: dict[str, dict[str, list[str]] | None] = {}
        self.keys: dict[str, str] = {}
        self.ignored: set[str] = set()  # digests whose records are not read
        self.held: list[int] = []  # fds of the USE locks this solve holds
        self.held_keys: set[str] = set()
        self.records: dict[str, VertexRecord] = {}
        self.flights: dict[str, _Flight] = {}
        self.lookups: dict[str, _Flight] = {}
        # Records looked up before resolution (key -> usable result, or None for
        # none), each used once: a later lookup of the key asks the store again.
        self.prefetched: dict[str, str | None] = {}
        self.touched: list[str] = []  # keys of the records this solve used
        self.probed: set[str] = set()
        self.failure: SolveError | None = None
        self.cancel_reason = CANCELED_FROM_OUTSIDE
        self.nursery: trio.Nursery | None = None

    def report(self, event: Event) -> None:
        self.solver.reporter(event)

    def result(self) -> SolveResult:
        return SolveResult(
            results={d: r.result for d, r in self.records.items()},
            records=dict(self.records),
            graph=self.graph,
            keys=dict(self.keys),
        )

    def release(self) -> None:
        """Let go of the records this solve used (eviction may take them)."""
        while self.held:
            KeyLocks.release(self.held.pop())

    async def run(self) -> None:
        await self._keys()
        await self._prefetch()
        # Phase 2: resolve the finals; flights start their inputs as needed.
        await self._in_nursery(self._start_finals)
        await self._touch()

    async def _keys(self) -> None:
        # Phase 1: content checksums, all at once, then keys, inputs first.
        await self._in_nursery(self._start_checksums)
        stages = self.solver.no_cache_stages
        for vertex in self.graph.topological():
            input_keys = [self.keys[i.digest] for i in vertex.inputs]
            content = self.contents[vertex.digest]
            self.keys[vertex.digest] = cache_key(vertex, input_keys, content)
            # A reader of a vertex that runs again must run again too: its
            # key is the same, but the result it was recorded on is not used.
            if (
                vertex.meta.ignore_cache
                or (stages and vertex.meta.stage in stages)
                or any(i.digest in self.ignored for i in vertex.inputs)
            ):
                self.ignored.add(vertex.digest)

    async def plan(self) -> None:
        """dry_run(): phase 1, then a walk from the finals that only looks up."""
        await self._keys()
        await self._prefetch()
        for final in self.graph.finals:
            await self._plan(final)
        await self._touch()

    async def _plan(self, vertex: Vertex) -> None:
        if vertex.digest in self.records:
            return
        if await self._lookup(vertex) is not None:
            for inp in self.graph.inputs(vertex):
                await self._probe_task(inp)
            return
        for inp in self.graph.inputs(vertex):
            await self._plan(inp)
        input_keys = [self.keys[i.digest] for i in vertex.inputs]
        cacheable = self.worker.cacheable(vertex)
        reason = await self._miss_reason(vertex, input_keys, cacheable)
        self.records[vertex.digest] = VertexRecord(
            vertex, self.keys[vertex.digest], False, "", None, None, reason
        )

    async def _prefetch(self) -> None:
        """Look up the records of every vertex that may be looked up, at once.

        One thread hop for all of them instead of three per vertex: on a fully
        cached rebuild the hops were most of the solve. A key whose USE lock is
        not free at once (an eviction holds it) is left to the one-by-one path,
        which waits for it."""
        locks = self.solver.locks
        keys: list[str] = []
        for vertex in self.graph.topological():
            if not self.worker.cacheable(vertex) or vertex.digest in self.ignored:
                continue
            key = self.keys[vertex.digest]
            if key in self.held_keys:
                continue
            if locks is not None:
                fd = locks.try_lock(key, USE, shared=True)
                if fd is None:
                    continue
                self.held_keys.add(key)
                self.held.append(fd)
            keys.append(key)
        if not keys:
            return
        found = await trio.to_thread.run_sync(self.solver.cache.get_many, keys)
        usable = await self.worker.exists_many(set(found.values()))
        for key in keys:
            result = found.get(key)
            self.prefetched[key] = result if result in usable else None

    async def _touch(self) -> None:
        if self.touched:
            await trio.to_thread.run_sync(self.solver.cache.touch_many, self.touched)
            self.touched = []

    async def _in_nursery(self, start: Callable[[], None]) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            start()
        self.nursery = None
        if self.failure is not None:
            cause = (
                self.failure.cause if isinstance(self.failure, VertexFailed) else None
            )
            raise self.failure from cause

    def _start_checksums(self) -> None:
        for vertex in self.graph.topological():
            self._spawn(vertex, self._checksum, vertex)

    def _start_finals(self) -> None:
        for final in self.graph.finals:
            self._flight(final)

    # --- tasks and failure --------------------------------------------------------

    def _spawn(
        self, vertex: Vertex, fn: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        assert self.nursery is not None, "tasks start only inside a phase"
        self.nursery.start_soon(self._guard, vertex, fn, *args)

    async def _guard(
        self, vertex: Vertex, fn: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        # Exception, not BaseException: Cancelled and KeyboardInterrupt must pass.
        # Anything else a step raises is that step's failure, kept with its vertex.
        try:
            await fn(*args)
        except Exception as exc:
            self._fail(vertex, exc)

    def _fail(self, vertex: Vertex, exc: Exception) -> None:
        if self.failure is not None:
            log.debug("dropping a later failure of %s: %r", _name(vertex), exc)
            return
        self.failure = exc if isinstance(exc, CacheMiss) else VertexFailed(vertex, exc)
        self.cancel_reason = f"canceled: {_name(vertex)} failed"
        self.report(VertexError(vertex, time.time(), exc))
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    # --- phase 1 ------------------------------------------------------------------

    async def _checksum(self, vertex: Vertex) -> None:
        self.contents[vertex.digest] = await self.worker.content_checksum(vertex)
        # Optional in the Worker protocol: per-file detail for explanations.
        detail = getattr(self.worker, "content_detail", None)
        self.details[vertex.digest] = None if detail is None else detail(vertex)

    # --- phase 2: flights -----------------------------------------------------------

    def _flight(self, vertex: Vertex) -> _Flight:
        flight = self.flights.get(vertex.digest)
        if flight is None:
            flight = self.flights[vertex.digest] = _Flight()
            self._spawn(vertex, self._resolve, vertex, flight)
        return flight

    async def _resolve(self, vertex: Vertex, flight: _Flight) -> None:
        hit = await self._lookup(vertex)
        if hit is not None:
            for inp in self.graph.inputs(vertex):
                self._probe(inp)
            flight.result = hit
            flight.done.set()
            return
        cacheable = self.worker.cacheable(vertex)
        if cacheable and self.solver.fail_on_cache_miss:
            input_keys = [self.keys[i.digest] for i in vertex.inputs]
            reason = await self._miss_reason(vertex, input_keys, cacheable)
            raise CacheMiss(vertex, reason)
        # Start every input's flight before waiting for any, so they overlap.
        joined = [self._flight(inp) for inp in self.graph.inputs(vertex)]
        for input_flight in joined:
            await input_flight.done.wait()
        input_results = [_joined(input_flight) for input_flight in joined]
        locks = self.solver.locks
        if not cacheable or locks is None:
            flight.result = await self._execute(vertex, input_results, cacheable)
        else:
            flight.result = await self._execute_once(vertex, input_results, locks)
        flight.done.set()

    async def _execute_once(
        self, vertex: Vertex, inputs: Sequence[str], locks: KeyLocks
    ) -> str:
        """Execute under the key's RUN lock; a build that held it before us may
        have recorded the result meanwhile, and then we take it."""
        key = self.keys[vertex.digest]
        fd = locks.try_lock(key, RUN, shared=False)
        if fd is None:
            self.report(VertexWaiting(vertex, time.time()))
            # Wait as a reader: when the holder is done, every waiter wakes at
            # once and looks the record up beside the others. Waiting for the
            # lock itself made nine of ten concurrent builds read the record one
            # after another (40 ms on two cores).
            locks.release(await locks.lock(key, RUN, shared=True))
            hit = await self._recorded(vertex)
            if hit is not None:
                return hit
            fd = await locks.lock(key, RUN, shared=False)  # the holder failed
        try:
            hit = await self._recorded(vertex)
            if hit is not None:
                return hit
            return await self._execute(vertex, inputs, True)
        finally:
            locks.release(fd)

    async def _recorded(self, vertex: Vertex) -> str | None:
        """The result of a record that another build wrote for ``vertex`` since it
        was looked up, taken as a hit is."""
        if vertex.digest in self.ignored:
            return None
        hit = await self._find_record(vertex)
        if hit is not None:
            for inp in self.graph.inputs(vertex):
                self._probe(inp)
        return hit

    async def _lookup(self, vertex: Vertex) -> str | None:
        """The result of a usable record for ``vertex``, reported cached once."""
        memo = self.lookups.get(vertex.digest)
        if memo is not None:
            await memo.done.wait()
            return memo.result
        memo = self.lookups[vertex.digest] = _Flight()
        memo.result = await self._find_record(vertex)
        memo.done.set()
        return memo.result

    async def _find_record(self, vertex: Vertex) -> str | None:
        if not self.worker.cacheable(vertex) or vertex.digest in self.ignored:
            return None
        key = self.keys[vertex.digest]
        await self._hold(key)
        if key in self.prefetched:
            result = self.prefetched.pop(key)
            if result is None:
                return None
        else:
            result = await trio.to_thread.run_sync(self.solver.cache.get, key)
            if result is None:
                return None
            if not await self.worker.exists(result):
                log.debug("record of %s names a result that is gone", _name(vertex))
                return None
        self.touched.append(key)
        self.report(VertexCached(vertex, time.time()))
        self.records[vertex.digest] = VertexRecord(
            vertex, key, True, result, None, None
        )
        return result

    async def _hold(self, key: str) -> None:
        """Take the key's USE lock for the rest of the solve (once per key)."""
        locks = self.solver.locks
        if locks is None or key in self.held_keys:
            return
        self.held_keys.add(key)
        self.held.append(await locks.lock(key, USE, shared=True))

    def _probe(self, vertex: Vertex) -> None:
        if vertex.digest in self.probed or vertex.digest in self.flights:
            return
        self.probed.add(vertex.digest)
        self._spawn(vertex, self._probe_task, vertex)

    async def _probe_task(self, vertex: Vertex) -> None:
        # Stops at the first vertex without a usable record: nothing needs it.
        if await self._lookup(vertex) is not None:
            for inp in self.graph.inputs(vertex):
                self._probe(inp)

    # --- phase 2: execution -----------------------------------------------------

    async def _execute(
        self, vertex: Vertex, inputs: Sequence[str], cacheable: bool
    ) -> str:
        key = self.keys[vertex.digest]
        input_keys = [self.keys[i.digest] for i in vertex.inputs]
        content = self.contents[vertex.digest]
        reason, earlier = await self._miss(vertex, input_keys, cacheable)

        async def sink(stream: int, data: bytes) -> None:
            self.report(VertexLog(vertex, stream, data, time.time()))

        async with AsyncExitStack() as stack:
            if self.solver.limiter is not None:
                await stack.enter_async_context(self.solver.limiter)
            started, clock = time.time(), trio.current_time()
            self.report(VertexStarted(vertex, started, reason))
            try:
                if earlier is None:
                    result = await self.worker.execute(vertex, inputs, sink)
                else:
                    result = await self.worker.execute_from(  # type: ignore[attr-defined]
                        vertex, inputs, sink, earlier
                    )
            except (trio.Cancelled, KeyboardInterrupt):
                self.report(VertexCanceled(vertex, time.time(), self.cancel_reason))
                raise
            ended = time.time()
            self.report(VertexDone(vertex, ended, trio.current_time() - clock))
        if cacheable:
            detail = self.details.get(vertex.digest)
            origin = key_origin(vertex, input_keys, content, detail)
            await trio.to_thread.run_sync(self.solver.cache.put, key, result, origin)
        self.records[vertex.digest] = VertexRecord(
            vertex, key, False, result, started, ended, reason
        )
        return result

    async def _miss_reason(
        self, vertex: Vertex, input_keys: Sequence[str], cacheable: bool
    ) -> str | None:
        reason, _ = await self._miss(vertex, input_keys, cacheable)
        return reason

    async def _miss(
        self, vertex: Vertex, input_keys: Sequence[str], cacheable: bool
    ) -> tuple[str | None, EarlierRun | None]:
        """Why ``vertex`` runs (None when it is never cached), and an earlier
        run of it on the same inputs that read other content, for a worker
        that can build on one (``execute_from``)."""
        if not cacheable:
            return None, None
        if vertex.meta.ignore_cache:
            return MISS_IGNORED, None
        if vertex.digest in self.ignored:
            if vertex.meta.stage in self.solver.no_cache_stages:
                return MISS_FILTERED, None
            return MISS_IGNORED_INPUT, None
        content = self.contents[vertex.digest]
        miss: Miss = await trio.to_thread.run_sync(
            partial(
                self.solver.cache.miss,
                vertex,
                input_keys,
                content,
                self.details.get(vertex.digest),
                self.solver.build_args,
            )
        )
        record = miss.earlier
        if (
            content is None
            or record is None
            or record.origin is None
            or record.origin.detail is None
            or not hasattr(self.worker, "execute_from")
        ):
            return miss.reason, None
        return miss.reason, EarlierRun(record.result, record.origin.detail)
