"""Fixtures of the walkthrough tests (issue 7), shared for the whole session: the
Debian and Python base images take a minute to make, and both the walkthrough and
its buildah comparison build on them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.buildpy.registry_server import Registry, running_registry
from tests.conftest import REPO, Buildpy, unmount_all


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def python_base(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Buildpy]:
    """A store holding debian:bookworm and python:3.11-slim, the latter pushed to
    the registry as the Docker Hub mirror's library/python:3.11-slim."""
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap is installed by .ci/run")
    store = Buildpy(tmp_path_factory.mktemp("base") / "state")
    env = {**os.environ, "BUILDPY_ROOT": str(store.root), "BUILDKIT_PROGRESS": "plain"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    try:
        made = subprocess.run(
            [str(REPO / "scripts/make-python-base.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert made.returncode == 0, made.stderr[-3000:]
        store.run(
            "tag", "python:3.11-slim", f"{registry.host}/library/python:3.11-slim"
        )
        store.run("push", f"{registry.host}/library/python:3.11-slim")
        yield store
    finally:
        unmount_all(store.root)
        shutil.rmtree(store.root, ignore_errors=True)
