"""Helpers for the snapshotter tests (imported by conftest and the tests)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter.overlay import Snapshotter

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="overlay mounts, chown and mknod need root"
)


class Mounts:
    """Mount points for a test; each mount is undone when its block ends."""

    def __init__(self, snap: Snapshotter, base: Path) -> None:
        self._snap = snap
        self._base = base
        self._count = 0

    def _target(self) -> Path:
        self._count += 1
        target = self._base / f"m{self._count}"
        target.mkdir(parents=True)
        return target

    @contextlib.contextmanager
    def mount(self, key: str) -> Iterator[Path]:
        target = self._target()
        self._snap.mount(key, target)
        try:
            yield target
        finally:
            self._snap.unmount(target)

    @contextlib.contextmanager
    def view(self, name: str) -> Iterator[Path]:
        target = self._target()
        self._snap.view(name, target)
        try:
            yield target
        finally:
            self._snap.unmount(target)
