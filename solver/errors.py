"""The solver's exceptions, split by whose fault a failure is."""

from __future__ import annotations

from solver.graph import Vertex


class SolveError(Exception):
    """Root of every error the solver raises."""


class ExecutionError(SolveError):
    """Raised by a worker when a step fails.

    ``exit_code`` is the process's own exit code for a RUN, None otherwise.
    ``user_fault`` is True when the build's input is to blame (a RUN that exits
    non-zero, a missing COPY source) and False for the machine (a mount failed).
    """

    def __init__(
        self, message: str, *, exit_code: int | None = None, user_fault: bool = True
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.user_fault = user_fault


class VertexFailed(SolveError):
    """A vertex failed; the first failure of a build, with the step it was."""

    def __init__(self, vertex: Vertex, cause: BaseException) -> None:
        super().__init__(f"{vertex.meta.name or vertex.op.kind}: {cause}")
        self.vertex = vertex
        self.cause = cause


class CacheMiss(SolveError):
    """--fail-on-cache-miss: a step would have run."""

    def __init__(self, vertex: Vertex, reason: str | None = None) -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(f"cache miss: {vertex.meta.name or vertex.op.kind}{why}")
        self.vertex = vertex
        self.reason = reason
