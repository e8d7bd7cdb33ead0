"""Progress displays: they consume the solver's events and print them.

``plain`` is BuildKit's plain format: every vertex gets a number when first seen
(``#3 [build 2/4] RUN make``), its output lines carry the seconds since it started
(``#3 0.153 compiling``), and it ends with ``#3 DONE 0.3s``, ``#3 CACHED`` or
``#3 ERROR: ...``. Lines are never truncated. ``tty`` is a live view of the same
(rich), ``rawjson`` one JSON object per event, ``quiet`` nothing but the result.

The engine never prints; the build orchestration reports its own internal steps
(loading the Dockerfile, exporting) through ``internal()``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from solver.progress import (
    Event,
    VertexCached,
    VertexCanceled,
    VertexDone,
    VertexError,
    VertexLog,
    VertexStarted,
    VertexWaiting,
)

ERROR_LOG_LINES = 10


def _rel(seconds: float) -> str:
    """BuildKit's relative timestamp: 3 decimals under 10 s, 2 under 100, then 1."""
    if seconds < 10:
        return f"{seconds:.3f}"
    if seconds < 100:
        return f"{seconds:.2f}"
    return f"{seconds:.1f}"


@dataclass
class _Step:
    number: int
    name: str
    started: float | None = None
    partial: dict[int, bytes] = field(default_factory=dict)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=ERROR_LOG_LINES))
    state: str = "waiting"
    duration: float = 0.0
    reason: str | None = None  # why it missed the cache


class Display:
    """Base: keeps the numbering and each step's last lines (for the error block)."""

    def __init__(self) -> None:
        self.steps: dict[str, _Step] = {}
        self.started = time.monotonic()

    def step(self, key: str, name: str) -> tuple[_Step, bool]:
        known = self.steps.get(key)
        if known is not None:
            return known, False
        created = _Step(number=len(self.steps) + 1, name=name)
        self.steps[key] = created
        return created, True

    def __call__(self, event: Event) -> None:
        vertex = event.vertex
        step, _ = self.step(vertex.digest, vertex.meta.name or vertex.op.kind)
        if isinstance(event, VertexStarted):
            step.started = event.time
            step.state = "running"
            step.reason = event.reason
            self.on_start(step)
        elif isinstance(event, VertexWaiting):
            self.on_waiting(step)
        elif isinstance(event, VertexCached):
            step.state = "cached"
            self.on_cached(step)
        elif isinstance(event, VertexLog):
            for line in self._lines(step, event.stream, event.data):
                step.tail.append(line)
                self.on_log(step, event.time, line)
        elif isinstance(event, VertexDone):
            self._flush(step, event.time)
            step.state = "done"
            step.duration = event.duration
            self.on_done(step)
        elif isinstance(event, VertexError):
            self._flush(step, event.time)
            step.state = "error"
            self.on_error(step, str(event.error))
        elif isinstance(event, VertexCanceled):
            self._flush(step, event.time)
            step.state = "canceled"
            self.on_canceled(step)

    def _lines(self, step: _Step, stream: int, data: bytes) -> list[str]:
        buffered = step.partial.get(stream, b"") + data
        *complete, rest = buffered.split(b"\n")
        step.partial[stream] = rest
        return [line.decode("utf-8", "replace") for line in complete]

    def _flush(self, step: _Step, when: float) -> None:
        for stream, rest in list(step.partial.items()):
            if rest:
                line = rest.decode("utf-8", "replace")
                step.tail.append(line)
                self.on_log(step, when, line)
            step.partial[stream] = b""

    @contextmanager
    def internal(self, name: str) -> Iterator[None]:
        """An engine step that is not a vertex: loading, exporting."""
        step, _ = self.step("internal:" + name, name)
        step.started = time.time()
        step.state = "running"
        self.on_start(step)
        try:
            yield
        except BaseException as exc:
            step.state = "error"
            self.on_error(step, str(exc) or type(exc).__name__)
            raise
        step.duration = time.time() - step.started
        step.state = "done"
        self.on_done(step)

    def note(self, name: str, text: str) -> None:
        """A status line of an internal step (``writing image sha256:... done``)."""

    def warn(self, text: str) -> None:
        """A warning about the build (unused build args, lint)."""

    def close(self) -> None:
        """Called once at the end, whatever happened."""

    # Hooks for subclasses.
    def on_start(self, step: _Step) -> None: ...
    def on_cached(self, step: _Step) -> None: ...
    def on_waiting(self, step: _Step) -> None: ...
    def on_log(self, step: _Step, when: float, line: str) -> None: ...
    def on_done(self, step: _Step) -> None: ...
    def on_error(self, step: _Step, message: str) -> None: ...
    def on_canceled(self, step: _Step) -> None: ...


