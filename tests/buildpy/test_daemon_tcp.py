"""``buildpy serve --addr tcp://...`` with TLS client certificates, and the context
sent over the wire: only the files a build reads, only those the daemon lacks.

Certificates are made with the openssl command in a temporary directory; the
daemon listens on 127.0.0.1, on a port the kernel picks (``tcp://127.0.0.1:0``:
the daemon's first line names the port)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy import remoteclient
from tests.buildpy.test_add_git import _Quiet, git
from tests.buildpy.test_daemon import (
    Daemon,
    client_imports,
    foreign_modules,
    launch_daemon,
    processes_of,
    start_daemon,
)
from tests.buildpy.test_stdin import PIPED, context_archive, stdin_file
from tests.conftest import Buildpy, http_server, mounts_under, write_context

SDE = {"SOURCE_DATE_EPOCH": "1700000000"}  # the same image ID from two builds


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}-key.pem", "-out", f"{name}.pem",
        "-subj", f"/CN={name}", "-days", "2", cwd=d,
    )  # fmt: skip


def _make_cert(d: Path, ca: str, name: str, usage: str) -> None:
    ext = d / f"{name}.cnf"
    ext.write_text(
        f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
        f"{ca}-key.pem", "-CAcreateserial", "-out", f"{name}-cert.pem", "-days", "2",
        "-extfile", ext.name, cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem signs server-* and client-*; other-ca.pem signs stranger-*."""
    d = tmp_path_factory.mktemp("tls")
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _make_cert(d, "ca", "server", "serverAuth")
    _make_cert(d, "ca", "client", "clientAuth")
    _make_cert(d, "other-ca", "stranger", "clientAuth")
    return d


class TcpDaemon(Daemon):
    def received(self) -> list[tuple[int, int, int]]:
        """(entries, files, bytes) of each context the daemon received."""
        found = re.findall(
            r"context from \S+: (\d+) entries, (\d+) files \((\d+) bytes\)",
            "".join(self.log),
        )
        return [tuple(map(int, f)) for f in found]  # type: ignore[misc]


@pytest.fixture
def tcp_daemon(busybox: Buildpy, certs: Path) -> Iterator[TcpDaemon]:
    d = launch_daemon(
        busybox.root,
        "tcp://127.0.0.1:0",
        "--tlscacert",
        str(certs / "ca.pem"),
        "--tlscert",
        str(certs / "server-cert.pem"),
        "--tlskey",
        str(certs / "server-key.pem"),
        kind=TcpDaemon,
    )
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", d.addr), d.log
    try:
        yield d
    finally:
        assert d.stop() == 0, "".join(d.log)
    assert processes_of(busybox.root) == [], "".join(d.log)
    assert list((busybox.root / "remote/sessions").iterdir()) == []


