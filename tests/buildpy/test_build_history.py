"""``buildpy builds``: the builds a store ran, as ``docker buildx history``
keeps them, run as a user runs them."""

from __future__ import annotations

import json
import sqlite3
import threading

from buildpy.buildhistory import KEEP, BuildHistory, BuildRecord
from tests.conftest import Buildpy, write_context


def test_builds_are_listed_inspected_and_removed(busybox: Buildpy, tmp_path):
    good = write_context(
        tmp_path / "good", {"Dockerfile": "FROM busybox\nRUN echo 1 > /1\n"}
    )
    bad = write_context(tmp_path / "bad", {"Dockerfile": "FROM busybox\nRUN exit 3\n"})
    busybox.build(good, "-t", "app:1")
    busybox.build(good, "-t", "app:1")
    assert busybox.build(bad, check=False).returncode == 1
    busybox.build(good, "--dry-run")  # builds nothing: not recorded
    busybox.build(good, "--check")

    listed = json.loads(busybox.run("builds", "ls", "--format", "json").stdout)
    assert [(b["status"], b["cached"], b["steps"]) for b in listed] == [
        ("failed", 0, 0),
        ("completed", 2, 2),
        ("completed", 0, 2),
    ]
    assert listed[0]["error"] == (
        'process "/bin/sh -c exit 3" did not complete successfully: exit code: 3'
    )
    table = busybox.run("builds").stdout.splitlines()
    assert table[0].split() == [
        "BUILD", "ID", "NAME", "STATUS", "CREATED", "AT", "DURATION", "CACHED",
    ]  # fmt: skip
    assert table[2].split()[:3] == [listed[1]["id"], "app:1", "Completed"]

    newest = busybox.run("builds", "inspect").stdout
    assert (
        f"Build ID:    {listed[0]['id']}" in newest and "Status:      Failed" in newest
    )
    cached = busybox.run("builds", "inspect", listed[1]["id"][:5]).stdout
    assert "Build Steps: 2/2 (100% cached)" in cached
    assert "[2/2] RUN echo 1 > /1" in cached
    report = json.loads(
        busybox.run("builds", "inspect", "^2", "--format", "json").stdout
    )
    assert report["report"]["buildpy.cache"] == {"hits": 0, "misses": 2}

    assert (
        busybox.run("builds", "rm", listed[0]["id"]).stdout.strip() == listed[0]["id"]
    )
    assert len(json.loads(busybox.run("builds", "ls", "--format", "json").stdout)) == 2
    for args, says in [
        (("builds", "inspect", "nope"), "ERROR: no build 'nope' in the history\n"),
        (("builds", "inspect", "^9"), "ERROR: no build ^9: 2 builds are recorded\n"),
        (("builds", "rm"), "ERROR: builds rm: give build IDs, or --all\n"),
    ]:
        proc = busybox.run(*args, check=False)
        assert (proc.returncode, proc.stderr) == (2, says)
    busybox.run("builds", "rm", "--all")
    assert busybox.run("builds").stdout.count("\n") == 1  # the header alone


def test_only_the_newest_builds_are_kept() -> None:
    history = BuildHistory(sqlite3.connect(":memory:"), threading.Lock())
    for n in range(KEEP + 5):
        history.record(
            BuildRecord(
                f"{n:012x}", float(n), n + 1.0, "completed", ".", "Dockerfile", ""
            )
        )
    kept = history.list()
    assert len(kept) == KEEP and kept[0].id == f"{KEEP + 4:012x}"
    assert kept[-1].id == f"{5:012x}"
