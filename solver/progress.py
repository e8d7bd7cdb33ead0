"""Progress events: what the solver tells displays about each vertex.

The solver never prints. It calls a ``Reporter`` with one event at a time, in the
order things happen; displays (buildpy.progress) turn them into text. A reporter
must not block: it is called from inside the Trio scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from solver.graph import Vertex


@dataclass(frozen=True)
class VertexStarted:
    """``reason`` says why a cacheable vertex missed the cache (None otherwise)."""

    vertex: Vertex
    time: float
    reason: str | None = None


@dataclass(frozen=True)
class VertexWaiting:
    """Another build (another solve, maybe another process) is running the same
    cache key; this one waits for its record instead of running it too."""

    vertex: Vertex
    time: float


@dataclass(frozen=True)
class VertexCached:
    vertex: Vertex
    time: float


@dataclass(frozen=True)
class VertexLog:
    vertex: Vertex
    stream: int  # 1 stdout, 2 stderr
    data: bytes
    time: float


@dataclass(frozen=True)
class VertexDone:
    vertex: Vertex
    time: float
    duration: float


@dataclass(frozen=True)
class VertexError:
    vertex: Vertex
    time: float
    error: BaseException


@dataclass(frozen=True)
class VertexCanceled:
    vertex: Vertex
    time: float
    reason: str


Event = (
    VertexStarted
    | VertexCached
    | VertexLog
    | VertexDone
    | VertexError
    | VertexCanceled
    | VertexWaiting
)
Reporter = Callable[[Event], None]


def discard(event: Event) -> None:
    """A reporter that shows nothing."""
