"""Identical vertices of two solves on one store run once: the per-key locks of
solver.keylock, on fake ops that block on trio events."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import trio

from solver.cachekey import cache_key
from solver.keylock import RUN, USE, KeyLocks
from solver.progress import VertexCached, VertexStarted, VertexWaiting
from solver.scheduler import Solver
from tests.solver.solver_fakes import Events, FakeWorker, cache_store, run, settle, step


def test_two_solves_on_one_store_run_a_shared_vertex_once(tmp_path: Path) -> None:
    db, locks = tmp_path / "buildpy.db", KeyLocks(tmp_path / "locks")
    worker = FakeWorker()
    first_events, second_events = Events(), Events()
    final = step("final", step("base"))

    async def main() -> None:
        worker.gates["base"] = trio.Event()
        with cache_store(db) as one, cache_store(db) as two:
            first = Solver(worker, one, reporter=first_events, locks=locks)
            second = Solver(worker, two, reporter=second_events, locks=locks)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first.solve, final)
                await settle()
                assert worker.running == {"base"}
                nursery.start_soon(second.solve, final)
                while "base" not in second_events.of(VertexWaiting):
                    await settle()
                worker.gates["base"].set()

    run(main)
    assert worker.executed == ["base", "final"]
    assert first_events.of(VertexStarted) == ["base", "final"]
    assert second_events.of(VertexStarted) == []
    assert sorted(second_events.of(VertexCached)) == ["base", "final"]


def test_a_dead_holder_does_not_block(tmp_path: Path) -> None:
    db, locks = tmp_path / "buildpy.db", KeyLocks(tmp_path / "locks")
    worker = FakeWorker()
    base = step("base")
    locks.directory.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'a');"
            " fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True);"
            " sys.stdin.read()",
            str(locks.path(cache_key(base, [], None), RUN)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"

        def reporter(event: object) -> None:
            # The holder dies (SIGKILL) while this solve waits for it.
            if isinstance(event, VertexWaiting):
                holder.kill()
                holder.wait()

        async def main() -> None:
            with cache_store(db) as store:
                await Solver(worker, store, reporter=reporter, locks=locks).solve(base)

        run(main)
        assert holder.returncode == -9
        assert worker.executed == ["base"]
    finally:
        holder.kill()
        holder.wait()


def test_a_held_record_cannot_be_evicted(tmp_path: Path) -> None:
    locks = KeyLocks(tmp_path / "locks")
    key = "sha256:" + "1" * 64
    fd = locks.try_lock(key, USE, shared=True)
    assert fd is not None
    with locks.evicting(key) as free:
        assert not free
    locks.release(fd)
    with locks.evicting(key) as free:
        assert free
    assert not locks.path(key, USE).exists() and not locks.path(key, RUN).exists()
    # A later holder locks a new file, not the unlinked one.
    fd = locks.try_lock(key, USE, shared=True)
    assert fd is not None and locks.path(key, USE).exists()
    locks.release(fd)


def test_a_solve_holds_the_records_it_used_until_it_ends(tmp_path: Path) -> None:
    db, locks = tmp_path / "buildpy.db", KeyLocks(tmp_path / "locks")
    worker = FakeWorker()
    base = step("base")
    final = step("final", base)
    key = cache_key(base, [], None)

    async def main() -> None:
        with cache_store(db) as store:
            await Solver(worker, store, locks=locks).solve(base)
            worker.gates["final"] = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(Solver(worker, store, locks=locks).solve, final)
                await settle()
                assert worker.running == {"final"}
                with locks.evicting(key) as free:
                    assert not free  # base was used by the running solve
                worker.gates["final"].set()
            with locks.evicting(key) as free:
                assert free

    run(main)


def test_a_cancelled_wait_never_keeps_the_lock(tmp_path: Path) -> None:
    """The waiting thread is abandoned on cancel; when it gets the lock later,
    it drops it, so the next build can take it."""
    locks = KeyLocks(tmp_path / "locks")
    key = "sha256:" + "2" * 64
    holder = locks.try_lock(key, RUN, shared=False)
    assert holder is not None

    async def main() -> int | None:
        with trio.move_on_after(0.2) as scope:
            await locks.lock(key, RUN, shared=False)
        assert scope.cancelled_caught  # the holder never let go
        locks.release(holder)  # the abandoned thread gets the lock, and drops it
        for _ in range(500):
            fd = locks.try_lock(key, RUN, shared=False)
            if fd is not None:
                return fd
            await trio.sleep(0.01)
        return None

    fd = trio.run(main)
    assert fd is not None
    locks.release(fd)


class _SlowLookups(FakeWorker):
    """A worker sharing another's results, whose record lookups (``exists``)
    wait for ``gate``; ``looking`` is set once one does."""

    def __init__(self, results: set[str]) -> None:
        super().__init__()
        self.results = results
        self.looking = trio.Event()
        self.gate = trio.Event()

    async def exists(self, result: str) -> bool:
        self.looking.set()
        await self.gate.wait()
        return await super().exists(result)


def test_the_waiters_of_a_step_read_its_record_side_by_side(tmp_path: Path) -> None:
    """Two builds that waited for a step a third one ran look its record up at
    the same time, neither holding the step's lock: in turn, nine waiters of ten
    concurrent builds added their lookups up one after another."""
    db, locks = tmp_path / "buildpy.db", KeyLocks(tmp_path / "locks")
    worker = FakeWorker()
    waiters = [_SlowLookups(worker.results) for _ in range(2)]
    events = [Events() for _ in waiters]
    base = step("base")

    async def main() -> None:
        worker.gates["base"] = trio.Event()
        with ExitStack() as stack:
            stores = [stack.enter_context(cache_store(db)) for _ in range(3)]
            first = Solver(worker, stores[0], locks=locks)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first.solve, base)
                await settle()
                for waiter, store, seen in zip(
                    waiters, stores[1:], events, strict=True
                ):
                    solver = Solver(waiter, store, reporter=seen, locks=locks)
                    nursery.start_soon(solver.solve, base)
                    while "base" not in seen.of(VertexWaiting):
                        await settle()
                worker.gates["base"].set()
                # Real time: the mock clock would count waits in threads as idle.
                for _ in range(500):
                    if all(waiter.looking.is_set() for waiter in waiters):
                        break
                    await trio.to_thread.run_sync(time.sleep, 0.01)
                assert [waiter.looking.is_set() for waiter in waiters] == [True, True]
                for waiter in waiters:
                    waiter.gate.set()

    run(main)
    assert worker.executed == ["base"]
    assert [seen.of(VertexCached) for seen in events] == [["base"], ["base"]]
