"""The cost of one RUN step: a 20-step Dockerfile of `RUN true`, built with
--no-cache under each executor (pytest-benchmark). Run with

    python3 -m pytest benchmarks --benchmark-only -k step_cost

Per-step cost = (time of the 20-step build - time of the 0-step build) / 20.
Figures go into docs/benchmarks.md; nothing here asserts a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.buildpy.test_executors import crun_reason
from tests.conftest import Buildpy, write_context

STEPS = 20


def _context(directory: Path, steps: int) -> Path:
    # Distinct commands, so that no two steps are one vertex.
    lines = ["FROM busybox"] + [f"RUN true {i}" for i in range(steps)]
    return write_context(directory, {"Dockerfile": "\n".join(lines) + "\n"})


@pytest.mark.parametrize("steps", [0, STEPS])
@pytest.mark.parametrize("executor", ["runc", "builtin", "crun"])
def test_step_cost(benchmark, busybox: Buildpy, tmp_path, executor, steps):
    if executor == "crun" and (reason := crun_reason()):
        pytest.skip(reason)
    context = _context(tmp_path / "ctx", steps)
    benchmark.pedantic(
        busybox.run,
        args=("build", "--progress", "quiet", "--no-cache")
        + ("--oci-runtime", executor, context),
        rounds=3,
        iterations=1,
    )
