"""OCI runtime bundles for build steps and `buildpy run`, and the executors that
run them (runc, crun, or buildpy's builtin executor).

Bundle making (runtime.spec) needs only the standard library; the executors
need trio and are imported on first use, so that the builtin executor's init
process (python -m runtime.init) starts without importing trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime._libc import mount, umount2
from runtime.errors import (
    ExecutorError,
    ExecutorUnavailable,
    InternalError,
    RuntimeFault,
    StepSpecError,
    UserNotFound,
)
from runtime.spec import Mount, ProcessSpec, make_bundle

if TYPE_CHECKING:
    from runtime.executor import (
        BuiltinExecutor,
        Executor,
        OutputSink,
        RuncExecutor,
        find_executor,
    )

_LAZY = {"BuiltinExecutor", "Executor", "OutputSink", "RuncExecutor", "find_executor"}

__all__ = [
    "BuiltinExecutor",
    "Executor",
    "ExecutorError",
    "ExecutorUnavailable",
    "InternalError",
    "Mount",
    "OutputSink",
    "ProcessSpec",
    "RuncExecutor",
    "RuntimeFault",
    "StepSpecError",
    "UserNotFound",
    "find_executor",
    "make_bundle",
    "mount",
    "umount2",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from runtime import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
