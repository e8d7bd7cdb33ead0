"""``buildpy serve`` and the thin client: every command gives the same output and exit
code through the daemon as embedded, ten builds at once, a client interrupted and a
daemon stopped mid-build, the socket's mode, the client's imports, the API."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildpy import client
from tests.buildpy.test_interrupt import processes_running
from tests.buildpy.test_stdin import PIPED, context_archive, leftovers, stdin_file
from tests.conftest import REPO, Buildpy, mounts_under, write_context

STOPPED = "ERROR: the buildpy daemon stopped; the build was canceled"


def daemon_processes() -> list[str]:
    """Zygotes, spares and children of any buildpy daemon (their /proc comm)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            comm in ("buildpy-zygote", "buildpy-spare", "buildpy-child")
            and state != "Z"
        ):
            found.append(f"{pid} {comm}")
    return found


def processes_of(root: Path) -> list[str]:
    """daemon_processes() of the daemon over ``root`` alone: other daemons (of
    other tests, or a user's) may run on this machine at the same time."""
    mine = []
    for entry in daemon_processes():
        pid = entry.split()[0]
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"BUILDPY_ROOT={root}".encode() in environ:
            mine.append(entry)
    return mine


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    addr: str  # as the daemon says it listens (a tcp port 0 made concrete)
    log: list[str]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


D = TypeVar("D", bound=Daemon)


def launch_daemon(root: Path, addr: str, *flags: str, kind: type[D] = Daemon) -> D:
    """``buildpy serve --addr ADDR FLAGS --root ROOT``, once it listens; its
    stderr is collected in ``log``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildpy", "serve", "--addr", addr, *flags]
        + ["--root", str(root)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the daemon says so once it listens
    log = [first]
    match = re.search(r"listening on (\S+)", first)
    if match is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"buildpy serve did not start: {first}")

    def drain() -> None:
        assert proc.stderr is not None
        log.extend(proc.stderr)

    threading.Thread(target=drain, daemon=True).start()
    return kind(proc, match.group(1), log)  # type: ignore[return-value]


def start_daemon(root: Path, socket_path: Path) -> Daemon:
    return launch_daemon(root, f"unix://{socket_path}")


@pytest.fixture
def daemon(busybox: Buildpy, tmp_path: Path) -> Iterator[Daemon]:
    """``buildpy serve`` on a temporary socket, over the busybox store."""
    d = start_daemon(busybox.root, tmp_path / "sock" / "buildpy.sock")
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()
    assert processes_of(busybox.root) == [], "".join(d.log)


def via(buildpy: Buildpy, daemon: Daemon, *args: str | os.PathLike[str], **kw):
    """Run a command through the daemon (BUILDPY_HOST), as a user would."""
    env = {"BUILDPY_HOST": daemon.addr, **kw.pop("env", {})}
    return buildpy.run(*args, env=env, **kw)


def normalise(text: str) -> str:
    """Plain progress without its clock: step times, durations, ages."""
    text = re.sub(r"^(#\d+) \d+\.\d+ ", r"\1 T ", text, flags=re.M)
    text = re.sub(r"DONE \d+\.\d+s", "DONE Ts", text)
    text = re.sub(r"(Less than a \w+|\d+ \w+s?) ago", "AGO", text)
    return re.sub(r" +", " ", text)


# --- the same output and exit codes ----------------------------------------------


def test_every_command_matches_embedded(busybox: Buildpy, daemon: Daemon, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nRUN echo built > /f\nCOPY a /a\n", "a": "x\n"},
    )
    failing = write_context(
        tmp_path / "fail", {"Dockerfile": "FROM busybox\nRUN echo no && exit 3\n"}
    )
    broken = write_context(tmp_path / "broken", {"Dockerfile": "FROM busybox\nRUN\n"})
    rootfs = write_context(tmp_path / "rootfs", {"etc/hello": "hi\n"})
    busybox.build(context, "-t", "app:1")  # both ways below see a cached build
    cases: list[tuple[tuple[str | os.PathLike[str], ...], int]] = [
        (("build", "--progress", "plain", "-t", "app:1", context), 0),
        (("build", "-q", context), 0),
        (("build", "--progress", "plain", failing), 1),
        (("build", "--progress", "plain", broken), 3),
        (("build", "--no-such-flag", context), 2),
        (("build", "--progress", "plain", tmp_path / "missing"), 2),
        (("images",), 0),
        (("inspect", "app:1"), 0),
        (("inspect", "nope"), 2),
        (("import", "-c", 'CMD ["sh"]', rootfs, "imported:1"), 0),
        (("debug", "ast", context / "Dockerfile"), 0),
        (("--help",), 0),
    ]
    for args, code in cases:
        embedded = busybox.run(*args, check=False)
        remote = via(busybox, daemon, *args, check=False)
        what = " ".join(map(str, args))
        assert embedded.returncode == code, f"{what}: {embedded.stderr}"
        assert remote.returncode == code, f"{what}: {remote.stderr}"
        if args[0] == "import":  # the config's "created" is now: another digest
            embedded.stdout = re.sub(r"sha256:\w{64}", "DIGEST", embedded.stdout)
            remote.stdout = re.sub(r"sha256:\w{64}", "DIGEST", remote.stdout)
        assert normalise(remote.stdout) == normalise(embedded.stdout), what
        assert normalise(remote.stderr) == normalise(embedded.stderr), what


def test_relative_paths_and_build_arg_from_client_env(
    busybox: Buildpy, daemon: Daemon, tmp_path
):
    write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\nARG GREETING\nRUN echo said-$GREETING\n"
            "COPY --from=lib l.txt /l\n"
        },
    )
    write_context(tmp_path / "libdir", {"l.txt": "from lib\n"})
    proc = subprocess.run(
        [sys.executable, "-m", "buildpy", "build", "--progress", "plain"]
        + ["--build-arg", "GREETING", "--iidfile", "iid", "-o", "out"]
        + ["--build-context", "lib=libdir", "ctx"],
        env={**os.environ, "BUILDPY_HOST": daemon.addr, "GREETING": "hello"},
        cwd=tmp_path,  # a relative context: the command runs in the client's cwd
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "said-hello" in proc.stderr
    written = re.search(r"writing image (sha256:\w{64})", proc.stderr)
    assert written is not None
    assert (tmp_path / "iid").read_text() == written.group(1)
    assert (tmp_path / "out" / "l").read_text() == "from lib\n"


def test_ten_builds_at_once(busybox: Buildpy, daemon: Daemon, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nRUN echo ran-once && sleep 1 > /f\n"},
    )

    def one(_: int) -> subprocess.CompletedProcess[str]:
        return via(
            busybox, daemon, "build", "--progress", "plain", "-t", "ten", context
        )

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    images = {
        re.search(r"writing image (sha256:\w+)", r.stderr).group(1)  # type: ignore[union-attr]
        for r in results
    }
    assert len(images) == 1
    # One store, one cache: the RUN ran in one build, the nine others waited for it.
    ran = [
        r for r in results if "ran-once" in r.stderr.replace("RUN echo ran-once", "")
    ]
    assert len(ran) == 1, [r.stderr for r in results]


def _children_of(pid: int) -> dict[int, tuple[str, str]]:
    """pid -> (comm, state) of every process whose parent is ``pid``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        head, _, rest = stat_line.rpartition(")")
        fields = rest.split()
        if int(fields[1]) == pid:
            found[int(entry)] = (head.partition("(")[2], fields[0])
    return found


