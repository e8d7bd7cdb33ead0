"""The scheduler against a fake worker: concurrency, dedupe, cache, failure."""

from __future__ import annotations

import pytest
import trio

from solver.cachestore import MISS_CONTENT, MISS_NO_RECORD, CacheStore
from solver.errors import CacheMiss, ExecutionError, VertexFailed
from solver.progress import (
    VertexCached,
    VertexCanceled,
    VertexDone,
    VertexError,
    VertexLog,
    VertexStarted,
)
from solver.scheduler import CANCELED_FROM_OUTSIDE, MISS_IGNORED, Solver, SolveResult
from tests.solver.solver_fakes import Events, FakeWorker, context, run, settle, step


def diamond():
    """final <- (left, right) <- base: base is read by two vertices."""
    base = step("base")
    left = step("left", base)
    right = step("right", step("base"))  # an equal vertex built separately
    return step("final", left, right)


def test_independent_vertices_run_at_the_same_time(store: CacheStore) -> None:
    worker = FakeWorker()
    names = ["a", "b", "c"]
    final = step("final", *(step(n) for n in names))

    async def main() -> None:
        for n in names:
            worker.gates[n] = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Solver(worker, store).solve, final)
            await settle()
            assert worker.running == set(names)
            for n in names:
                worker.gates[n].set()
        assert worker.executed[-1] == "final"

    run(main)
    assert worker.max_running == 3


def test_jobs_limits_how_many_run_at_once(store: CacheStore) -> None:
    worker = FakeWorker()
    names = ["a", "b", "c"]
    final = step("final", *(step(n) for n in names))

    async def main() -> None:
        for n in names:
            worker.gates[n] = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Solver(worker, store, jobs=2).solve, final)
            await settle()
            assert len(worker.running) == 2
            first = sorted(worker.running)[0]
            worker.gates[first].set()
            await settle()
            assert worker.running == set(names) - {first}
            for n in names:
                worker.gates[n].set()

    run(main)
    assert worker.max_running == 2
    assert sorted(worker.executed) == sorted([*names, "final"])


def test_jobs_must_be_positive(store: CacheStore) -> None:
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        Solver(FakeWorker(), store, jobs=0)


def test_a_vertex_shared_by_two_readers_executes_once(store: CacheStore) -> None:
    worker = FakeWorker()
    final = diamond()
    result: list[SolveResult] = []

    async def main() -> None:
        result.append(await Solver(worker, store).solve(final))

    run(main)
    assert worker.executed.count("base") == 1
    assert (worker.executed[0], worker.executed[-1]) == ("base", "final")
    base_result = result[0].result(step("base"))
    assert worker.inputs_seen["left"] == worker.inputs_seen["right"] == [base_result]
    assert len(result[0].records) == 4


def test_second_solve_executes_nothing_and_reports_all_cached(
    store: CacheStore,
) -> None:
    worker = FakeWorker()
    events = Events()
    final = diamond()
    results: list[SolveResult] = []

    async def main() -> None:
        results.append(await Solver(worker, store).solve(final))
        worker.executed.clear()
        results.append(await Solver(worker, store, reporter=events).solve(final))

    run(main)
    assert worker.executed == []
    assert sorted(events.of(VertexCached)) == ["base", "final", "left", "right"]
    assert events.of(VertexStarted) == []
    first, second = results
    assert second.results == first.results
    assert all(r.cached and r.started is None for r in second.records.values())


def test_changed_content_reruns_that_vertex_and_its_readers(
    store: CacheStore,
) -> None:
    worker = FakeWorker()
    copy = step("copy", step("base"), context())
    other = step("other", step("base"))
    final = step("final", step("run", copy), other)
    results: list[SolveResult] = []

    async def main() -> None:
        worker.contents["copy"] = "xxh3:1111"
        await Solver(worker, store).solve(final)
        worker.executed.clear()
        worker.contents["copy"] = "xxh3:2222"
        results.append(await Solver(worker, store).solve(final))

    run(main)
    assert sorted(worker.executed) == ["context", "copy", "final", "run"]
    records = results[0].records
    by_name = {r.vertex.meta.name: r for r in records.values()}
    assert by_name["other"].cached and by_name["base"].cached
    assert by_name["copy"].miss_reason == MISS_CONTENT
    assert by_name["run"].miss_reason == 'parent step "copy" changed'
    assert by_name["context"].miss_reason is None  # never cached, nothing to explain


def test_a_cached_final_vertex_does_not_resolve_its_inputs(store: CacheStore) -> None:
    worker = FakeWorker()
    events = Events()
    base = step("base")
    final = step("final", step("middle", base))
    results: list[SolveResult] = []

    async def main() -> None:
        first = await Solver(worker, store).solve(final)
        # The inputs' records and results are gone; the final's are not.
        for record in first.records.values():
            if record.vertex.meta.name != "final":
                store.remove(record.key)
                worker.results.discard(record.result)
        worker.executed.clear()
        results.append(await Solver(worker, store, reporter=events).solve(final))

    run(main)
    assert worker.executed == []
    assert events.of(VertexCached) == ["final"]
    assert list(results[0].results) == [final.digest]
    with pytest.raises(KeyError, match="not resolved in this solve"):
        results[0].result(base)


