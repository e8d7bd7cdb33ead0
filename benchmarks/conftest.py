# The benchmarks build with the same fixtures as the tests.
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.bytecode import compile_packages
from tests.buildpy.test_daemon import Daemon, start_daemon
from tests.conftest import REPO, Buildpy, buildpy, busybox, busybox_rootfs  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _bytecode() -> None:
    """Start-up as installed: the modules' bytecode is there (bytecode.py)."""
    compile_packages(REPO)


@pytest.fixture
def served(busybox: Buildpy, tmp_path: Path) -> Iterator[Daemon]:  # noqa: F811
    """``buildpy serve`` on a temporary socket, over the busybox store."""
    d = start_daemon(busybox.root, tmp_path / "buildpy.sock")
    try:
        yield d
    finally:
        d.stop()
