"""Fixtures for the runtime suite: a static-busybox rootfs and every executor.

The same tests run under runc, the builtin executor and crun; crun skips with
the executor's own one-line reason on machines where it cannot run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from runtime import (
    Executor,
    ExecutorUnavailable,
    ProcessSpec,
    find_executor,
    make_bundle,
)

BUSYBOX = Path("/bin/busybox")

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
"""
GROUP = """\
root:x:0:
nogroup:x:65534:
app:x:1000:
extra:x:2000:app
"""

# Short, so cancellation tests end quickly; the step ignores SIGTERM anyway
# (it is pid 1 of its namespace without a handler), so KILL always follows.
GRACE = 0.5


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the runtime tests need root (namespaces and mounts)")


def make_rootfs(root: Path) -> Path:
    """A rootfs of the host's static busybox with passwd and group files.
    Only bin/ and etc/: /proc, /dev, /sys are left for the runtime to stub."""
    if not BUSYBOX.exists():
        pytest.skip("/bin/busybox (busybox-static) is not installed")
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    subprocess.run(
        ["chroot", str(root), "/bin/busybox", "--install", "-s", "/bin"], check=True
    )
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    _require_root()
    return make_rootfs(tmp_path / "rootfs")


@pytest.fixture(params=["runc", "builtin", "crun"])
def executor(request: pytest.FixtureRequest, tmp_path: Path) -> Executor:
    _require_root()
    try:
        return find_executor(request.param, tmp_path / "state", grace=GRACE)
    except ExecutorUnavailable as exc:
        pytest.skip(str(exc))


@dataclass
class Result:
    code: int
    chunks: list[tuple[int, bytes]] = field(default_factory=list)

    def stream(self, fd: int) -> bytes:
        return b"".join(chunk for f, chunk in self.chunks if f == fd)

    @property
    def stdout(self) -> str:
        return self.stream(1).decode()

    @property
    def stderr(self) -> str:
        return self.stream(2).decode()


@dataclass
class Runner:
    executor: Executor
    rootfs: Path
    bundle_dir: Path

    def run(self, *args: str, **kwargs: object) -> Result:
        """Run ``args`` as a step on the rootfs; kwargs go to ProcessSpec."""
        spec = ProcessSpec(args=args, env=kwargs.pop("env", ()), **kwargs)  # type: ignore[arg-type]
        make_bundle(self.bundle_dir, self.rootfs, spec)
        result = Result(code=-1)

        async def sink(fd: int, chunk: bytes) -> None:
            result.chunks.append((fd, chunk))

        async def main() -> None:
            result.code = await self.executor.run(self.bundle_dir, "step", sink)

        trio.run(main)
        return result

    def sh(self, script: str, **kwargs: object) -> Result:
        return self.run("sh", "-c", script, **kwargs)


@pytest.fixture
def runner(executor: Executor, rootfs: Path, tmp_path: Path) -> Runner:
    return Runner(executor, rootfs, tmp_path / "bundle")
