"""`buildpy run IMAGE`: what a CI step that starts its image and probes it sees."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Buildpy, mounts_under, write_context


def run(buildpy: Buildpy, *args: str, **kwargs: object):  # type: ignore[no-untyped-def]
    proc = buildpy.run("run", *args, check=False, **kwargs)  # type: ignore[arg-type]
    assert not mounts_under(buildpy.root), "mounts left after buildpy run"
    assert not list((buildpy.root / "bundles").iterdir())
    return proc


@pytest.fixture
def app(busybox: Buildpy, tmp_path: Path) -> Buildpy:
    """busybox with an image config to override: ENTRYPOINT, CMD, ENV, WORKDIR."""
    ctx = write_context(
        tmp_path / "app",
        {
            "Dockerfile": "FROM busybox\n"
            "ENV GREETING=hello LEVEL=image\n"
            "WORKDIR /srv\n"
            'ENTRYPOINT ["sh", "-c", "echo $GREETING $LEVEL $(pwd) $(id -u) \\"$@\\"",'
            ' "entry"]\n'
            'CMD ["from-cmd"]\n'
        },
    )
    busybox.build(ctx, "-t", "app")
    return busybox


@pytest.mark.parametrize("executor", ["runc", "builtin"])
def test_exit_code_is_the_containers(busybox: Buildpy, executor: str) -> None:
    proc = run(busybox, "--oci-runtime", executor, "busybox", "sh", "-c", "exit 7")
    assert proc.returncode == 7
    ok = run(busybox, "--oci-runtime", executor, "busybox", "true")
    assert ok.returncode == 0 and ok.stdout == ""


def test_image_config_and_overrides(app: Buildpy) -> None:
    assert run(app, "app").stdout == "hello image /srv 0 from-cmd\n"
    proc = run(app, "-e", "LEVEL=flag", "-w", "/tmp/new", "-u", "1000", "app", "x")
    assert proc.stdout == "hello flag /tmp/new 1000 x\n"
    proc = run(app, "--entrypoint", "sh", "app", "-c", "echo $LEVEL $0")
    assert proc.stdout == "image sh\n"  # the image's CMD is dropped


def test_volume_and_missing_image(busybox: Buildpy, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from host\n")
    proc = run(
        busybox,
        "-v",
        f"{shared}:/data",
        "busybox",
        "sh",
        "-c",
        "cat /data/in && echo out > /data/out",
    )
    assert proc.stdout == "from host\n" and (shared / "out").read_text() == "out\n"
    ro = run(busybox, "-v", f"{shared}:/data:ro", "busybox", "touch", "/data/x")
    assert ro.returncode == 1 and "Read-only file system" in ro.stderr
    missing = run(busybox, "nosuchimage")
    assert missing.returncode == 2 and "not found in the local store" in missing.stderr


def test_stdin_only_with_i(busybox: Buildpy) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "buildpy", "run", "-i", "busybox", "cat"],
        input="piped\n",
        capture_output=True,
        text=True,
        env={**os.environ, "BUILDPY_ROOT": str(busybox.root)},
        cwd=REPO,
        timeout=60,
    )
    assert proc.stdout == "piped\n"
    closed = subprocess.run(
        [sys.executable, "-m", "buildpy", "run", "busybox", "cat"],
        input="piped\n",
        capture_output=True,
        text=True,
        env={**os.environ, "BUILDPY_ROOT": str(busybox.root)},
        cwd=REPO,
        timeout=60,
    )
    assert closed.returncode == 0 and closed.stdout == ""


def test_network_none_has_only_loopback(busybox: Buildpy) -> None:
    proc = run(
        busybox, "--network", "none", "busybox", "sh", "-c", "tail -n +3 /proc/net/dev"
    )
    assert [line.split(":")[0].strip() for line in proc.stdout.splitlines()] == ["lo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(busybox: Buildpy) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`buildpy run --network host` of busybox httpd, started in the background;
    it prints "ready" once the port listens (httpd forks after binding)."""
    port = free_port()
    script = (
        "mkdir -p /www && echo served-by-buildpy > /www/index.html"
        f" && httpd -p 127.0.0.1:{port} -h /www && echo ready && exec sleep 600"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildpy", "run", "--network", "host", "busybox"]
        + ["sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "BUILDPY_ROOT": str(busybox.root)},
        cwd=REPO,
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def test_server_probed_on_localhost_then_stopped(
    busybox: Buildpy, server: tuple[subprocess.Popen[str], int]
) -> None:
    proc, port = server
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    assert b"200 OK" in reply and b"served-by-buildpy" in reply
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not mounts_under(busybox.root)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
