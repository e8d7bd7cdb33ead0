"""The pre-commit hooks of .pre-commit-hooks.yaml, run by pre-commit itself on
a throwaway git repository: a good Dockerfile passes, a bad one fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

PRE_COMMIT = shutil.which("pre-commit")
# What pip needs to install buildpy into the hook's environment.
SHIPPED = ("buildpy", "frontend", "solver", "snapshotter", "runtime")
SHIPPED_FILES = ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml")


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip()


@pytest.fixture
def hook_repo(tmp_path: Path) -> tuple[Path, str]:
    """This working tree's hooks and packages as a committed repository (the
    hooks file may not be committed in the real one yet)."""
    repo = tmp_path / "hooks"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SHIPPED:
        shutil.copytree(REPO / name, repo / name, ignore=ignore)
    for name in SHIPPED_FILES:
        shutil.copy(REPO / name, repo / name)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "hooks")
    return repo, git(repo, "rev-parse", "HEAD")


def pre_commit_run(project: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRE_COMMIT_HOME": str(cache)}
    assert PRE_COMMIT is not None
    return subprocess.run(
        [PRE_COMMIT, "run", "--all-files"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(PRE_COMMIT is None, reason="pre-commit is not installed")
def test_lint_hook_passes_good_and_fails_bad_dockerfile(
    tmp_path: Path, hook_repo: tuple[Path, str]
) -> None:
    repo, rev = hook_repo
    project = tmp_path / "project"
    project.mkdir()
    git(project, "init", "-q")
    (project / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {repo}\n  rev: {rev}\n  hooks:\n  - id: buildpy-lint\n"
    )
    (project / "Dockerfile").write_text('FROM busybox AS base\nCMD ["sh"]\n')
    git(project, "add", "-A")
    cache = tmp_path / "pre-commit-cache"

    good = pre_commit_run(project, cache)
    if good.returncode != 0 and "An unexpected error has occurred" in good.stdout:
        pytest.skip(f"pre-commit cannot install the hook here: {good.stdout[-400:]}")
    assert good.returncode == 0, good.stdout
    assert "Passed" in good.stdout

    (project / "app.Dockerfile").write_text(
        "# check=error=true\nFROM busybox as base\n"
    )
    git(project, "add", "-A")
    bad = pre_commit_run(project, cache)
    assert bad.returncode == 1, bad.stdout
    assert "Failed" in bad.stdout
    assert "WARNING: FromAsCasing - " in bad.stdout
    assert "app.Dockerfile:2\n" in bad.stdout
    assert "ERROR: lint violation found for rules: FromAsCasing" in bad.stdout
