# The benchmarks build with the same fixtures as the tests.
import pytest

from benchmarks.bytecode import compile_packages
from tests.conftest import REPO, buildpy, busybox, busybox_rootfs  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _bytecode() -> None:
    """Start-up as installed: the modules' bytecode is there (bytecode.py)."""
    compile_packages(REPO)
