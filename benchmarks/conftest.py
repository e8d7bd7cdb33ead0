# The benchmarks build with the same fixtures as the tests.
from tests.conftest import buildpy, busybox, busybox_rootfs  # noqa: F401
