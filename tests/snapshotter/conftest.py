"""Fixtures for the snapshotter tests: a fresh root and database per test, and
mount targets that are always unmounted, also when a test fails."""

from __future__ import annotations

import ctypes
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from snap_helpers import Mounts

from snapshotter.overlay import Snapshotter

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def _mount_points_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(
        tmp_path / "meta.db", isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def snap(tmp_path: Path, db: sqlite3.Connection) -> Iterator[Snapshotter]:
    s = Snapshotter(tmp_path / "root", db)
    s.init_schema()
    try:
        yield s
    finally:
        # Whatever a failing test left mounted under tmp_path goes, deepest first.
        for point in sorted(_mount_points_under(tmp_path), reverse=True):
            _libc.umount2(os.fsencode(point), _MNT_DETACH)


@pytest.fixture
def mounts(snap: Snapshotter, tmp_path: Path) -> Mounts:
    return Mounts(snap, tmp_path / "mnt")
