"""``build -f - CONTEXT`` and ``build -``: the Dockerfile or the whole context
from stdin, as docker build reads them. The same through the daemon: in
test_daemon.py (the client's stdin passed with the request) and
test_daemon_tcp.py (read by the client)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tests.conftest import Buildpy, write_context

PIPED = "FROM busybox\nCOPY a.txt /a\nRUN cat /a > /b && echo piped > /c\n"


def stdin_file(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def context_archive(
    tmp_path: Path,
    compression: str = "gz",
    members: dict[str, tuple[bytes, int]] | None = None,
) -> Path:
    """A context archive of ``members`` (name: (content, mode)), by default a
    Dockerfile in a subdirectory, a group-writable file and a setuid one."""
    members = members or {
        "app/Dockerfile.alt": (
            b"FROM busybox\nCOPY . /src/\nRUN cat /src/hello > /copied\n",
            0o644,
        ),
        "hello": (b"hello from the archive\n", 0o664),
        "tool": (b"#!/bin/sh\n", 0o4755),
    }
    path = tmp_path / f"context.tar{'.' + compression if compression else ''}"
    with tarfile.open(path, f"w:{compression}") as archive:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
            archive.addfile(info, io.BytesIO(data))
    return path


def leftovers(buildpy: Buildpy) -> list[Path]:
    tmp = buildpy.root / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


# --- embedded ---------------------------------------------------------------------


def test_dockerfile_from_stdin_reads_the_given_context(busybox: Buildpy, tmp_path):
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\nRUN echo not this one > /c\n",
            "Dockerfile.dockerignore": "a.txt\n",  # beside the context's file only
            ".dockerignore": "secret\n",
            "a.txt": "from the context\n",
            "secret": "never copied\n",
        },
    )
    piped = stdin_file(tmp_path, "piped", PIPED + "COPY . /all/\n")
    out = tmp_path / "out"
    busybox.run("build", "-f", "-", "-o", f"type=local,dest={out}", ctx, stdin=piped)
    assert (out / "b").read_text() == "from the context\n"
    assert (out / "c").read_text() == "piped\n"
    assert (out / "all/a.txt").exists() and not (out / "all/secret").exists()

    broken = stdin_file(tmp_path, "broken", "FROM busybox\nNOPE x\n")
    proc = busybox.run("build", "-f", "-", ctx, stdin=broken, check=False)
    assert proc.returncode == 3
    assert "Dockerfile:2" in proc.stderr and ">>> NOPE x" in proc.stderr


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_context_archive_from_stdin(busybox: Buildpy, tmp_path, compression: str):
    archive = context_archive(tmp_path, compression)
    out = tmp_path / "out"
    args = ("build", "-f", "app/Dockerfile.alt", "-o", f"type=local,dest={out}", "-")
    busybox.run(*args, stdin=archive)
    assert (out / "copied").read_text() == "hello from the archive\n"
    # The archive's modes are the files' modes, as a directory's would be.
    assert (out / "src/hello").stat().st_mode & 0o7777 == 0o664
    assert (out / "src/tool").stat().st_mode & 0o7777 == 0o4755
    assert (out / "src/app/Dockerfile.alt").exists()
    assert leftovers(busybox) == []


def test_dockerfile_alone_on_stdin_has_no_context(busybox: Buildpy, tmp_path):
    alone = stdin_file(tmp_path, "alone", "FROM busybox\nRUN echo ran > /r\n")
    out = tmp_path / "out"
    busybox.run("build", "-o", f"type=local,dest={out}", "-", stdin=alone)
    assert (out / "r").read_text() == "ran\n"

    copies = stdin_file(tmp_path, "copies", "FROM busybox\nCOPY a.txt /\n")
    proc = busybox.run("build", "-", stdin=copies, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        'ERROR: COPY: "a.txt" not found in the build context'
    )
    assert leftovers(busybox) == []


def test_bad_stdin_gets_one_line(busybox: Buildpy, tmp_path):
    dockerfile = stdin_file(tmp_path, "df", "FROM busybox\n")
    escaping = context_archive(
        tmp_path, members={"Dockerfile": (b"FROM busybox\n", 0o644)}
    )
    with tarfile.open(escaping, "w:gz") as archive:
        info = tarfile.TarInfo("../outside")
        archive.addfile(info, io.BytesIO(b""))
    whole = context_archive(tmp_path, "")
    truncated = stdin_file(tmp_path, "cut.tar", whole.read_bytes()[:700])
    cases = [
        (
            ("-f", "-", "-"),
            dockerfile,
            "ERROR: cannot read both the build context and the Dockerfile from stdin",
        ),
        (("-",), escaping, "ERROR: context archive on stdin: ../outside"),
        (("-",), truncated, "ERROR: cannot read the context archive on stdin"),
        (
            ("-",),
            whole,
            "ERROR: cannot read Dockerfile: the context archive on "
            "stdin has no file Dockerfile",
        ),
        (
            ("-f", "Dockerfile", "-"),
            dockerfile,
            "ERROR: -f Dockerfile: stdin holds a Dockerfile, not a context archive",
        ),
    ]
    for args, given, line in cases:
        proc = busybox.run("build", "-q", *args, stdin=given, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(line), (args, proc.stderr)
    assert not (tmp_path / "outside").exists()
    assert leftovers(busybox) == []
    busybox.run("build", "-q", "-", stdin=dockerfile)  # the store still builds
