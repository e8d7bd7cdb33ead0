"""buildpy's own exceptions and the exit codes they map to (DESIGN.md, "Exit codes").

Every error that reaches the command line is one line that names what and where;
the CLI prints it and exits with the code below. Nothing here prints.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_USAGE = 2
EXIT_DOCKERFILE = 3
EXIT_INFRA = 4
EXIT_CACHE_MISS = 5
EXIT_INTERRUPTED = 130


class BuildpyError(Exception):
    """Root of buildpy's errors. ``exit_code`` says whose fault it was."""

    exit_code = EXIT_INFRA


class UsageError(BuildpyError):
    """A bad flag, a bad argument, a path that does not exist."""

    exit_code = EXIT_USAGE


class InfraError(BuildpyError):
    """The machine, the store or the runtime failed: not the user's input."""

    exit_code = EXIT_INFRA


class ImageNotFound(BuildpyError, LookupError):
    """A name that is not in the local store."""

    exit_code = EXIT_USAGE

    def __init__(self, name: str) -> None:
        super().__init__(f"image {name!r} not found in the local store")
        self.name = name


def sole(exc: BaseException) -> BaseException:
    """The one exception worth reporting out of what Trio raised.

    Trio's nurseries wrap whatever escapes them in exception groups (always, since
    trio 0.25), while a build has one failure to tell the user about: Ctrl-C if it
    was pressed, else the first error that is not a cancellation it caused.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if isinstance(current, BaseExceptionGroup):
            stack.extend(reversed(current.exceptions))
        else:
            leaves.append(current)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt | SystemExit):
            return leaf
    import trio  # only on this error path: the CLI's start-up stays cheap

    real = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    return (real or leaves)[0]