def test_commands_are_reaped_by_the_daemon(busybox: Buildpy, daemon: Daemon, tmp_path):
    """The commands' processes are the daemon's (a subreaper), not init's, and none
    is left a zombie: where init reaps nothing (a container's first process, this
    machine's) they would pile up, a pid each."""
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\n"})
    for _ in range(3):
        via(busybox, daemon, "build", "-q", context)
    # The zygote, and the spare that waits for the next command: nothing else.
    expected = [("buildpy-spare", False), ("buildpy-zygote", False)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = _children_of(daemon.proc.pid)
        seen = sorted((comm, state == "Z") for comm, state in children.values())
        if seen == expected:
            break
        time.sleep(0.05)  # the last command exits, the daemon reaps it: not ordering
    assert seen == expected, children


# --- cancellation ------------------------------------------------------------------


def _start_client(root: Path, daemon: Daemon, context: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "BUILDPY_HOST": daemon.addr}
    env.pop("BUILDPY_ROOT", None)
    return subprocess.Popen(
        [sys.executable, "-m", "buildpy", "build", "--progress", "plain", str(context)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _wait_for_step(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """Read the client's stderr until the RUN says it started and its process runs."""
    seen: list[str] = []
    started = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "step-started" in line:
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    assert started.wait(120), "".join(seen)
    deadline = time.monotonic() + 30
    while not processes_running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the process table, not ordering events
    return seen


def test_client_interrupted_mid_build(busybox: Buildpy, daemon: Daemon, tmp_path):
    marker = "sleep 4343"
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": f"FROM busybox\nRUN echo step-started && {marker}\n"},
    )
    proc = _start_client(busybox.root, daemon, context)
    try:
        seen = _wait_for_step(proc, marker)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, "".join(seen)
    assert "Traceback" not in "".join(seen)
    assert processes_running(marker) == []
    assert mounts_under(busybox.root) == []
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo next\n")
    via(busybox, daemon, "build", "--progress", "plain", context)


def test_daemon_stopped_mid_build(busybox: Buildpy, tmp_path):
    marker = "sleep 4444"
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": f"FROM busybox\nRUN echo step-started && {marker}\n"},
    )
    d = start_daemon(busybox.root, tmp_path / "buildpy.sock")
    proc = _start_client(busybox.root, d, context)
    try:
        seen = _wait_for_step(proc, marker)
        assert d.stop() == 0, "".join(d.log)
        code = proc.wait(timeout=60)
    finally:
        for p in (proc, d.proc):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert code == 4, "".join(seen)
    assert seen[-1].strip() == STOPPED, "".join(seen)
    assert processes_running(marker) == []
    assert mounts_under(busybox.root) == []
    assert processes_of(busybox.root) == []
    assert not (tmp_path / "buildpy.sock").exists()
    # A new daemon on the same store builds, the interrupted step included.
    d = start_daemon(busybox.root, tmp_path / "buildpy.sock")
    try:
        (context / "Dockerfile").write_text("FROM busybox\nRUN echo step-started\n")
        via(busybox, d, "build", "--progress", "plain", context)
    finally:
        d.stop()


def test_daemon_killed_client_says_so(busybox: Buildpy, tmp_path):
    marker = "sleep 4545"
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": f"FROM busybox\nRUN echo step-started && {marker}\n"},
    )
    d = start_daemon(busybox.root, tmp_path / "buildpy.sock")
    proc = _start_client(busybox.root, d, context)
    try:
        seen = _wait_for_step(proc, marker)
        d.proc.kill()
        d.proc.wait()
        code = proc.wait(timeout=60)
    finally:
        # The orphaned command builds on: interrupt it as a daemon would have.
        for entry in processes_of(busybox.root):
            pid, comm = entry.split()
            os.kill(
                int(pid), signal.SIGINT if comm == "buildpy-child" else signal.SIGKILL
            )
        for p in (proc, d.proc):
            if p.poll() is None:
                p.kill()
                p.wait()
        deadline = time.monotonic() + 30
        while processes_of(busybox.root) and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the orphan's clean-up, not ordering
    assert code == 4
    assert seen[-1].strip() == (
        f"ERROR: lost the connection to the buildpy daemon at {d.addr}"
    )
    assert processes_running(marker) == []
    assert mounts_under(busybox.root) == []


# --- the socket, the client, the API -------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over the daemon's Unix socket: the API as any program uses it."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def request_json(addr: str, method: str, path: str, body: Any = None) -> Any:
    """One request to the daemon, its JSON answer; OSError naming the status on
    an error answer."""
    conn = UnixHTTPConnection(client.socket_path(addr))
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status >= 400:
            raise OSError(f"{method} {path}: {resp.status} {payload.decode()}")
        return json.loads(payload) if payload else None
    finally:
        conn.close()


def test_socket_mode_and_ping(daemon: Daemon):
    path = client.socket_path(daemon.addr)
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_uid == 0
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", "/_ping")
        assert conn.getresponse().read() == b"OK"
    finally:
        conn.close()
    version = request_json(daemon.addr, "GET", "/version")
    assert version["ApiVersion"] == client.API_VERSION
    assert version["Pid"] == daemon.proc.pid


def client_imports(*args: str) -> list[str]:
    """The modules ``python -S -m buildpy ARGS`` imports (-X importtime), after
    checking that it listed the images; -S: no site hooks, the repository is on
    sys.path as the cwd."""
    proc = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-m", "buildpy", *args, "images"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "REPOSITORY" in proc.stdout
    return [
        line.split("|")[2].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "imported package" not in line
    ]


def foreign_modules(imported: list[str], ours: set[str]) -> list[str]:
    """Those of ``imported`` that are neither ``ours`` nor the standard library's."""
    return [
        name
        for name in imported
        if name not in ours and name.split(".")[0] not in sys.stdlib_module_names
    ]


def test_client_imports_only_the_standard_library(daemon: Daemon):
    imported = client_imports("--addr", daemon.addr)
    assert "buildpy.client" in imported
    assert "buildpy.cli" not in imported  # not even the argument parser
    # Nor http.client (33 ms of ssl and email imports): a plain socket does;
    # nor json and socket (11 ms of re, selectors, enum): their C parts do.
    assert "http.client" not in imported and "ssl" not in imported
    assert "json" not in imported and "socket" not in imported
    ours = {"buildpy", "buildpy.entry", "buildpy.client"}
    assert foreign_modules(imported, ours) == []


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_client_json_is_the_json_modules(value: Any):
    """The request body the client encodes without the json package reads back
    as what the json package would have written."""
    assert client.json_dumps(value) == json.dumps(value, separators=(",", ":"))


def test_api_images_inspect_build(busybox: Buildpy, daemon: Daemon, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nRUN echo api && grep -q db /etc/hosts\n"},
    )
    images = request_json(daemon.addr, "GET", "/images/json")
    assert [image["RepoTags"] for image in images] == [["busybox:latest"]]
    one = request_json(daemon.addr, "GET", "/images/busybox/json")
    assert one["Id"] == images[0]["Id"]
    with pytest.raises(OSError, match="404"):
        request_json(daemon.addr, "GET", "/images/nope/json")
    conn = UnixHTTPConnection(client.socket_path(daemon.addr))
    try:
        body = {
            "context": str(context),
            "tags": ["api:1"],
            "labels": {"via": "api"},
            "extrahosts": ["db:10.0.0.5"],
        }
        conn.request("POST", "/build", body=json.dumps(body))
        resp = conn.getresponse()
        assert resp.status == 200
        lines = [json.loads(line) for line in resp.read().splitlines()]
    finally:
        conn.close()
    assert any(e.get("status") == "LOG" and e.get("line") == "api" for e in lines)
    result = lines[-1]["result"]
    assert result["exit_code"] == 0, result
    tags = busybox.run("images").stdout
    assert "api " in tags
    config = json.loads(busybox.run("inspect", "api:1").stdout)[0]["Config"]
    assert config["config"]["Labels"] == {"via": "api"}


def test_contrib_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    exe = shutil.which("buildpy")
    if analyze is None or exe is None:
        pytest.skip("systemd-analyze or an installed buildpy command is not there")
    # verify checks that ExecStart exists: point it at this machine's buildpy.
    service = (REPO / "contrib/buildpy.service").read_text()
    (tmp_path / "buildpy.service").write_text(
        service.replace("/usr/local/bin/buildpy", exe)
    )
    shutil.copy(REPO / "contrib/buildpy.socket", tmp_path / "buildpy.socket")
    proc = subprocess.run(
        [
            analyze,
            "verify",
            str(tmp_path / "buildpy.socket"),
            str(tmp_path / "buildpy.service"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_terminal_client_gets_the_tty_display(
    busybox: Buildpy, daemon: Daemon, tmp_path
):
    """--progress auto chooses the live display when the client's stderr is a
    terminal: the daemon gives the command a pty, as embedded it would have one."""
    import pty

    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo t\n"}
    )
    master, slave = pty.openpty()
    env = {**os.environ, "BUILDPY_HOST": daemon.addr}
    env.pop("BUILDPY_ROOT", None)
    env.pop("BUILDKIT_PROGRESS", None)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "buildpy", "build", str(context)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            cwd=REPO,
        )
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the client closed the terminal's last writer
                break
            if not data:
                break
            seen += data
        assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = seen.decode(errors="replace")
    assert "[+] Building" in text and "FINISHED" in text, text
    assert "#1 [internal]" not in text  # not the plain display


# --- stdin, passed with the request ----------------------------------------------


def test_stdin_through_the_daemon_matches_embedded(
    busybox: Buildpy,
    daemon: Daemon,
    tmp_path,
):
    ctx = write_context(tmp_path / "ctx", {"a.txt": "from the context\n"})
    piped = stdin_file(tmp_path, "piped", PIPED)
    archive = context_archive(tmp_path)
    fds = len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
    cases = [
        (("build", "--progress", "plain", "-f", "-", ctx), piped, 0),
        (("build", "-q", "-f", "app/Dockerfile.alt", "-"), archive, 0),
        (("build", "-q", "-f", "-", "-"), piped, 2),
        (("build", "-q", "-"), piped, 1),
    ]
    for args, fed, code in cases:
        busybox.run(*args, stdin=fed, check=False)  # both ways below see it cached
        embedded = busybox.run(*args, stdin=fed, check=False)
        remote = via(busybox, daemon, *args, stdin=fed, check=False)
        assert embedded.returncode == remote.returncode == code, remote.stderr
        assert normalise(remote.stdout) == normalise(embedded.stdout)
        assert normalise(remote.stderr) == normalise(embedded.stderr)
    for _ in range(5):  # what the clients passed is closed, not kept
        via(busybox, daemon, "build", "-q", "-f", "-", ctx, stdin=piped)
    assert len(os.listdir(f"/proc/{daemon.proc.pid}/fd")) <= fds + 2
    assert leftovers(busybox) == []


def test_archives_through_the_daemon_are_the_embedded_bytes(
    busybox: Buildpy, daemon: Daemon, tmp_path
):
    """Binary stdout crosses the frames unchanged, stdin comes in as passed."""
    embedded, remote = tmp_path / "embedded.tar", tmp_path / "remote.tar"
    busybox.run("save", "busybox", stdout=embedded)
    via(busybox, daemon, "save", "busybox", stdout=remote)
    assert remote.read_bytes() == embedded.read_bytes()
    via(busybox, daemon, "rmi", "busybox")
    loaded = via(busybox, daemon, "load", stdin=remote)
    assert loaded.stdout == "Loaded image: busybox:latest\n"
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\n"})
    rootfs = tmp_path / "rootfs.tar"
    via(busybox, daemon, "build", "-o", "-", ctx, stdout=rootfs)
    with tarfile.open(rootfs) as tar:
        assert "bin/busybox" in tar.getnames()
    assert leftovers(busybox) == []


def test_insecure_entitlement_is_the_daemons_to_grant(busybox: Buildpy, tmp_path):
    """As buildkitd: --allow security.insecure works through a daemon started
    with --allow-insecure-entitlement security.insecure, and only then."""
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            "RUN --security=insecure mkdir /m && mount -t tmpfs x /m\n"
        },
    )
    flags = ("build", "-q", "--allow", "security.insecure", context)
    for granted in (False, True):
        grant = ("--allow-insecure-entitlement", "security.insecure") if granted else ()
        d = launch_daemon(busybox.root, f"unix://{tmp_path / f'sock{granted}'}", *grant)
        try:
            proc = via(busybox, d, *flags, check=False)
        finally:
            assert d.stop() == 0, "".join(d.log)
        if granted:
            assert proc.returncode == 0, proc.stderr
        else:
            assert (proc.returncode, proc.stderr) == (
                2,
                "ERROR: --allow security.insecure: the buildpy daemon was not "
                "started with --allow-insecure-entitlement security.insecure\n",
            )
    assert busybox.run(*flags).returncode == 0  # embedded: the user's to grant


def test_run_interactive_reads_the_clients_stdin(
    busybox: Buildpy, daemon: Daemon, tmp_path
):
    """run -i is sent to the daemon: the container reads the stdin the client
    passed with its request; its output and exit code come back."""
    lines = stdin_file(tmp_path, "lines", "a\nb\nc\n")
    args = ("run", "-i", "busybox", "sh", "-c", "wc -l; exit 7")
    embedded = busybox.run(*args, stdin=lines, check=False)
    # The client's own root is empty: only the daemon's store has busybox.
    elsewhere = {"BUILDPY_ROOT": str(tmp_path / "empty")}
    remote = via(busybox, daemon, *args, stdin=lines, check=False, env=elsewhere)
    assert (remote.returncode, remote.stdout) == (embedded.returncode, "3\n")
    assert embedded.returncode == 7
    # Without -i the container's stdin is empty, both ways.
    quiet = ("run", "busybox", "sh", "-c", "wc -l")
    assert via(busybox, daemon, *quiet, stdin=lines).stdout == "0\n"
    assert busybox.run(*quiet, stdin=lines).stdout == "0\n"