def over_tcp(
    buildpy: Buildpy,
    daemon: TcpDaemon,
    certs: Path,
    *args: str | os.PathLike[str],
    client: str | None = "client",
    ca: str = "ca",
    env: dict[str, str] | None = None,
    check: bool = True,
    stdin: Path | None = None,
    stdout: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    tls = ["--tlscacert", str(certs / f"{ca}.pem")]
    if client is not None:
        tls += ["--tlscert", str(certs / f"{client}-cert.pem")]
        tls += ["--tlskey", str(certs / f"{client}-key.pem")]
    return buildpy.run(
        "--addr",
        daemon.addr,
        *tls,
        *args,
        env=env,
        check=check,
        stdin=stdin,
        stdout=stdout,
    )


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_tls_client_certificates(
    busybox: Buildpy, tcp_daemon: TcpDaemon, certs: Path, tmp_path
):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx/Dockerfile").write_text("FROM busybox\nRUN echo over-tcp\n")
    ok = over_tcp(
        busybox, tcp_daemon, certs, "build", "--progress", "plain", tmp_path / "ctx"
    )
    assert "over-tcp" in ok.stderr

    # BUILDPY_CERT_PATH as DOCKER_CERT_PATH: ca.pem, cert.pem, key.pem.
    cert_path = tmp_path / "certs"
    cert_path.mkdir()
    for src, dst in (("ca", "ca"), ("client-cert", "cert"), ("client-key", "key")):
        (cert_path / f"{dst}.pem").write_bytes((certs / f"{src}.pem").read_bytes())
    images = busybox.run(
        "images",
        env={"BUILDPY_HOST": tcp_daemon.addr, "BUILDPY_CERT_PATH": str(cert_path)},
    )
    assert "busybox" in images.stdout

    refused = "refused the connection"
    nocert = over_tcp(busybox, tcp_daemon, certs, "images", client=None, check=False)
    assert nocert.returncode == 4
    assert refused in _one_line(nocert.stderr)
    stranger = over_tcp(
        busybox, tcp_daemon, certs, "images", client="stranger", check=False
    )
    assert stranger.returncode == 4
    assert refused in _one_line(stranger.stderr)
    # A daemon whose certificate the client's CA did not sign.
    other = over_tcp(
        busybox,
        tcp_daemon,
        certs,
        "images",
        client="stranger",
        ca="other-ca",
        check=False,
    )
    assert other.returncode == 4
    assert "CERTIFICATE_VERIFY_FAILED" in _one_line(other.stderr)
    assert (
        len(re.findall(r"refused 127\.0\.0\.1:\d+: TLS", "".join(tcp_daemon.log))) >= 2
    )

    # TCP without TLS: refused by the client and by the daemon, one line each.
    plain = busybox.run("--addr", tcp_daemon.addr, "images", check=False)
    assert plain.returncode == 2
    assert "TCP without TLS is refused" in _one_line(plain.stderr)
    serve = busybox.run("serve", "--addr", "tcp://127.0.0.1:0", check=False, timeout=60)
    assert serve.returncode == 2
    assert "TCP without TLS is refused" in _one_line(serve.stderr)


def test_tcp_client_imports_only_the_standard_library(
    tcp_daemon: TcpDaemon, certs: Path
):
    imported = client_imports(
        "--addr",
        tcp_daemon.addr,
        "--tlscacert",
        str(certs / "ca.pem"),
        "--tlscert",
        str(certs / "client-cert.pem"),
        "--tlskey",
        str(certs / "client-key.pem"),
    )
    assert "buildpy.remoteclient" in imported
    ours = {"buildpy", "buildpy.entry", "buildpy.client"}
    ours |= {"buildpy.remoteclient", "buildpy.tlsaddr", "buildpy.ignorefile"}
    assert foreign_modules(imported, ours) == []


def _big_context(root: Path) -> tuple[int, int]:
    """1,000 files the build copies, files it does not name, a large ignored
    directory; (files, bytes) the build reads."""
    (root / "src/sub").mkdir(parents=True)
    total = 0
    for i in range(1000):
        where = root / ("src/sub" if i % 2 else "src") / f"f{i:04}.txt"
        text = f"file {i}\n" * (1 + i % 7)
        where.write_text(text)
        total += len(text)
    (root / "app.txt").write_text("app\n")
    total += 4
    (root / "notes").mkdir()
    for i in range(50):
        (root / f"notes/n{i}.md").write_text(f"not copied {i}\n")
    (root / "node_modules/pkg").mkdir(parents=True)
    for i in range(300):
        (root / f"node_modules/pkg/m{i}.js").write_text(f"ignored {i}\n")
    with open(root / "node_modules/big.bin", "wb") as f:
        f.truncate(32 << 20)
    (root / ".dockerignore").write_text("node_modules\n")
    (root / "Dockerfile").write_text(
        "FROM busybox\nCOPY src /src\nCOPY *.txt /app/\nRUN ls -R /src | wc -l\n"
    )
    return 1001, total


@pytest.mark.slow
def test_context_sent_once_and_only_what_is_read(
    busybox: Buildpy, tcp_daemon: TcpDaemon, certs: Path, tmp_path
):
    context = tmp_path / "ctx"
    files, size = _big_context(context)
    env = {**SDE, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = over_tcp(
        busybox, tcp_daemon, certs, "build", "-q", "-t", "t:1", context, env=env
    )
    # ".", src, src/sub, 1,000 files, app.txt; nothing of notes/ nor node_modules/.
    assert tcp_daemon.received() == [(files + 3, files, size)]
    again = over_tcp(busybox, tcp_daemon, certs, "build", "-q", context, env=env)
    assert again.stdout == first.stdout
    assert tcp_daemon.received()[-1] == (files + 3, 0, 0)
    changed = context / "src/sub/f0501.txt"
    changed.write_text("changed\n")
    third = over_tcp(busybox, tcp_daemon, certs, "build", "-q", context, env=env)
    assert tcp_daemon.received()[-1] == (files + 3, 1, len("changed\n"))
    assert third.stdout != first.stdout
    assert tcp_daemon.stop() == 0

    # The same build over the Unix socket (the context read in place) gives the
    # same image.
    unix = start_daemon(busybox.root, tmp_path / "sock/buildpy.sock")
    try:
        local = busybox.run(
            "build", "-q", context, env={**SDE, "BUILDPY_HOST": unix.addr}
        )
    finally:
        unix.stop()
    assert local.stdout == third.stdout
    assert mounts_under(busybox.root) == []


def test_tcp_build_matches_the_unix_socket(
    busybox: Buildpy, tcp_daemon: TcpDaemon, certs: Path, tmp_path
):
    """Modes, mtimes, symlinks, a hard link, equal contents, a wildcard source,
    a dockerignore re-include and a failing step: the image and the exit code
    are those of the build that reads the context in place."""
    ctx = tmp_path / "ctx"
    (ctx / "real/deep").mkdir(parents=True)
    (ctx / "real/deep/a.sh").write_text("#!/bin/sh\necho a\n")
    os.chmod(ctx / "real/deep/a.sh", 0o750)
    (ctx / "real/same1").write_text("same\n")
    (ctx / "real/same2").write_text("same\n")
    os.link(ctx / "real/same1", ctx / "real/linked")
    os.symlink("real", ctx / "alias")
    os.symlink("deep/a.sh", ctx / "real/rel-link")
    (ctx / "logs").mkdir()
    (ctx / "logs/keep.log").write_text("kept\n")
    (ctx / "logs/drop.log").write_text("dropped\n")
    os.utime(ctx / "real/same2", (1_600_000_000, 1_600_000_000))
    (ctx / ".dockerignore").write_text("logs\n!logs/keep.log\n")
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nCOPY alias/ /r/\nCOPY logs /l/\nCOPY real/*/a.sh /w/\n"
        "RUN --mount=type=bind,source=real,target=/m cat /m/same1 > /bound\n"
    )
    env = {**SDE, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    remote = over_tcp(busybox, tcp_daemon, certs, "build", "-q", ctx, env=env)
    local = busybox.run("build", "-q", ctx, env=SDE)
    assert remote.stdout == local.stdout

    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY missing.txt /\n")
    remote = over_tcp(busybox, tcp_daemon, certs, "build", ctx, env=env, check=False)
    local = busybox.run("build", ctx, check=False)
    assert remote.returncode == local.returncode != 0
    assert remote.stderr.splitlines()[-1] == local.stderr.splitlines()[-1]


# --- stdin, read by the client ---------------------------------------------------


def test_stdin_over_tcp_matches_embedded(
    busybox: Buildpy,
    tcp_daemon: TcpDaemon,
    certs: Path,
    tmp_path,
):
    ctx = write_context(tmp_path / "ctx", {"a.txt": "from the context\n"})
    piped = stdin_file(tmp_path, "piped", PIPED)
    archive = context_archive(tmp_path)
    env = {**SDE, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for args, fed in [
        (("build", "-q", "-f", "-", ctx), piped),
        (("build", "-q", "-f", "app/Dockerfile.alt", "-"), archive),
    ]:
        remote = over_tcp(busybox, tcp_daemon, certs, *args, env=env, stdin=fed)
        local = busybox.run(*args, env=SDE, stdin=fed)
        assert remote.stdout == local.stdout
    # Only the named context is remembered in the client's stat cache.
    assert len(list((tmp_path / "cache/buildpy").iterdir())) == 1
    both = over_tcp(
        busybox, tcp_daemon, certs, "build", "-f", "-", "-", stdin=piped, check=False
    )
    assert both.returncode == 2
    assert both.stderr.strip() == (
        "ERROR: cannot read both the build context and the Dockerfile from stdin"
    )
    # An archive on stdout comes back; stdin does not travel to the daemon.
    embedded, remote = tmp_path / "embedded.tar", tmp_path / "remote.tar"
    busybox.run("save", "busybox", stdout=embedded)
    over_tcp(busybox, tcp_daemon, certs, "save", "busybox", stdout=remote)
    assert remote.read_bytes() == embedded.read_bytes()
    interactive = over_tcp(
        busybox, tcp_daemon, certs, "run", "-i", "busybox", "cat", check=False
    )
    assert (interactive.returncode, interactive.stderr) == (
        2,
        "ERROR: run -i: stdin does not reach a daemon over TCP\n",
    )
    load = over_tcp(busybox, tcp_daemon, certs, "load", stdin=remote, check=False)
    assert (load.returncode, load.stderr) == (
        2,
        "ERROR: load: stdin does not reach a daemon over TCP; give -i FILE, "
        "a path on the daemon's machine\n",
    )


def test_a_git_context_is_fetched_by_the_daemon(
    busybox: Buildpy, tcp_daemon: TcpDaemon, certs: Path, tmp_path
):
    """As buildkitd fetches one: no context travels, the daemon clones."""
    work = tmp_path / "work"
    write_context(work, {"Dockerfile": "FROM busybox\nCOPY a /a\n", "a": "git\n"})
    git("init", "-q", "-b", "main", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "one", cwd=work)
    served = tmp_path / "served"
    git("clone", "-q", "--bare", str(work), str(served / "r.git"), cwd=tmp_path)
    git("update-server-info", cwd=served / "r.git")
    with http_server(functools.partial(_Quiet, directory=str(served))) as port:
        url = f"http://127.0.0.1:{port}/r.git#main"
        remote = over_tcp(busybox, tcp_daemon, certs, "build", "-q", url, env=SDE)
        local = busybox.run("build", "-q", url, env=SDE)
    assert remote.stdout == local.stdout
    assert tcp_daemon.received() == []  # no context was sent


def test_scanner_reads_only_changed_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    for i in range(20):
        (ctx / f"src/{i}.py").write_text(f"print({i})\n")
    (ctx / "src/skip.txt").write_text("not a .py\n")
    needs = {"sources": [[["lit", "src"], ["re", r"[^/]*\.py"]]], "ignore": []}
    later = lambda: __import__("time").time_ns() + 10**10  # noqa: E731 - settled
    first = remoteclient.scan(str(ctx), needs, clock=later)
    assert first.hashed == 20
    assert "src/skip.txt" not in first.entries
    second = remoteclient.scan(str(ctx), needs, clock=later)
    assert second.hashed == 0
    (ctx / "src/3.py").write_text("print('three')\n")
    third = remoteclient.scan(str(ctx), needs, clock=later)
    assert third.hashed == 1
    assert third.entries["src/3.py"]["digest"] != first.entries["src/3.py"]["digest"]
    # A record made when the file was just written is not trusted (racy rule).
    (ctx / "src/4.py").write_text("print('four')\n")
    import time

    remoteclient.scan(str(ctx), needs, clock=time.time_ns)
    assert remoteclient.scan(str(ctx), needs, clock=later).hashed >= 1
