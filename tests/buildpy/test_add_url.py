"""ADD <url>, end to end against a real HTTP server on 127.0.0.1: the file, its
name, mode and mtime as the Dockerfile reference gives them, --checksum, the cache
(a rebuild asks the server with ETag and transfers nothing), and the one-line
errors."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import Buildpy, http_server, write_context

MODIFIED = 1_600_000_000  # 2020-09-13, the Last-Modified of every served file


@dataclass
class Files:
    """What the server serves, and what it was asked."""

    content: dict[str, bytes] = field(default_factory=dict)
    full_answers: list[str] = field(default_factory=list)  # paths answered 200
    not_modified: list[str] = field(default_factory=list)  # paths answered 304


def _handler(files: Files) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = files.content.get(self.path)
            if body is None:
                self.send_error(404)
                return
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                files.not_modified.append(self.path)
                self.send_response(304)
                self.end_headers()
                return
            files.full_answers.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            self.send_header(
                "Last-Modified", email.utils.formatdate(MODIFIED, usegmt=True)
            )
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def served() -> Iterator[tuple[str, Files]]:
    files = Files()
    with http_server(_handler(files)) as port:
        yield f"http://127.0.0.1:{port}", files


def _tarball() -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            info = tarfile.TarInfo("inside.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"in\n"))
    return out.getvalue()


def test_add_url_file_name_mode_mtime_and_cache(
    busybox: Buildpy, served: tuple[str, Files], tmp_path: Path
) -> None:
    url, files = served
    files.content["/dl/hello.txt"] = b"hello from the web\n"
    files.content["/dl/tool.tar.gz"] = _tarball()
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": f"FROM busybox\n"
            f"ADD {url}/dl/hello.txt /app/\n"
            f"ADD --chmod=755 {url}/dl/hello.txt /bin/hello\n"
            f"ADD {url}/dl/tool.tar.gz /archives/\n"
            "RUN stat -c '%a %Y' /app/hello.txt /bin/hello > /stat\n"
        },
    )
    out = tmp_path / "out"
    first = busybox.build(context, "-o", f"type=local,dest={out}")
    assert (out / "app" / "hello.txt").read_bytes() == b"hello from the web\n"
    assert (out / "stat").read_text() == f"600 {MODIFIED}\n755 {MODIFIED}\n"
    # A remote archive is a file, not extracted (BuildKit's rule without --unpack).
    assert (out / "archives" / "tool.tar.gz").read_bytes() == _tarball()
    assert "[internal] fetch" in first.stderr
    assert sorted(files.full_answers) == ["/dl/hello.txt", "/dl/tool.tar.gz"]

    # The rebuild asks again, is told nothing changed, and runs nothing.
    files.full_answers.clear()
    again = busybox.build(context).stderr
    assert "cache miss" not in again
    assert files.full_answers == []
    assert sorted(files.not_modified) == ["/dl/hello.txt", "/dl/tool.tar.gz"]

    # New content behind the same URL: the steps that read it run again.
    files.content["/dl/hello.txt"] = b"hello again\n"
    changed = busybox.build(context, "-o", f"type=local,dest={tmp_path / 'two'}")
    assert (tmp_path / "two" / "app" / "hello.txt").read_bytes() == b"hello again\n"
    assert "cache miss" in changed.stderr


def test_add_url_checksum(
    busybox: Buildpy, served: tuple[str, Files], tmp_path: Path
) -> None:
    url, files = served
    body = b"pinned\n"
    files.content["/pinned.txt"] = body
    good = "sha256:" + hashlib.sha256(body).hexdigest()
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": f"FROM busybox\nADD --checksum={good} {url}/pinned.txt /p\n"},
    )
    out = tmp_path / "out"
    busybox.build(context, "-o", f"type=local,dest={out}")
    assert (out / "p").read_bytes() == body
    # Pinned and cached: the rebuild does not even ask the server.
    files.full_answers.clear()
    busybox.build(context)
    assert files.full_answers == files.not_modified == []

    wrong = "sha256:" + "0" * 64
    (context / "Dockerfile").write_text(
        f"FROM busybox\nADD --checksum={wrong} {url}/pinned.txt /p\n"
    )
    failed = busybox.build(context, check=False)
    assert failed.returncode == 1
    assert f"ADD {url}/pinned.txt: checksum mismatch: expected {wrong}, got {good}" in (
        failed.stderr
    )
    assert "Traceback" not in failed.stderr


def test_add_url_errors(
    busybox: Buildpy, served: tuple[str, Files], tmp_path: Path
) -> None:
    url, _ = served
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": f"FROM busybox\nADD {url}/nothing.txt /x\n"}
    )
    missing = busybox.build(context, check=False)
    assert missing.returncode == 1
    assert f"ADD {url}/nothing.txt: the server answered 404 Not Found" in missing.stderr
    (context / "Dockerfile").write_text(f"FROM busybox\nCOPY {url}/a.txt /x\n")
    copy = busybox.build(context, check=False)
    assert copy.returncode == 3
    assert "source can't be a URL for COPY" in copy.stderr
    (context / "Dockerfile").write_text(f"FROM busybox\nADD {url}/ /dir/\n")
    nameless = busybox.build(context, check=False)
    assert nameless.returncode == 3
    assert "cannot determine a file name from the URL" in nameless.stderr
    # The test suite's network guard: nothing leaves this machine.
    assert os.environ.get("BUILDPY_REGISTRY_ALLOW") == "loopback"
    (context / "Dockerfile").write_text(
        "FROM busybox\nADD https://example.invalid/a.txt /x\n"
    )
    away = busybox.build(context, check=False)
    assert away.returncode == 1
    assert "refusing to contact example.invalid" in away.stderr
