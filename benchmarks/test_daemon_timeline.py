"""Where ten concurrent builds through the daemon lose time against one. Run with

    python3 -m pytest benchmarks/test_daemon_timeline.py -s

One client, then ten, build a fresh Dockerfile whose RUN prints a line and sleeps 2 s,
three rounds each, with ``--progress rawjson``. The events carry the wall clock of the
daemon's command process, so one clock spans the clients' launch, the daemon and their
exits. It prints each round's milestones in ms from the launch; the figures go into
docs/benchmarks.md. It asserts what the timeline rests on, not a time: of ten builds
one runs the step and nine wait for its record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.buildpy.test_daemon import Daemon
from tests.conftest import REPO, write_context

ROUNDS = 3
RUN_NAME = "[2/2] RUN"


@dataclass
class Client:
    """One client's events as (ms from the launch, status, step name), and its exit."""

    events: list[tuple[float, str, str]] = field(default_factory=list)
    exit_ms: float = 0.0
    code: int = 0

    def at(self, status: str, step: str = RUN_NAME) -> float | None:
        """When this client first saw ``status`` for the step named ``step...``."""
        for ms, seen, name in self.events:
            if seen == status and name.startswith(step):
                return ms
        return None


def _build(addr: str, context: Path, launched: float) -> Client:
    env = {**os.environ, "BUILDPY_HOST": addr}
    env.pop("BUILDPY_ROOT", None)
    argv = [sys.executable, "-m", "buildpy", "build", "--progress", "rawjson"]
    proc = subprocess.Popen(
        [*argv, str(context)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = Client()
    assert proc.stderr is not None
    for line in proc.stderr:
        record = json.loads(line)
        if "timestamp" in record:
            ms = (record["timestamp"] - launched) * 1000
            client.events.append((ms, record["status"], record.get("name", "")))
    client.code = proc.wait()
    client.exit_ms = (time.time() - launched) * 1000
    return client


def _round(served: Daemon, tmp_path: Path, count: int) -> list[Client]:
    stamp = time.time_ns()
    dockerfile = f"FROM busybox\nRUN echo start && sleep 2 && echo {stamp} > /n\n"
    context = write_context(tmp_path / f"ctx{stamp}", {"Dockerfile": dockerfile})
    launched = time.time()
    with ThreadPoolExecutor(count) as pool:
        started = [
            pool.submit(_build, served.addr, context, launched) for _ in range(count)
        ]
        return [f.result() for f in started]


def _milestones(clients: list[Client]) -> dict[str, float]:
    """The round's milestones, in ms from the launch."""
    (runner,) = [c for c in clients if c.at("START") is not None]
    started, output, done = runner.at("START"), runner.at("LOG"), runner.at("DONE")
    assert started is not None and output is not None and done is not None
    read = [c.at("CACHED") for c in clients if c is not runner]
    return {
        "first request in": min(c.events[0][0] for c in clients),
        "step started": started,
        "step's first output": output,
        "step done": done,
        "last record read": max([done, *(r for r in read if r is not None)]),
        "last client out": max(c.exit_ms for c in clients),
    }


def test_where_ten_builds_lose_time(served: Daemon, tmp_path: Path) -> None:
    rows: dict[int, list[dict[str, float]]] = {1: [], 10: []}
    for _ in range(ROUNDS):
        for count in rows:
            clients = _round(served, tmp_path, count)
            assert [c.code for c in clients] == [0] * count
            runners = [c for c in clients if c.at("START") is not None]
            waiters = [c for c in clients if c.at("WAITING") is not None]
            assert len(runners) == 1, "the step ran more than once"
            assert len(waiters) == count - 1
            assert all(c.at("CACHED") is not None for c in waiters)
            rows[count].append(_milestones(clients))

    names = list(rows[1][0])
    print(f"\n{'ms from the launch':<22}| {'one build':<18}| ten builds")
    for name in names:
        spans = [[r[name] for r in rows[n]] for n in rows]
        cells = [f"{min(s):.0f}-{max(s):.0f}" for s in spans]
        print(f"{name:<22}| {cells[0]:<18}| {cells[1]}")
