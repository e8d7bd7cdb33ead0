"""The daemon against the embedded engine (pytest-benchmark). Run with

    python3 -m pytest benchmarks/test_daemon_bench.py --benchmark-only

A no-op rebuild of a 50-step Dockerfile through ``buildpy serve`` and embedded, the
same through BuildKit when a docker daemon runs here (skipped otherwise), and ten
concurrent builds of one Dockerfile through the daemon. Figures and the command go
into docs/benchmarks.md; nothing here asserts a time."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from tests.buildpy.test_daemon import Daemon
from tests.conftest import REPO, Buildpy, write_context

DOCKER = "/usr/bin/docker"  # Debian's 20.10 CLI: BuildKit built in (MACHINE-NOTES)


def _fifty_steps(directory: Path) -> Path:
    lines = ["FROM busybox"] + [f"RUN echo step {i} > /step-{i}" for i in range(50)]
    return write_context(directory, {"Dockerfile": "\n".join(lines) + "\n"})


def _client(addr: str, *args: str | os.PathLike[str]) -> None:
    env = {**os.environ, "BUILDPY_HOST": addr}
    env.pop("BUILDPY_ROOT", None)
    subprocess.run(
        [sys.executable, "-m", "buildpy", *map(str, args)],
        env=env,
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_noop_rebuild_50_steps_daemon(benchmark, served: Daemon, tmp_path):
    context = _fifty_steps(tmp_path / "ctx")
    args = ("build", "--progress", "quiet", "-t", "fifty", context)
    _client(served.addr, *args)
    benchmark.pedantic(_client, args=(served.addr, *args), rounds=10, iterations=1)


def test_noop_rebuild_50_steps_embedded(benchmark, busybox: Buildpy, tmp_path):
    context = _fifty_steps(tmp_path / "ctx")
    args = ("build", "--progress", "quiet", "-t", "fifty", context)
    busybox.run(*args)
    benchmark.pedantic(busybox.run, args=args, rounds=10, iterations=1)


def _need_docker() -> None:
    if not Path(DOCKER).exists() or not Path("/var/run/docker.sock").exists():
        pytest.skip("no docker daemon running on this machine")


def _docker_build(context: Path, *args: str) -> None:
    # BuildKit, not the classic builder: a docker CLI without the buildx plugin
    # falls back to the classic one unless told; dockerd runs here without a
    # bridge, so RUN needs the host's network (MACHINE-NOTES.md).
    subprocess.run(
        [DOCKER, "build", "-q", "--network=host", *args, str(context)],
        check=True,
        capture_output=True,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )


def test_noop_rebuild_50_steps_buildkit(benchmark, tmp_path):
    _need_docker()
    lines = ["FROM busybox"] + [f"RUN echo step {i} > /step-{i}" for i in range(50)]
    context = write_context(tmp_path / "ctx", {"Dockerfile": "\n".join(lines) + "\n"})
    # As _docker_build does, but timing the docker process alone.
    cmd = [DOCKER, "build", "-q", "--network=host", "-t", "fifty", str(context)]
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    benchmark.pedantic(
        subprocess.run,
        args=(cmd,),
        kwargs={"check": True, "capture_output": True, "env": env},
        rounds=10,
        iterations=1,
    )


def _fresh_contexts(directory: Path, tag: str) -> Callable[[], Path]:
    """Makes a new context at each call: a 2 s RUN that no engine has cached
    (the time in it: dockerd keeps its cache from one benchmark run to the
    next)."""
    made = itertools.count()

    def make() -> Path:
        n = next(made)
        dockerfile = f"FROM busybox\nRUN sleep 2 && echo {tag}{time.time_ns()} > /n\n"
        return write_context(directory / f"{tag}{n}", {"Dockerfile": dockerfile})

    return make


def _at_once(count: int, build: Callable[[Path], None], context: Path) -> None:
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(lambda _: build(context), range(count)))


def test_ten_concurrent_builds_daemon(benchmark, served: Daemon, tmp_path):
    """Ten clients build one Dockerfile (a 2 s RUN) at once, from a cold cache each
    round: the step runs once, the nine others wait for its record."""
    fresh = _fresh_contexts(tmp_path, "ten")
    build = partial(_client, served.addr, "build", "--progress", "quiet")
    benchmark.pedantic(lambda: _at_once(10, build, fresh()), rounds=5, iterations=1)


def test_one_build_daemon(benchmark, served: Daemon, tmp_path):
    """The reference for the above: one client, the same kind of Dockerfile."""
    fresh = _fresh_contexts(tmp_path, "one")
    build = partial(_client, served.addr, "build", "--progress", "quiet")
    benchmark.pedantic(lambda: build(fresh()), rounds=5, iterations=1)


def test_ten_concurrent_builds_buildkit(benchmark, tmp_path):
    """The same ten clients through dockerd's BuildKit, beside the daemon's."""
    _need_docker()
    fresh = _fresh_contexts(tmp_path, "ten")
    benchmark.pedantic(
        lambda: _at_once(10, _docker_build, fresh()), rounds=5, iterations=1
    )


def test_one_build_buildkit(benchmark, tmp_path):
    """The reference for the above: one docker client."""
    _need_docker()
    fresh = _fresh_contexts(tmp_path, "one")
    benchmark.pedantic(lambda: _docker_build(fresh()), rounds=5, iterations=1)
