"""Builds and archives through pipes, as docker's commands take them:
``build -f - CONTEXT`` and ``build -`` (the Dockerfile or the whole context from
stdin), ``build -o -`` and ``-o type=oci,dest=-``, ``save`` without ``-o`` and
``load`` without ``-i``. The same through the daemon: in test_daemon.py (the
client's stdin passed with the request) and test_daemon_tcp.py (read by the
client)."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
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


# --- archives to stdout ---------------------------------------------------------


def test_archives_to_stdout(busybox: Buildpy, tmp_path):
    ctx = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nCOPY a.txt /a\n", "a.txt": "x\n"},
    )
    rootfs = tmp_path / "rootfs.tar"
    busybox.run("build", "-o", "-", ctx, stdout=rootfs)  # as buildx: a tar
    with tarfile.open(rootfs) as tar:
        assert tar.extractfile("a").read() == b"x\n"  # type: ignore[union-attr]
        assert "bin/busybox" in tar.getnames()
    oci = tmp_path / "oci.tar"
    busybox.run("build", "-t", "app:1", "-o", "type=oci,dest=-", ctx, stdout=oci)
    check = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{oci}"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    saved = tmp_path / "saved.tar"
    busybox.run("build", "-t", "app:1", ctx)
    busybox.run("save", "app:1", stdout=saved)  # as docker save: stdout
    with tarfile.open(saved) as tar:
        assert {"index.json", "manifest.json", "oci-layout"} <= set(tar.getnames())

    refused = [
        (("build", "-q", "-o", "-", ctx), "ERROR: --quiet prints the image ID"),
        (("build", "-o", "-", "-o", "type=oci,dest=-", ctx), "ERROR: only one"),
        (("build", "-o", "type=local,dest=-", ctx), "ERROR: invalid --output"),
    ]
    for args, start in refused:
        proc = busybox.run(*args, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith(start), proc.stderr
        assert proc.stderr.count("\n") == 1


def test_no_archive_to_a_terminal(busybox: Buildpy, tmp_path):
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\n"})
    for args in (("build", "-o", "-", ctx), ("save", "busybox")):
        leader, follower = pty.openpty()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "buildpy", *map(str, args)],
                stdin=subprocess.DEVNULL,
                stdout=follower,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "BUILDPY_ROOT": str(busybox.root)},
                timeout=120,
            )
        finally:
            os.close(follower)
            os.close(leader)
        assert proc.returncode == 2
        assert proc.stderr == (
            "ERROR: refusing to write an archive to the terminal: redirect stdout "
            "to a file or a pipe\n"
        )


def test_load_from_stdin(busybox: Buildpy, tmp_path):
    image = json.loads(busybox.run("inspect", "busybox").stdout)[0]["Id"]
    saved = tmp_path / "saved.tar"
    busybox.run("save", "busybox", stdout=saved)
    busybox.run("rmi", "busybox")
    assert busybox.run("load", stdin=saved).stdout == "Loaded image: busybox:latest\n"
    assert json.loads(busybox.run("inspect", "busybox").stdout)[0]["Id"] == image
    empty = stdin_file(tmp_path, "empty", b"")
    junk = stdin_file(tmp_path, "junk", "not an archive\n")
    for given, line in [
        (empty, "ERROR: cannot read the archive on stdin: it is empty\n"),
        (
            junk,
            "ERROR: cannot read the archive on stdin: not a tar archive "
            "(plain, gzip, bzip2 or xz)\n",
        ),
    ]:
        proc = busybox.run("load", stdin=given, check=False)
        assert (proc.returncode, proc.stderr) == (2, line)
    assert leftovers(busybox) == []
