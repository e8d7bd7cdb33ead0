"""Fixtures shared by every test: a busybox root filesystem made from the host's
static busybox, fresh state roots, and the ``buildpy`` command run as a user runs
it (a real process). Every fixture removes what it made, mounts included, also
when the test fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from buildpy.worker import mounts_under

REPO = Path(__file__).resolve().parent.parent

# No test may reach a registry beyond this machine: a FROM of an image the store
# lacks would otherwise try Docker Hub. Every buildpy process inherits this.
os.environ["BUILDPY_REGISTRY_ALLOW"] = "loopback"


@contextmanager
def http_server(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[int]:
    """A threaded HTTP server on 127.0.0.1 with a free port, serving with
    ``handler``; yields the port. Stopped and joined on exit, also on failure."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def unmount_all(path: Path) -> None:
    for point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    subprocess.run(
        [str(REPO / "scripts/make-busybox-rootfs.sh"), str(root)],
        check=True,
        capture_output=True,
    )
    return root


@dataclass
class Buildpy:
    """``buildpy`` against one state root, run as a separate process."""

    root: Path

    def run(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 300,
        stdin: Path | None = None,
        stdout: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``buildpy ARGS``; ``stdin``: a file it reads as its stdin;
        ``stdout``: a file its stdout goes to (bytes, not captured)."""
        full_env = {**os.environ, "BUILDPY_ROOT": str(self.root), **(env or {})}
        full_env.pop("BUILDKIT_PROGRESS", None)
        with (
            open(stdin or os.devnull, "rb") as given,
            open(stdout, "wb") if stdout else nullcontext() as taken,
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "buildpy", *map(str, args)],
                stdin=given,
                stdout=taken or subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**full_env, **(env or {})},
                timeout=timeout,
                cwd=REPO,
            )
        proc.stdout = proc.stdout or ""
        if check and proc.returncode != 0:
            raise AssertionError(
                f"buildpy {' '.join(map(str, args))} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def build(
        self, context: Path, *args: str | os.PathLike[str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run("build", "--progress", "plain", *args, context, check=check)


@pytest.fixture
def buildpy(tmp_path: Path) -> Iterator[Buildpy]:
    root = tmp_path / "state"
    try:
        yield Buildpy(root)
        leftover = mounts_under(root)
        assert not leftover, f"mounts left behind: {leftover}"
    finally:
        unmount_all(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def busybox(buildpy: Buildpy, busybox_rootfs: Path) -> Buildpy:
    """A state root holding busybox:latest, imported as a user would."""
    buildpy.run("import", "--change", 'CMD ["sh"]', busybox_rootfs, "busybox")
    return buildpy


def write_context(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory
