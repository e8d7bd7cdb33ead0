"""What the solver needs from whoever executes ops: the worker interface.

The solver imports neither snapshotter nor runtime. buildpy's worker implements
this protocol with the two; the solver's tests use a fake worker.

A *result* is an opaque string that the worker gives for a vertex it executed
(for buildpy's worker: the name of a committed snapshot). The solver records it
under the vertex's cache key and hands it back, unread, as an input of the vertex
that reads it, or to ``exists`` when a later build finds the record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from solver.graph import Vertex

# stream is 1 for stdout, 2 for stderr, as in BuildKit's VertexLog.
LogSink = Callable[[int, bytes], Awaitable[None]]


@dataclass(frozen=True)
class EarlierRun:
    """A recorded run of a vertex on the same inputs that read other content:
    its result, and the per-file detail of what it read (``content_detail``)."""

    result: str
    detail: dict[str, list[str]]


class Worker(Protocol):
    async def content_checksum(self, vertex: Vertex) -> str | None:
        """A digest of the outside content ``vertex`` reads that its op does not
        name, or None when there is none.

        For a FileOp copying from the context: the checksums of exactly the
        files its sources select (after .dockerignore and excludes), with the
        metadata the copy keeps. Called before the vertex runs, possibly for a
        vertex that will then be found in the cache.
        """
        ...

    async def exists(self, result: str) -> bool:
        """Whether a result recorded by an earlier build is still usable."""
        ...

    async def exists_many(self, results: Collection[str]) -> set[str]:
        """Which of ``results`` are still usable: ``exists`` for many records at
        once, as a rebuild looks up all of its steps."""
        ...

    async def execute(self, vertex: Vertex, inputs: Sequence[str], log: LogSink) -> str:
        """Run ``vertex``'s op on the results of its inputs (in input order) and
        return its result. Output of a process goes to ``log``. Raises
        solver.errors.ExecutionError (or a subclass) when the step fails."""
        ...

    def cacheable(self, vertex: Vertex) -> bool:
        """False for vertices whose result must never be recorded (the context)."""
        ...

    # Optional, looked up with getattr by the scheduler:
    #
    # def content_detail(self, vertex) -> dict[str, list[str]] | None
    #     Per-file detail of the last content_checksum of ``vertex``, kept with
    #     its record to name a changed file.
    # async def execute_from(self, vertex, inputs, log, earlier: EarlierRun) -> str
    #     ``execute``, given an earlier run to build the result from. It must
    #     give what ``execute`` would (the cache key says the two are the same).
