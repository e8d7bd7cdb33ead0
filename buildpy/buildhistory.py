"""``buildpy builds``: the builds a store ran, newest first, as ``docker buildx
history`` keeps them: when, how long, how it ended, how much was cached, and
each step's time (the ``--metadata-file`` report, kept with the build).

Every ``buildpy build`` that builds (not ``--dry-run``, ``--check`` or
``--call``) adds one row when it ends, whichever way: completed, failed (with
its error line) or canceled. The last ``KEEP`` stay. A build's ID is 12 hex
digits; ``inspect`` and ``rm`` take an ID, a prefix of one, or ``^N``: the
build N before the newest (``^0``, the default, is the newest).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from buildpy import errors
from buildpy.errors import UsageError
from buildpy.humanize import ago, print_table

if TYPE_CHECKING:  # the parser imports this module: it stays cheap to import
    import sqlite3
    import threading

KEEP = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    status TEXT NOT NULL,
    context TEXT NOT NULL,
    dockerfile TEXT NOT NULL,
    target TEXT NOT NULL,
    names TEXT NOT NULL,
    image TEXT,
    steps INTEGER NOT NULL,
    cached INTEGER NOT NULL,
    error TEXT,
    report TEXT
)
"""
_COLUMNS = (
    "id, started, ended, status, context, dockerfile, target, names, image, "
    "steps, cached, error, report"
)


@dataclass
class BuildRecord:
    id: str
    started: float
    ended: float
    status: str  # "completed", "failed" or "canceled"
    context: str
    dockerfile: str
    target: str  # "" for the last stage
    names: list[str] = field(default_factory=list)
    image: str | None = None  # the config digest, the image ID
    steps: int = 0
    cached: int = 0
    error: str | None = None
    report: dict[str, Any] | None = None  # the --metadata-file document

    @property
    def duration(self) -> float:
        return self.ended - self.started


def new_id() -> str:
    return os.urandom(6).hex()


class BuildHistory:
    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock
        with lock:
            db.execute(_SCHEMA)

    def record(self, build: BuildRecord) -> None:
        """Keep ``build``, and only the newest KEEP builds."""
        row = (
            build.id,
            build.started,
            build.ended,
            build.status,
            build.context,
            build.dockerfile,
            build.target,
            json.dumps(build.names),
            build.image,
            build.steps,
            build.cached,
            build.error,
            None if build.report is None else json.dumps(build.report),
        )
        with self._lock:
            self._db.execute(
                f"INSERT INTO builds ({_COLUMNS}) VALUES ({_marks()})", row
            )
            self._db.execute(
                "DELETE FROM builds WHERE id NOT IN "
                "(SELECT id FROM builds ORDER BY started DESC LIMIT ?)",
                (KEEP,),
            )

    def list(self) -> list[BuildRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM builds ORDER BY started DESC"
            ).fetchall()
        return [_from_row(r) for r in rows]

    def find(self, ref: str) -> BuildRecord:
        """The build ``ref`` names: an ID, a prefix of one, or ``^N``."""
        builds = self.list()
        if ref.startswith("^") and ref[1:].isdigit():
            index = int(ref[1:])
            if index < len(builds):
                return builds[index]
            raise UsageError(f"no build {ref}: {len(builds)} builds are recorded")
        found = [b for b in builds if b.id.startswith(ref)] if ref else []
        if len(found) == 1:
            return found[0]
        if not found:
            raise UsageError(f"no build {ref!r} in the history")
        raise UsageError(f"{ref!r} names {len(found)} builds: give more of the ID")

    def remove(self, ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM builds WHERE id = ?", [(i,) for i in ids])


def _marks() -> str:
    return ", ".join("?" for _ in _COLUMNS.split(","))


def _from_row(row: tuple[Any, ...]) -> BuildRecord:
    (ident, started, ended, status, context, dockerfile, target, names, image) = row[:9]
    steps, cached, error, report = row[9:]
    return BuildRecord(
        ident,
        started,
        ended,
        status,
        context,
        dockerfile,
        target,
        json.loads(names),
        image,
        steps,
        cached,
        error,
        None if report is None else json.loads(report),
    )


# --- the command --------------------------------------------------------------


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    builds = sub.add_parser(
        "builds", parents=[common], help="the builds this store ran (buildx history)"
    )
    actions = builds.add_subparsers(dest="builds_command")
    listing = actions.add_parser("ls", parents=[common], help="list them, newest first")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    inspect = actions.add_parser("inspect", parents=[common], help="one build")
    inspect.add_argument("ref", nargs="?", default="^0", help="ID, prefix or ^N")
    inspect.add_argument("--format", choices=("text", "json"), default="text")
    remove = actions.add_parser("rm", parents=[common], help="forget builds")
    remove.add_argument("refs", nargs="*", metavar="REF")
    remove.add_argument("--all", action="store_true", help="forget every build")


def builds_command(args: argparse.Namespace, history: BuildHistory) -> int:
    command = args.builds_command or "ls"
    if command == "ls":
        _list(history.list(), getattr(args, "format", "table"))
    elif command == "inspect":
        _inspect(history.find(args.ref), args.format)
    else:
        if args.all == bool(args.refs):
            raise UsageError("builds rm: give build IDs, or --all")
        chosen = history.list() if args.all else [history.find(r) for r in args.refs]
        history.remove([b.id for b in chosen])
        for build in chosen:
            print(build.id)
    return errors.EXIT_OK


def _list(builds: list[BuildRecord], fmt: str) -> None:
    if fmt == "json":
        json.dump([_summary(b) for b in builds], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    now = time.time()
    rows: list[list[str]] = []
    for b in builds:
        rows.append(
            [
                b.id,
                ",".join(b.names) or b.target or "-",
                b.status.capitalize(),
                ago(now - b.started),
                f"{b.duration:.1f}s",
                f"{b.cached}/{b.steps}",
            ]
        )
    header = ["BUILD ID", "NAME", "STATUS", "CREATED AT", "DURATION", "CACHED"]
    print_table(header, rows)


def _inspect(build: BuildRecord, fmt: str) -> None:
    if fmt == "json":
        json.dump({**_summary(build), "report": build.report}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    share = f" ({100 * build.cached // build.steps}% cached)" if build.steps else ""
    lines = [
        ("Build ID", build.id),
        ("Context", build.context),
        ("Dockerfile", build.dockerfile),
        ("Target", build.target or "(the last stage)"),
        ("Names", ", ".join(build.names) or "-"),
        ("Started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(build.started))),
        ("Duration", f"{build.duration:.2f}s"),
        ("Status", build.status.capitalize()),
        ("Build Steps", f"{build.cached}/{build.steps}{share}"),
    ]
    if build.image:
        lines.append(("Image", build.image))
    if build.error:
        lines.append(("Error", build.error))
    for key, value in lines:
        print(f"{key + ':':<13}{value}")
    steps = (build.report or {}).get("buildpy.steps") or []
    if steps:
        print()
        rows = [[s["name"], s["status"], f"{s['wall_time']:.2f}s"] for s in steps]
        print_table(["STEP", "STATUS", "TIME"], rows)


def _summary(build: BuildRecord) -> dict[str, Any]:
    return {
        "id": build.id,
        "started": build.started,
        "duration": round(build.duration, 6),
        "status": build.status,
        "context": build.context,
        "dockerfile": build.dockerfile,
        "target": build.target,
        "names": build.names,
        "image": build.image,
        "steps": build.steps,
        "cached": build.cached,
        "error": build.error,
    }


__all__ = ["BuildHistory", "BuildRecord", "KEEP", "add_parser", "builds_command"]