def test_a_record_whose_result_is_gone_is_executed_again(store: CacheStore) -> None:
    worker = FakeWorker()
    final = step("final", step("base"))

    async def main() -> None:
        await Solver(worker, store).solve(final)
        worker.results.clear()
        worker.executed.clear()
        await Solver(worker, store).solve(final)

    run(main)
    assert sorted(worker.executed) == ["base", "final"]


def test_progress_of_an_executed_vertex(store: CacheStore) -> None:
    worker = FakeWorker()
    events = Events()
    final = step("final")

    async def main() -> None:
        await Solver(worker, store, reporter=events).solve(final)

    run(main)
    kinds = [type(e) for e in events.events]
    assert kinds == [VertexStarted, VertexLog, VertexDone]
    log = events.events[1]
    assert isinstance(log, VertexLog)
    assert (log.stream, log.data) == (1, b"running final\n")
    done = events.events[2]
    assert isinstance(done, VertexDone) and done.duration >= 0


def test_ignore_cache_executes_again_but_still_records(store: CacheStore) -> None:
    worker = FakeWorker()
    results: list[SolveResult] = []
    plain = step("final", step("base"))
    ignoring = step("final", step("base"), ignore_cache=True)

    async def main() -> None:
        await Solver(worker, store).solve(ignoring)
        worker.executed.clear()
        results.append(await Solver(worker, store).solve(ignoring))
        # Its record was kept: a solve that may use the cache finds it.
        results.append(await Solver(worker, store).solve(plain))

    run(main)
    assert worker.executed == ["final"]
    again, cached = results
    assert again.records[ignoring.digest].miss_reason == MISS_IGNORED
    assert cached.records[plain.digest].cached
    assert cached.result(plain) == again.result(ignoring)


def test_the_context_is_executed_every_time_and_never_recorded(
    store: CacheStore,
) -> None:
    worker = FakeWorker()
    final = context()

    async def main() -> None:
        await Solver(worker, store).solve(final)
        await Solver(worker, store).solve(final)

    run(main)
    assert worker.executed == ["context", "context"]
    assert store.records() == []


def test_fail_on_cache_miss_raises_before_anything_runs(store: CacheStore) -> None:
    worker = FakeWorker()
    final = step("final", step("base"))

    async def main() -> None:
        strict = Solver(worker, store, fail_on_cache_miss=True)
        with pytest.raises(CacheMiss, match="cache miss: final") as info:
            await strict.solve(final)
        assert info.value.vertex == final
        assert worker.executed == []
        await Solver(worker, store).solve(final)
        worker.executed.clear()
        await strict.solve(final)  # everything cached: no miss

    run(main)
    assert worker.executed == []


def test_first_miss_reason_is_no_earlier_record(store: CacheStore) -> None:
    worker = FakeWorker()
    final = step("final")
    results: list[SolveResult] = []

    async def main() -> None:
        results.append(await Solver(worker, store).solve(final))

    run(main)
    assert results[0].records[final.digest].miss_reason == MISS_NO_RECORD


def test_a_failure_cancels_running_siblings_with_a_reason(store: CacheStore) -> None:
    worker = FakeWorker()
    events = Events()
    final = step("final", step("slow"), step("broken"))

    async def main() -> None:
        worker.gates["slow"] = trio.Event()  # never set: only a cancel ends it
        worker.gates["broken"] = trio.Event()
        worker.failures["broken"] = ExecutionError("exit code 2", exit_code=2)
        solver = Solver(worker, store, reporter=events)
        async with trio.open_nursery() as nursery:

            async def solve() -> None:
                with pytest.raises(VertexFailed) as info:
                    await solver.solve(final)
                # solve() returned only after the sibling's 10 s cleanup.
                assert worker.cleaned == ["slow"]
                assert trio.current_time() >= 10
                assert type(info.value) is VertexFailed
                assert info.value.vertex.meta.name == "broken"
                assert isinstance(info.value.cause, ExecutionError)
                assert info.value.__cause__ is info.value.cause
                assert str(info.value) == "broken: exit code 2"

            nursery.start_soon(solve)
            await settle()
            assert worker.running == {"slow", "broken"}
            worker.gates["broken"].set()

    run(main)
    assert "final" not in worker.executed
    assert events.of(VertexError) == ["broken"]
    canceled = [e for e in events.events if isinstance(e, VertexCanceled)]
    assert [(e.vertex.meta.name, e.reason) for e in canceled] == [
        ("slow", "canceled: broken failed")
    ]
    assert store.records() == []