class PlainDisplay(Display):
    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out
        self.current: int | None = None

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _header(self, step: _Step) -> None:
        if self.current != step.number:
            self._print("")
            self._print(f"#{step.number} {step.name}")
            self.current = step.number

    def on_start(self, step: _Step) -> None:
        self._header(step)
        if step.reason:
            self._print(f"#{step.number} cache miss: {step.reason}")

    def on_cached(self, step: _Step) -> None:
        self._header(step)
        self._print(f"#{step.number} CACHED")

    def on_waiting(self, step: _Step) -> None:
        self._header(step)
        self._print(f"#{step.number} waiting for another build running this step")

    def on_log(self, step: _Step, when: float, line: str) -> None:
        self._header(step)
        offset = when - step.started if step.started is not None else 0.0
        self._print(f"#{step.number} {_rel(max(offset, 0.0))} {line}")

    def on_done(self, step: _Step) -> None:
        self._header(step)
        self._print(f"#{step.number} DONE {step.duration:.1f}s")

    def on_error(self, step: _Step, message: str) -> None:
        self._header(step)
        self._print(f"#{step.number} ERROR: {message}")

    def on_canceled(self, step: _Step) -> None:
        self._header(step)
        self._print(f"#{step.number} CANCELED")

    def note(self, name: str, text: str) -> None:
        step, _ = self.step("internal:" + name, name)
        self._header(step)
        self._print(f"#{step.number} {text}")

    def warn(self, text: str) -> None:
        self._print(f"WARN: {text}")


class QuietDisplay(Display):
    """Prints nothing while building; the CLI prints the image ID at the end."""


class RawJsonDisplay(Display):
    """One JSON object per line and event, for machines."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out

    def _emit(self, step: _Step, status: str, **extra: object) -> None:
        record = {"id": step.number, "name": step.name, "status": status, **extra}
        record["timestamp"] = time.time()
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def on_start(self, step: _Step) -> None:
        self._emit(step, "START", **({"reason": step.reason} if step.reason else {}))

    def on_waiting(self, step: _Step) -> None:
        self._emit(step, "WAITING")

    def on_cached(self, step: _Step) -> None:
        self._emit(step, "CACHED")

    def on_log(self, step: _Step, when: float, line: str) -> None:
        self._emit(step, "LOG", line=line)

    def on_done(self, step: _Step) -> None:
        self._emit(step, "DONE", duration=round(step.duration, 3))

    def on_error(self, step: _Step, message: str) -> None:
        self._emit(step, "ERROR", error=message)

    def on_canceled(self, step: _Step) -> None:
        self._emit(step, "CANCELED")

    def warn(self, text: str) -> None:
        self.out.write(json.dumps({"status": "WARNING", "message": text}) + "\n")


class TtyDisplay(Display):
    """A live view: running steps with their last lines and elapsed time, redrawn
    by rich at most ten times a second, and a summary line at the end."""

    LOG_LINES = 6

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        from rich.console import Console  # imported only for a terminal
        from rich.live import Live

        self.console = Console(file=out)
        self.finished = False  # read by _render, which Live calls at once
        self.live = Live(
            console=self.console, refresh_per_second=10, get_renderable=self._render
        )
        self.warnings: list[str] = []
        self.live.start()

    def _render(self):  # type: ignore[no-untyped-def]
        from rich.text import Text

        elapsed = time.monotonic() - self.started
        done = sum(1 for s in self.steps.values() if s.state in ("done", "cached"))
        # BuildKit's summary line ends with FINISHED once the build is over.
        end = " FINISHED" if self.finished else ""
        text = Text(f"[+] Building {elapsed:.1f}s ({done}/{len(self.steps)}){end}\n")
        now = time.time()
        for step in self.steps.values():
            if step.state == "cached":
                text.append(f" => CACHED {step.name}\n", style="blue")
            elif step.state == "done":
                text.append(f" => {step.name}  {step.duration:.1f}s\n", style="blue")
            elif step.state == "error":
                text.append(f" => ERROR {step.name}\n", style="red")
            elif step.state == "canceled":
                text.append(f" => CANCELED {step.name}\n", style="yellow")
            elif step.state == "running":
                spent = now - (step.started or now)
                text.append(f" => {step.name}  {spent:.1f}s\n")
                for line in list(step.tail)[-self.LOG_LINES :]:
                    text.append(f" => => # {line}\n", style="dim")
        return text

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def close(self) -> None:
        self.finished = True
        self.live.refresh()
        self.live.stop()
        for text in self.warnings:
            self.console.print(f"WARN: {text}", highlight=False)


def make_display(mode: str, out: TextIO | None = None) -> Display:
    """``auto`` is tty on a terminal and plain otherwise; $BUILDKIT_PROGRESS is
    read by the CLI before it calls this."""
    out = out or sys.stderr
    if mode == "auto":
        mode = "tty" if out.isatty() else "plain"
    if mode == "plain":
        return PlainDisplay(out)
    if mode == "tty":
        return TtyDisplay(out)
    if mode == "rawjson":
        return RawJsonDisplay(out)
    return QuietDisplay()


def error_block(display: Display, key: str) -> str:
    """BuildKit's block of a failed step's last output lines."""
    step = display.steps.get(key)
    if step is None:
        return ""
    lines = ["------", f" > {step.name}:"]
    lines.extend(step.tail)
    lines.append("------")
    return "\n".join(lines)
