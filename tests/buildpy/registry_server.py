"""Debian's docker-registry on 127.0.0.1, for tests: a free port, a temporary
storage directory, optionally htpasswd basic auth; stopped and removed on exit,
also when the test fails."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REGISTRY = shutil.which("docker-registry")


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    storage: Path
    user: str | None = None
    password: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_registry(auth: tuple[str, str] | None = None) -> Iterator[Registry]:
    if REGISTRY is None:
        pytest.skip(
            "docker-registry is not installed (apt-get install docker-registry)"
        )
    work = Path(tempfile.mkdtemp(prefix="registry-"))
    proc: subprocess.Popen[str] | None = None
    try:
        port = _free_port()
        auth_block = ""
        if auth is not None:
            htpasswd = shutil.which("htpasswd")
            if htpasswd is None:
                pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
            line = subprocess.run(
                [htpasswd, "-nbB", auth[0], auth[1]],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            (work / "htpasswd").write_text(line + "\n")
            auth_block = (
                "auth:\n  htpasswd:\n    realm: buildpy-test\n"
                f"    path: {work / 'htpasswd'}\n"
            )
        config = work / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n" + auth_block
        )
        proc = subprocess.Popen(
            [REGISTRY, "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        seen: list[str] = []
        # Ready when it says it listens: read its log, no polling.
        for line in proc.stderr:
            seen.append(line)
            if "listening on" in line:
                break
        else:
            raise RuntimeError("docker-registry did not start:\n" + "".join(seen))
        drain = threading.Thread(
            target=lambda: [None for _ in proc.stderr],  # type: ignore[union-attr]
            daemon=True,
        )
        drain.start()
        yield Registry(f"127.0.0.1:{port}", work / "data", *(auth or (None, None)))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
