"""The runtime's exceptions, split by whose fault a failure is.

``RuntimeFault`` is the root (named so to stay clear of Python's RuntimeError).
Below it: ``StepSpecError`` for the build's input (the user's fault),
``ExecutorError`` for the machine (an executor that is missing, refuses to run
or fails to start a container), and ``InternalError`` for a bug in buildpy.
"""

from __future__ import annotations


class RuntimeFault(Exception):
    """Root of every error the runtime package raises."""


class StepSpecError(RuntimeFault):
    """The step asks for something its rootfs cannot give (the user's fault)."""


class UserNotFound(StepSpecError):
    """USER names a user or group that the rootfs's /etc/passwd or /etc/group
    does not have. The message keeps docker's wording, which users search for."""


class ExecutorError(RuntimeFault):
    """The executor failed to run a container (the machine's fault).

    ``executor`` is the executor's name ("runc", "builtin", ...).
    """

    def __init__(self, message: str, *, executor: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.executor = executor


class ExecutorUnavailable(ExecutorError):
    """The executor asked for cannot run containers on this machine."""


class InternalError(RuntimeFault):
    """A bug in buildpy's runtime: please report it with the message."""