def test_a_failure_caused_by_the_cancel_does_not_replace_the_first(
    store: CacheStore,
) -> None:
    worker = FakeWorker()
    final = step("final", step("killed"), step("broken"))

    async def main() -> None:
        worker.gates["killed"] = trio.Event()
        worker.on_cancel["killed"] = ExecutionError("killed by SIGKILL", exit_code=137)
        worker.failures["broken"] = ExecutionError("exit code 1", exit_code=1)
        worker.gates["broken"] = trio.Event()
        async with trio.open_nursery() as nursery:

            async def solve() -> None:
                with pytest.raises(VertexFailed, match="^broken: exit code 1$"):
                    await Solver(worker, store).solve(final)

            nursery.start_soon(solve)
            await settle()
            assert worker.running == {"killed", "broken"}
            worker.gates["broken"].set()

    run(main)
    assert worker.cleaned == ["killed"]


def test_a_failing_content_checksum_fails_its_vertex(store: CacheStore) -> None:
    worker = FakeWorker()
    final = step("final", step("copy"))
    worker.checksum_failures["copy"] = ExecutionError(
        "COPY source missing.txt: not found"
    )

    async def main() -> None:
        with pytest.raises(VertexFailed, match="^copy: COPY source missing") as info:
            await Solver(worker, store).solve(final)
        assert info.value.vertex.meta.name == "copy"

    run(main)
    assert worker.executed == []


def test_cancel_from_outside_propagates_and_reports_the_running(
    store: CacheStore,
) -> None:
    worker = FakeWorker()
    events = Events()
    final = step("final", step("slow"))

    async def main() -> None:
        worker.gates["slow"] = trio.Event()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                solver = Solver(worker, store, reporter=events)
                nursery.start_soon(solver.solve, final)
                await settle()
                scope.cancel()
        assert scope.cancelled_caught

    run(main)
    assert worker.cleaned == ["slow"]
    canceled = [e for e in events.events if isinstance(e, VertexCanceled)]
    assert [(e.vertex.meta.name, e.reason) for e in canceled] == [
        ("slow", CANCELED_FROM_OUTSIDE)
    ]


def test_no_cache_filter_runs_the_stage_and_its_readers_again(
    store: CacheStore,
) -> None:
    from solver.graph import ExecOp, Vertex, VertexMeta
    from solver.scheduler import MISS_FILTERED, MISS_IGNORED_INPUT

    worker = FakeWorker()
    base = Vertex(ExecOp(("base",)), meta=VertexMeta(name="base", stage="deps"))
    build = Vertex(ExecOp(("build",)), (base,), VertexMeta(name="build", stage="app"))
    other = Vertex(ExecOp(("other",)), meta=VertexMeta(name="other", stage="app"))
    final = Vertex(ExecOp(("final",)), (build, other), VertexMeta(name="final"))
    results: list[SolveResult] = []

    async def main() -> None:
        await Solver(worker, store).solve(final)
        worker.executed.clear()
        filtered = Solver(worker, store, no_cache_stages=["deps"])
        results.append(await filtered.solve(final))

    run(main)
    assert sorted(worker.executed) == ["base", "build", "final"]
    reasons = {r.vertex.meta.name: r.miss_reason for r in results[0].records.values()}
    assert reasons["base"] == MISS_FILTERED
    assert reasons["build"] == reasons["final"] == MISS_IGNORED_INPUT
    assert results[0].records[other.digest].cached


def test_dry_run_lists_hits_and_misses_and_runs_nothing(store: CacheStore) -> None:
    worker = FakeWorker()
    copy = step("copy", step("base"), context())
    final = step("final", step("run", copy))
    results: list[SolveResult] = []

    async def main() -> None:
        worker.contents["copy"] = "sha256:1"
        await Solver(worker, store).solve(final)
        worker.executed.clear()
        worker.contents["copy"] = "sha256:2"
        results.append(await Solver(worker, store).dry_run(final))

    run(main)
    assert worker.executed == []
    by_name = {r.vertex.meta.name: r for r in results[0].records.values()}
    assert by_name["base"].cached
    assert by_name["copy"].miss_reason == MISS_CONTENT
    assert by_name["run"].miss_reason == 'parent step "copy" changed'
    assert not by_name["final"].cached and by_name["final"].started is None


def test_a_miss_reason_is_on_the_started_event(store: CacheStore) -> None:
    worker = FakeWorker()
    events = Events()

    async def main() -> None:
        await Solver(worker, store, reporter=events).solve(step("final"))

    run(main)
    [started] = [e for e in events.events if isinstance(e, VertexStarted)]
    assert started.reason == MISS_NO_RECORD


def test_fail_on_cache_miss_says_why(store: CacheStore) -> None:
    worker = FakeWorker()

    async def main() -> None:
        strict = Solver(worker, store, fail_on_cache_miss=True)
        with pytest.raises(CacheMiss, match=r"cache miss: final \(no earlier record\)"):
            await strict.solve(step("final"))

    run(main)
