"""Ctrl-C in the middle of a RUN: the step's processes stop, nothing stays mounted,
and the next build works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from tests.conftest import REPO, Buildpy, mounts_under, write_context


def processes_running(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_interrupt_during_run_cleans_up(busybox: Buildpy, tmp_path):
    marker = "sleep 4242"
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": f"FROM busybox\nRUN echo step-started && {marker}\n"},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildpy", "build", "--progress", "plain", str(context)],
        env={**os.environ, "BUILDPY_ROOT": str(busybox.root)},
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    started = threading.Event()
    seen: list[str] = []

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "step-started" in line:
                started.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        assert started.wait(120), "".join(seen)
        # The step is running; wait until its sleep is on the process table.
        deadline = time.monotonic() + 30
        while not processes_running(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert code == 130, "".join(seen)
    assert "Traceback" not in "".join(seen)
    assert processes_running(marker) == []
    assert mounts_under(busybox.root) == []
    # No mount point, bundle or half-written blob is left either.
    for leftover in ("mnt", "bundles", "blobs/tmp"):
        path = busybox.root / leftover
        assert not path.exists() or os.listdir(path) == [], leftover
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo next\n")
    busybox.build(context)
