"""The classic Docker walkthrough, end to end, as a user meets it (issue 7).

python:3.11-slim is made here (debootstrap from the configured Debian mirror,
`buildpy import`, then examples/python-base) and pushed to a local registry as the
Docker Hub mirror; examples/fastapi, whose Dockerfile is the walkthrough's
unchanged, is built on a clean store that finds its base through the mirror,
pushed, pulled into another clean store, run with `buildpy run --network host`,
and asked for its JSON with a real HTTP request. The steps that need the network
(apt-get, pip) reach Debian's mirror and PyPI through the host, as they would
in docker; every server this test starts listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.buildpy.registry_server import Registry
from tests.buildpy.test_build import instructions
from tests.conftest import REPO, Buildpy, unmount_all

pytestmark = pytest.mark.slow

APP_PORT = 8000


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _mirror_env(registry: Registry) -> dict[str, str]:
    return {"BUILDPY_REGISTRY_MIRRORS": registry.host}


def test_fastapi_app_built_pushed_pulled_and_run(
    python_base: Buildpy, registry: Registry, buildpy: Buildpy, tmp_path
):
    app = tmp_path / "fastapi"
    shutil.copytree(REPO / "examples/fastapi", app)
    ref = f"{registry.host}/fastapi-app:1"

    # A clean store: FROM python:3.11-slim comes through the mirror.
    built = buildpy.run(
        "build", "--progress", "plain", "-t", ref, app, env=_mirror_env(registry)
    )
    assert "Successfully installed" in built.stderr and "fastapi" in built.stderr

    image = json.loads(buildpy.run("inspect", ref).stdout)[0]
    config = image["Config"]
    assert config["config"]["Entrypoint"] == ["python", "server.py"]
    assert config["config"]["WorkingDir"] == "/app"
    assert config["config"]["ExposedPorts"] == {"8000/tcp": {}}
    ours = [h["created_by"] for h in config["history"][-6:]]
    assert ours == [
        "WORKDIR /app",
        "COPY requirements.txt . # buildkit",
        "RUN /bin/sh -c pip install --no-cache-dir -r requirements.txt # buildkit",
        "COPY ./server.py . # buildkit",
        "EXPOSE map[8000/tcp:{}]",
        'ENTRYPOINT ["python" "server.py"]',
    ]
    base = json.loads(python_base.run("inspect", "python:3.11-slim").stdout)[0]
    base_layers = base["Config"]["rootfs"]["diff_ids"]
    layers = config["rootfs"]["diff_ids"]
    # The base's layers untouched, then one per step that changed files.
    assert layers[: len(base_layers)] == base_layers
    assert len(layers) == len(base_layers) + 4
    assert len(layers) == sum(1 for h in config["history"] if not h.get("empty_layer"))

    buildpy.run("push", ref)

    # Another clean store pulls it and runs it, as the walkthrough's reader would.
    runner = Buildpy(tmp_path / "runner")
    try:
        runner.run("pull", ref)
        if not _port_free(APP_PORT):
            pytest.skip(f"port {APP_PORT} is taken on this machine")
        server = subprocess.Popen(
            [sys.executable, "-m", "buildpy", "run", "--network", "host", ref],
            env={**os.environ, "BUILDPY_ROOT": str(runner.root)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            answer = _get_json(f"http://127.0.0.1:{APP_PORT}/", server)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        assert answer == {"message": "Hello from inside Docker!"}
    finally:
        unmount_all(runner.root)
        shutil.rmtree(runner.root, ignore_errors=True)

    # An edit of server.py re-runs only the last COPY and what follows.
    server_py = app / "server.py"
    server_py.write_text(server_py.read_text().replace("Hello", "Hi"))
    rebuilt = buildpy.run(
        "build", "--progress", "plain", "-t", ref, app, env=_mirror_env(registry)
    )
    assert instructions(rebuilt.stderr, "DONE") == ["COPY ./server.py ."]
    assert "RUN pip install --no-cache-dir -r requirements.txt" in instructions(
        rebuilt.stderr, "CACHED"
    )


def _get_json(url: str, server: subprocess.Popen[bytes]) -> dict[str, str]:
    """``curl URL``, as the walkthrough's reader does, until the server answers:
    uvicorn needs a moment to start. Bounded in time."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = server.stdout.read().decode() if server.stdout else ""
            raise AssertionError(f"the app exited {server.returncode}: {output}")
        answer = subprocess.run(
            ["curl", "-sf", "--max-time", "2", url], capture_output=True, text=True
        )
        if answer.returncode == 0:
            return json.loads(answer.stdout)
        time.sleep(0.2)
    raise AssertionError(f"no answer from {url} within 60 s")


def test_multistage_keeps_only_the_binary(python_base: Buildpy, tmp_path):
    """The builder stage has gcc; the final scratch stage only the static binary."""
    store = python_base
    context = tmp_path / "multistage"
    shutil.copytree(REPO / "examples/multistage", context)
    store.run("build", "-q", "-t", "hello-static:1", context)
    store.run("build", "-q", "--target", "builder", "-t", "hello-builder:1", context)
    run = store.run("run", "--rm", "hello-static:1")
    assert run.stdout == "Hello from a static binary in a scratch image!\n"

    def size(name: str) -> int:
        image = json.loads(store.run("inspect", name).stdout)[0]
        return sum(layer["size"] for layer in image["Manifest"]["layers"])

    final, builder = size("hello-static:1"), size("hello-builder:1")
    assert final < 2_000_000 < 100_000_000 < builder
