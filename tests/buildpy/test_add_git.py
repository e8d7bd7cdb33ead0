"""ADD <git url>, end to end against a real repository served over HTTP on
127.0.0.1 (git's "dumb" protocol from a static server): refs, tags, a subdir,
--keep-git-dir, --checksum, the cache following the ref's commit, one-line
errors."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import Buildpy, http_server, write_context

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_AUTHOR_DATE": "2021-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2021-01-01T00:00:00Z",
}
COMMIT_TIME = 1609459200  # 2021-01-01T00:00:00Z


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(URL of the bare repository, its working clone to commit in)."""
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "README").write_text("one\n")
    (work / "sub").mkdir()
    (work / "sub" / "x.txt").write_text("x one\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "one", cwd=work)
    git("tag", "v1", cwd=work)
    served = tmp_path / "served"
    served.mkdir()
    git("clone", "-q", "--bare", str(work), str(served / "repo.git"), cwd=tmp_path)
    git("update-server-info", cwd=served / "repo.git")
    with http_server(functools.partial(_Quiet, directory=str(served))) as port:
        yield f"http://127.0.0.1:{port}/repo.git", work


def push(work: Path, bare: Path) -> None:
    git("push", "-q", str(bare), "main", cwd=work)
    git("update-server-info", cwd=bare)


def test_add_git_refs_subdir_and_keep_git_dir(
    busybox: Buildpy, repo: tuple[str, Path], tmp_path: Path
) -> None:
    url, work = repo
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            f"ADD {url} /src/\n"
            f"ADD {url}#v1:sub /s/\n"
            f"ADD --keep-git-dir=true {url}#main /k/\n"
        },
    )
    out = tmp_path / "out"
    busybox.build(context, "-o", f"type=local,dest={out}")
    assert sorted(p.name for p in (out / "src").iterdir()) == ["README", "sub"]
    assert (out / "src" / "sub" / "x.txt").read_text() == "x one\n"
    assert int((out / "src" / "README").stat().st_mtime) == COMMIT_TIME
    assert sorted(p.name for p in (out / "s").iterdir()) == ["x.txt"]
    assert (out / "k" / ".git").is_dir()

    # The branch moves: the steps that read it run again; the tag's is cached.
    (work / "README").write_text("two\n")
    git("commit", "-q", "-am", "two", cwd=work)
    push(work, tmp_path / "served" / "repo.git")
    out2 = tmp_path / "out2"
    again = busybox.build(context, "-o", f"type=local,dest={out2}").stderr
    assert (out2 / "src" / "README").read_text() == "two\n"
    assert (out2 / "s" / "x.txt").read_text() == "x one\n"
    assert "cache miss" in again
    rebuilt = busybox.build(context).stderr
    assert "cache miss" not in rebuilt


def test_add_git_checksum_and_errors(
    busybox: Buildpy, repo: tuple[str, Path], tmp_path: Path
) -> None:
    url, work = repo
    commit = git("rev-parse", "HEAD", cwd=work)
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": f"FROM busybox\nADD --checksum={commit} {url}#v1 /src/\n"},
    )
    out = tmp_path / "out"
    busybox.build(context, "-o", f"type=local,dest={out}")
    assert (out / "src" / "README").read_text() == "one\n"

    wrong = "0" * 40
    (context / "Dockerfile").write_text(
        f"FROM busybox\nADD --checksum={wrong} {url}#v1 /src/\n"
    )
    failed = busybox.build(context, check=False)
    assert failed.returncode == 1
    assert f"checksum mismatch: expected {wrong}, got {commit}" in failed.stderr
    (context / "Dockerfile").write_text(f"FROM busybox\nADD {url}#nope /src/\n")
    missing = busybox.build(context, check=False)
    assert missing.returncode == 1
    assert "no branch or tag 'nope' in the repository" in missing.stderr
    assert "Traceback" not in missing.stderr + failed.stderr
    (context / "Dockerfile").write_text(
        "FROM busybox\nADD https://user:s3cret@example.invalid/x/repo.git /src/\n"
    )
    away = busybox.build(context, check=False)
    assert away.returncode == 1
    assert "refusing to contact example.invalid" in away.stderr
    assert "s3cret" not in away.stderr  # a token in the URL is not shown


def test_a_git_repository_is_a_build_context(
    busybox: Buildpy, repo: tuple[str, Path], tmp_path: Path
) -> None:
    url, work = repo
    (work / "sub" / "Dockerfile").write_text("FROM busybox\nCOPY x.txt /x\n")
    (work / "sub" / "Dockerfile.other").write_text("FROM busybox\nCOPY . /all/\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "dockerfiles", cwd=work)
    push(work, tmp_path / "served" / "repo.git")

    context = f"{url}#main:sub"  # a URL: Buildpy.build would take it for a path

    def build(*flags: str) -> str:
        return busybox.run("build", "--progress", "plain", *flags, context).stderr

    out = tmp_path / "out"
    build("-o", f"type=local,dest={out}")
    assert (out / "x").read_text() == "x one\n"
    assert int((out / "x").stat().st_mtime) == COMMIT_TIME  # the commit's time
    # -f names a file of the repository's context; no .git in the context.
    other = tmp_path / "other"
    build("-f", "Dockerfile.other", "-o", f"type=local,dest={other}")
    assert sorted(p.name for p in (other / "all").iterdir()) == [
        "Dockerfile", "Dockerfile.other", "x.txt",
    ]  # fmt: skip
    # A second build of the same commit is all cached; nothing is left behind.
    again = build()
    assert "cache miss" not in again
    assert list((busybox.root / "tmp").iterdir()) == []

    for bad, says in [
        (f"{url}#nope", "build context http://127.0.0.1:"),
        (
            "https://user:s3cret@example.invalid/x/repo.git",
            "build context https://***@example.invalid/x/repo.git: refusing to",
        ),
    ]:
        failed = busybox.run("build", bad, check=False)
        assert failed.returncode == 1, failed.stderr
        assert failed.stderr.startswith(f"ERROR: {says}"), failed.stderr
        assert "s3cret" not in failed.stderr and "Traceback" not in failed.stderr
