"""Build benchmarks (pytest-benchmark). Run with

    python3 -m pytest benchmarks --benchmark-only

Figures and the command that produced them go into docs/benchmarks.md; nothing
here asserts a time."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Buildpy, write_context


def _fifty_steps(directory: Path) -> Path:
    lines = ["FROM busybox"]
    for i in range(50):
        lines.append(f"RUN echo step {i} > /step-{i}")
    return write_context(directory, {"Dockerfile": "\n".join(lines) + "\n"})


def test_noop_rebuild_50_steps(benchmark, busybox: Buildpy, tmp_path):
    context = _fifty_steps(tmp_path / "ctx")
    busybox.run("build", "--progress", "quiet", "-t", "fifty", context)
    benchmark.pedantic(
        busybox.run,
        args=("build", "--progress", "quiet", "-t", "fifty", context),
        rounds=5,
        iterations=1,
    )


def test_four_parallel_stages_sleep_2(benchmark, busybox: Buildpy, tmp_path):
    stages = [
        f"FROM busybox AS s{i}\nRUN sleep 2 && echo {i} > /out-{i}\n" for i in range(4)
    ]
    final = "FROM busybox\n" + "".join(
        f"COPY --from=s{i} /out-{i} /\n" for i in range(4)
    )
    context = write_context(tmp_path / "ctx", {"Dockerfile": "".join(stages) + final})
    benchmark.pedantic(
        busybox.run,
        args=("build", "--progress", "quiet", "--no-cache", context),
        rounds=3,
        iterations=1,
    )


def _many_files(directory: Path, count: int = 20_000) -> Path:
    files = {f"files/d{i // 500:03d}/f{i:05d}.txt": f"file {i}\n" for i in range(count)}
    files["Dockerfile"] = "FROM busybox\nCOPY files/ /files/\n"
    return write_context(directory, files)


def test_copy_20000_files_first_build(benchmark, busybox: Buildpy, tmp_path):
    context = _many_files(tmp_path / "ctx")
    benchmark.pedantic(
        busybox.run,
        args=("build", "--progress", "quiet", "--no-cache", context),
        rounds=3,
        iterations=1,
    )


def test_copy_20000_files_rebuild(benchmark, busybox: Buildpy, tmp_path):
    context = _many_files(tmp_path / "ctx")
    busybox.run("build", "--progress", "quiet", context)
    benchmark.pedantic(
        busybox.run,
        args=("build", "--progress", "quiet", context),
        rounds=5,
        iterations=1,
    )
