"""``buildpy serve``: the daemon. An HTTP/1.1 API (h11, on Trio) on a Unix socket,
whose commands run in children forked from a warm zygote (buildpy/zygote.py).

Theory of operation
-------------------
The daemon itself runs no build. It owns the socket, the zygote and one *job* per
running command: the child's pid (a pidfd, so a signal never reaches a recycled
pid), the read ends of its stdout and stderr (pipes, or ptys when the client's own
streams are terminals, so the child's progress display is what it would be
embedded) and its status pipe. The child writes its pid and, last, its exit code on
the status pipe; the status pipe closing without an exit code means the child was
killed.

A connection's handler streams a job's output to its client in docker's attach
frames, and ends with a frame of stream 3 holding the exit code. Three readers (stdout,
stderr, client) feed it; once the exit code is in, the output readers are stopped
and the pipes drained without waiting for end of file, because a process the command
left behind (``buildpy run`` of a daemonising image) may hold them open.

Cancellation, from the outside in:
- the client goes away, or half-closes its side (the thin client on Ctrl-C): SIGINT to
  the child, which cleans up as an embedded Ctrl-C does, then SIGKILL after
  ``GRACE`` seconds; the child's output still flows while the client listens.
- SIGTERM or SIGINT to the daemon: it stops accepting, SIGINTs every child, waits for
  each (SIGKILL after ``GRACE``), and instead of the child's last words gives each
  client one line, "ERROR: the buildpy daemon stopped; the build was canceled", and
  exit code 4. The store is consistent because every child cleans up as an
  interrupted embedded build does.

Builds of several clients share one store, so they share its cache: the store's
per-key locks (solver/keylock.py) make a step that two concurrent builds both miss
run once, whichever process runs it.
"""

from __future__ import annotations

import array
import errno
import fcntl
import grp
import json
import os
import platform
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

from buildpy import client
from buildpy.errors import BuildpyError, InfraError, UsageError
from buildpy.state import State, default_root
from runtime import _libc

GRACE = 10.0  # seconds between SIGINT and SIGKILL of a canceled command
MAX_BODY = 1 << 20
SOCKET_MODE = 0o660
STOPPED = "ERROR: the buildpy daemon stopped; the build was canceled\n"
LISTEN_FDS_START = 3  # systemd's sd_listen_fds(3)


class DaemonError(BuildpyError):
    """The daemon cannot start or serve: its socket, its zygote."""

    exit_code = InfraError.exit_code


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- the socket ----------------------------------------------------------------


def _activated_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    return socket.socket(fileno=LISTEN_FDS_START)


def _bind(path: str) -> socket.socket:
    """A listening socket at ``path``: root's, mode 0660, group buildpy if it exists."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a socket left by a daemon that is gone
        else:
            raise DaemonError(f"a daemon already listens on {path}")
        finally:
            probe.close()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask keeps the socket closed from its creation on, not from the chmod.
    old = os.umask(0o777 & ~SOCKET_MODE)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise DaemonError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    try:
        gid = grp.getgrnam("buildpy").gr_gid
    except KeyError:
        gid = -1
    os.chown(path, 0 if os.geteuid() == 0 else -1, gid)
    os.chmod(path, SOCKET_MODE)
    sock.listen(128)
    return sock


# --- jobs ----------------------------------------------------------------------


def _output_pair(tty: bool, size: tuple[int, int]) -> tuple[int, int]:
    """(read end, write end): a pty for a client's terminal, else a pipe."""
    if not tty:
        return os.pipe()
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # bytes as written: the client's terminal translates
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    rows, columns = size
    if rows and columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, slave


@dataclass
class Job:
    """One command running in a child of the zygote."""

    id: str
    out: int
    err: int
    status: trio.lowlevel.FdStream
    pid: int = 0
    pidfd: int = -1
    exit_code: int | None = None
    interrupted: bool = False
    daemon_stopped: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    reported: trio.Event = field(default_factory=trio.Event)  # the client was told
    _status_buf: bytes = b""

    async def read_status_line(self) -> str | None:
        while b"\n" not in self._status_buf:
            try:
                chunk = await self.status.receive_some(64)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                return None
            self._status_buf += chunk
        line, _, self._status_buf = self._status_buf.partition(b"\n")
        return line.decode()

    def signal(self, signum: int) -> None:
        if self.pidfd < 0 or self.done.is_set():
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            pass

    async def interrupt(self) -> None:
        """SIGINT now, SIGKILL if the child is still there after GRACE seconds."""
        if self.interrupted:
            return
        self.interrupted = True
        self.signal(signal.SIGINT)
        with trio.move_on_after(GRACE):
            await self.done.wait()
        self.signal(signal.SIGKILL)


class Daemon:
    """The server. ``await Daemon(root, addr).run()`` serves until SIGTERM."""

    def __init__(self, root: Path, addr: str) -> None:
        self.root = root
        self.addr = addr
        self.jobs: dict[str, Job] = {}
        self.stopping = False
        self._zygote: trio.Process | None = None
        self._zygote_sock: trio.socket.SocketType | None = None
        self._zygote_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.tls: Any = None  # tlsaddr.TLSFiles: serve tcp:// (buildpy/remotectx.py)
        self.grants: tuple[str, ...] = ()  # --allow-insecure-entitlement

    # --- life cycle ------------------------------------------------------------

    async def run(self, listener: socket.socket | None = None) -> None:
        # The commands' processes are orphans by design (zygote.py forks twice):
        # they become ours, not init's, and are reaped here, also where init
        # reaps nothing (buildpy serve as a container's first process).
        _libc.prctl(_libc.PR_SET_CHILD_SUBREAPER, 1)
        await self._start_zygote()
        # Held for the daemon's life, unused, so that a command's connection to the
        # store's database is never the last one: SQLite checkpoints the WAL when
        # the last connection closes, which every no-op build would pay for.
        keep = State.open(self.root)
        try:
            async with trio.open_nursery() as reaping:
                reaping.start_soon(self._reap_orphans)
                await self._serve(listener)
                reaping.cancel_scope.cancel()
        finally:
            await self._stop_zygote()
            keep.close()

    async def _serve(self, listener: socket.socket | None) -> None:
        if listener is None and self.tls is not None:
            from buildpy.remotectx import serve_tcp

            await serve_tcp(self, self.tls)
            return
        sock = listener or _activated_socket() or _bind(client.socket_path(self.addr))
        path = client.socket_path(self.addr) if listener is None else None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
                print(f"buildpy serve: listening on {self.addr}", file=sys.stderr)
                await trio.serve_listeners(self._handle, listeners)
        finally:
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    async def _reap_orphans(self) -> None:
        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            self._reap()  # any that ended before the receiver was there
            async for _ in signals:
                self._reap()

    def _reap(self) -> None:
        """Reap every child that has ended, but the zygote (Trio waits for it)."""
        zygote = self._zygote.pid if self._zygote is not None else None
        while True:
            try:
                ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if ended is None or ended.si_pid == zygote:
                return  # the zygote ended: the daemon is stopping anyway
            os.waitpid(ended.si_pid, os.WNOHANG)

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        self.stopping = True
        print("buildpy serve: stopping", file=sys.stderr)
        # A job registered while we interrupt the others is caught by the next turn.
        while self.jobs:
            async with trio.open_nursery() as nursery:
                for job in list(self.jobs.values()):
                    job.daemon_stopped = True
                    nursery.start_soon(job.interrupt)
            for job in list(self.jobs.values()):
                await job.reported.wait()
        scope.cancel()

    async def _start_zygote(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._zygote = await trio.lowlevel.open_process(
                [sys.executable, "-m", "buildpy.zygote", str(theirs.fileno())]
                + list(self.grants),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._zygote_sock = trio.socket.from_stdlib_socket(ours)
        ready = await self._zygote_sock.recv(1)
        if ready != b"R":
            raise DaemonError("the zygote (python -m buildpy.zygote) failed to start")

    async def _stop_zygote(self) -> None:
        if self._zygote_sock is not None:
            self._zygote_sock.close()
        if self._zygote is not None:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await self._zygote.wait()
                if self._zygote.returncode is None:
                    self._zygote.kill()
                    await self._zygote.wait()

    # --- jobs ------------------------------------------------------------------

    async def start_job(
        self,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        tty: dict[str, Any],
        call: str | None = None,
        stdin: int | None = None,
    ) -> Job:
        """Start ``buildpy ARGV`` in a child of the zygote. ``stdin``: the
        client's own, passed with its request; else the child reads /dev/null."""
        if self.stopping:
            raise _HttpError(503, "the daemon is stopping")
        size = tuple(tty.get("size") or (0, 0))[:2]
        out_r, out_w = _output_pair(bool(tty.get("stdout")), size)  # type: ignore[arg-type]
        err_r, err_w = _output_pair(bool(tty.get("stderr")), size)  # type: ignore[arg-type]
        st_r, st_w = os.pipe()
        request = {
            "argv": list(argv),
            "cwd": cwd,
            "env": env,
            "root": str(self.root),
            "call": call,
        }
        fds = array.array("i", [out_w, err_w, st_w])
        if stdin is not None:
            fds.append(stdin)  # the zygote's copy; the connection closes ours
        try:
            async with self._zygote_lock:
                assert self._zygote_sock is not None
                try:
                    await self._zygote_sock.sendmsg(
                        [json.dumps(request).encode()],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())],
                    )
                except OSError as exc:
                    for fd in (out_r, err_r, st_r):
                        os.close(fd)
                    raise _HttpError(500, f"the zygote is gone: {exc}") from None
        finally:
            for fd in (out_w, err_w, st_w):
                os.close(fd)
        job = Job(
            id=uuid.uuid4().hex[:12],
            out=out_r,
            err=err_r,
            status=trio.lowlevel.FdStream(st_r),
        )
        self.jobs[job.id] = job
        line = await job.read_status_line()
        if line is not None:
            job.pid = int(line)
            try:
                job.pidfd = os.pidfd_open(job.pid)
            except ProcessLookupError:
                pass
        return job

    async def run_job(
        self,
        job: Job,
        on_output: Callable[[int, bytes], Awaitable[None]],
        client_gone: trio.Event,
    ) -> int:
        """Stream the job's output to ``on_output`` until it exits; its exit code.

        ``client_gone`` set: the job is interrupted (SIGINT, later SIGKILL)."""
        send, receive = trio.open_memory_channel[tuple[int, bytes]](64)

        async def read(fd: int, stream: int) -> None:
            async with trio.lowlevel.FdStream(os.dup(fd)) as pipe:
                while True:
                    try:
                        data = await pipe.receive_some(65536)
                    except (trio.BrokenResourceError, OSError):
                        data = b""
                    if not data:
                        return
                    with trio.CancelScope(shield=True):  # read is read: pass it on
                        await send.send((stream, data))

        async def forward() -> None:
            async for stream, data in receive:
                await on_output(stream, data)

        async def cancel_on_gone() -> None:
            await client_gone.wait()
            await job.interrupt()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                async with trio.open_nursery() as waiting:
                    waiting.start_soon(cancel_on_gone)
                    waiting.start_soon(read, job.out, client.STDOUT)
                    waiting.start_soon(read, job.err, client.STDERR)
                    code_line = await job.read_status_line()
                    job.exit_code = int(code_line) if code_line else None
                    job.done.set()
                    waiting.cancel_scope.cancel()
                # The child flushed before it wrote its code: what it wrote is in
                # the pipes now; take it without waiting for an end of file, which
                # a process the command left behind could hold off for ever.
                for fd, stream in ((job.out, client.STDOUT), (job.err, client.STDERR)):
                    for data in _drain(fd):
                        await send.send((stream, data))
                await send.aclose()
        finally:
            await self._finish(job)
        if job.exit_code is None:  # killed before it could say: as a shell reports
            return 128 + signal.SIGKILL
        return job.exit_code

    async def _finish(self, job: Job) -> None:
        for fd in (job.out, job.err):
            try:
                os.close(fd)
            except OSError:
                pass
        await job.status.aclose()
        if job.pidfd >= 0:
            os.close(job.pidfd)
            job.pidfd = -1
        job.done.set()

    # --- HTTP ------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        # Descriptors a local client passes with its request (SCM_RIGHTS): its
        # stdin, which /cli gives the command. Only a Unix socket carries them.
        passed: list[int] | None = None
        if stream.socket.family == socket.AF_UNIX:
            passed = []
        try:
            while True:
                request, body = await _read_request(stream, conn, passed)
                if request is None:
                    return
                try:
                    await self._route(stream, conn, request, body, passed or [])
                except _HttpError as exc:
                    if conn.our_state is h11.SEND_RESPONSE:
                        await _send_json(
                            stream, conn, exc.status, {"message": str(exc)}
                        )
                    else:
                        return
                finally:
                    _close_passed(passed)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state not in (
                    h11.DONE,
                ):
                    return
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except _ConnectionDone:
            return
        except Exception:  # a bug: tell it in the log, keep serving the others
            traceback.print_exc()
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            _close_passed(passed)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _route(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        req: h11.Request,
        body: bytes,
        passed: list[int],
    ) -> None:
        """Answer one request. ``passed``: the descriptors that came with it."""
        url = urlsplit(req.target.decode())
        path = re.sub(r"^/v[0-9.]+(?=/)", "", url.path)  # /v1/images/json too
        query = parse_qs(url.query)
        method = req.method.decode()
        if path == "/_ping" and method in ("GET", "HEAD"):
            await _send(stream, conn, 200, b"OK", "text/plain; charset=utf-8")
        elif path == "/version" and method == "GET":
            await _send_json(stream, conn, 200, self.version())
        elif path == "/cli" and method == "POST":
            stdin = passed[0] if passed else None
            await self._cli(stream, conn, _json_body(body), stdin)
        elif path == "/build" and method == "POST":
            await self._build(stream, conn, _json_body(body))
        elif path == "/images/json" and method == "GET":
            await self._captured(stream, conn, [], "list", call="images")
        elif path.startswith("/images/") and path.endswith("/json") and method == "GET":
            name = unquote(path[len("/images/") : -len("/json")])
            await self._captured(stream, conn, ["inspect", name], "first")
        elif path == "/build/prune" and method == "POST":
            argv = ["prune"]
            if query.get("all", ["0"])[0] in ("1", "true"):
                argv.append("--all")
            if "keep-storage" in query:
                argv += ["--keep-storage", query["keep-storage"][0]]
            await self._captured(stream, conn, argv, "prune")
        elif path.startswith("/cancel/") and method == "POST":
            job = self.jobs.get(path[len("/cancel/") :])
            if job is None:
                raise _HttpError(404, f"no running job {path[len('/cancel/') :]}")
            assert self._nursery is not None
            self._nursery.start_soon(job.interrupt)
            await _send(stream, conn, 204, b"", None)
        else:
            raise _HttpError(404, f"no endpoint {method} {url.path}")

    def version(self) -> dict[str, Any]:
        return {
            "Version": _buildpy_version(),
            "ApiVersion": client.API_VERSION,
            "Os": platform.system().lower(),
            "Arch": platform.machine(),
            "KernelVersion": platform.release(),
            "PythonVersion": platform.python_version(),
            "Root": str(self.root),
            "Pid": os.getpid(),
        }

    async def _cli(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        body: Any,
        stdin: int | None = None,
    ) -> None:
        argv, cwd, env = body.get("argv"), body.get("cwd"), body.get("env") or {}
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise _HttpError(400, "expected argv, a list of strings")
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise _HttpError(400, "expected cwd, an absolute path")
        if not isinstance(env, dict):
            raise _HttpError(400, "expected env, an object of strings")
        tty = body.get("tty") if isinstance(body.get("tty"), dict) else {}
        job = await self.start_job(
            argv, cwd, {str(k): str(v) for k, v in env.items()}, tty, stdin=stdin
        )
        await self._stream_job(stream, conn, job, frames=True)

    async def _build(
        self, stream: trio.SocketStream, conn: h11.Connection, body: Any
    ) -> None:
        argv = _build_argv(body)
        meta = self.root / "tmp" / f"metadata-{uuid.uuid4().hex}.json"
        argv[1:1] = ["--metadata-file", str(meta)]
        cwd = body.get("cwd") or "/"
        env = {
            **os.environ,
            **{str(k): str(v) for k, v in (body.get("env") or {}).items()},
        }
        job = await self.start_job(argv, str(cwd), env, {})
        try:
            await self._stream_job(stream, conn, job, frames=False, metadata=meta)
        finally:
            meta.unlink(missing_ok=True)

    async def _stream_job(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        job: Job,
        *,
        frames: bool,
        metadata: Path | None = None,
    ) -> None:
        """The job's output as attach frames (``frames``) or as JSON lines."""
        content_type = client.MULTIPLEXED if frames else "application/x-ndjson"
        headers = [("Content-Type", content_type), ("X-Buildpy-Job", job.id)]
        await _send_event(stream, conn, h11.Response(status_code=200, headers=headers))
        client_gone = trio.Event()
        gone_for_writes = False
        lines: dict[int, bytes] = {client.STDOUT: b"", client.STDERR: b""}
        messages: list[str] = []

        async def write(data: bytes) -> None:
            nonlocal gone_for_writes
            if gone_for_writes:
                return
            try:
                await _send_event(stream, conn, h11.Data(data=data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone_for_writes = True
                client_gone.set()

        async def on_output(which: int, data: bytes) -> None:
            if job.daemon_stopped:
                return  # the client gets one line instead: STOPPED
            if frames:
                await write(client.encode_frame(which, data))
                return
            # /build: rawjson progress lines go out as they are; other lines
            # (errors, "naming to") are collected for the result object.
            lines[which] += data
            *complete, lines[which] = lines[which].split(b"\n")
            for line in complete:
                if line.startswith(b"{"):
                    await write(line + b"\n")
                elif line.strip():
                    messages.append(line.decode(errors="replace"))

        async def watch_client() -> None:
            # The client sends nothing after its request: any end of it (a closed
            # socket, a half-close on Ctrl-C) cancels the command.
            try:
                while await stream.receive_some(4096):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            client_gone.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_client)
                code = await self.run_job(job, on_output, client_gone)
                if job.daemon_stopped:
                    code = InfraError.exit_code
                if frames:
                    if job.daemon_stopped:
                        await write(
                            client.encode_frame(client.STDERR, STOPPED.encode())
                        )
                    await write(client.encode_frame(client.EXIT, str(code).encode()))
                else:
                    result: dict[str, Any] = {"exit_code": code, "errors": messages}
                    if job.daemon_stopped:
                        result["errors"] = [STOPPED.strip()]
                    if metadata is not None and metadata.exists():
                        result["metadata"] = json.loads(metadata.read_text())
                    await write(json.dumps({"result": result}).encode() + b"\n")
                if not gone_for_writes:
                    try:
                        await _send_event(stream, conn, h11.EndOfMessage())
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                nursery.cancel_scope.cancel()
        finally:
            self._forget(job)
        # watch_client consumed the connection's reading side: no next request.
        raise _ConnectionDone

    def _forget(self, job: Job) -> None:
        job.reported.set()
        self.jobs.pop(job.id, None)

    async def _captured(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        argv: list[str],
        shape: str,
        call: str | None = None,
    ) -> None:
        """Run a command, answer with its stdout as JSON (or its error)."""
        job = await self.start_job(argv, "/", dict(os.environ), {}, call=call)
        chunks: dict[int, list[bytes]] = {client.STDOUT: [], client.STDERR: []}

        async def on_output(which: int, data: bytes) -> None:
            chunks[which].append(data)

        try:
            code = await self.run_job(job, on_output, trio.Event())
        finally:
            self._forget(job)
        if job.daemon_stopped:
            raise _HttpError(503, STOPPED.strip().removeprefix("ERROR: "))
        out = b"".join(chunks[client.STDOUT]).decode()
        err = b"".join(chunks[client.STDERR]).decode().strip()
        if code != 0:
            message = err.splitlines()[-1] if err else f"exit code {code}"
            message = message.removeprefix("ERROR: ")
            status = 404 if "not found" in message else 400 if code == 2 else 500
            raise _HttpError(status, message)
        if shape == "list":
            value: Any = json.loads(out)
        elif shape == "first":
            value = json.loads(out)[0]
        else:
            value = {"output": out, "message": err}
        await _send_json(stream, conn, 200, value)


class _ConnectionDone(Exception):
    """A streamed response ends its connection (the client's end was consumed)."""


def _drain(fd: int) -> list[bytes]:
    out: list[bytes] = []
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return out
        except OSError as exc:
            if exc.errno == errno.EIO:  # a pty whose other side is closed
                return out
            raise
        if not data:
            return out
        out.append(data)


def _buildpy_version() -> str:
    try:
        from importlib.metadata import version

        return version("buildpy")
    except Exception:
        return "0.1.0"


def _json_body(body: bytes) -> Any:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise _HttpError(400, "the request body is not JSON") from None
    if not isinstance(value, dict):
        raise _HttpError(400, "expected a JSON object")
    return value


def _build_argv(body: dict[str, Any]) -> list[str]:
    """``buildpy build`` flags from a /build request's JSON options."""
    context = body.get("context")
    if not isinstance(context, str):
        raise _HttpError(400, "expected context, a path")
    argv = ["build", "--progress", "rawjson"]
    if body.get("dockerfile"):
        argv += ["--file", str(body["dockerfile"])]
    for tag in body.get("tags") or []:
        argv += ["--tag", str(tag)]
    for key, value in (body.get("buildargs") or {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    if body.get("target"):
        argv += ["--target", str(body["target"])]
    if body.get("nocache"):
        argv.append("--no-cache")
    for output in body.get("outputs") or []:
        argv += ["--output", str(output)]
    if body.get("network"):
        argv += ["--network", str(body["network"])]
    # As docker's Engine API names them.
    for key, value in (body.get("labels") or {}).items():
        argv += ["--label", f"{key}={value}"]
    for host in body.get("extrahosts") or []:
        argv += ["--add-host", str(host)]
    if body.get("pull"):
        argv.append("--pull")
    if body.get("platform"):
        argv += ["--platform", str(body["platform"])]
    if body.get("shmsize"):
        argv += ["--shm-size", str(body["shmsize"])]
    for limit in body.get("ulimits") or []:
        if not isinstance(limit, dict):
            raise _HttpError(400, "expected ulimits, a list of {Name, Soft, Hard}")
        name, soft, hard = limit.get("Name"), limit.get("Soft"), limit.get("Hard")
        argv += ["--ulimit", f"{name}={soft}:{hard}"]
    argv.append(context)
    return argv


# --- h11 plumbing --------------------------------------------------------------


async def _send_event(
    stream: trio.SocketStream, conn: h11.Connection, event: Any
) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _send(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    body: bytes,
    content_type: str | None,
) -> None:
    headers = [("Content-Length", str(len(body)))]
    if content_type:
        headers.append(("Content-Type", content_type))
    await _send_event(stream, conn, h11.Response(status_code=status, headers=headers))
    if body:
        await _send_event(stream, conn, h11.Data(data=body))
    await _send_event(stream, conn, h11.EndOfMessage())


async def _send_json(
    stream: trio.SocketStream, conn: h11.Connection, status: int, value: Any
) -> None:
    await _send(stream, conn, status, json.dumps(value).encode(), "application/json")


async def _read_request(
    stream: trio.SocketStream, conn: h11.Connection, passed: list[int] | None = None
) -> tuple[h11.Request | None, bytes]:
    """The next request and its body. ``passed``, on a Unix socket: where the
    descriptors that come with the request's bytes are put."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if passed is None:
                data = await stream.receive_some(65536)
            else:
                data = await _receive_with_fds(stream.socket, passed)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _HttpError(413, "the request body is too large")
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


_MAX_PASSED = 4  # more is not a client of ours: the kernel closes the rest


def _close_passed(passed: list[int] | None) -> None:
    while passed:
        os.close(passed.pop())


async def _receive_with_fds(sock: Any, passed: list[int]) -> bytes:
    """Bytes from a Unix socket, and the descriptors sent with them, which the
    kernel gives only to a recvmsg that asks."""
    space = socket.CMSG_SPACE(_MAX_PASSED * 4)
    try:
        data, ancdata, _flags, _addr = await sock.recvmsg(
            65536, space, socket.MSG_CMSG_CLOEXEC
        )
    except OSError as exc:  # as SocketStream.receive_some would say it
        raise trio.BrokenResourceError(str(exc)) from exc
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            passed.extend(fds)
    return data


# --- the command ---------------------------------------------------------------


def serve(
    addr: str | None,
    root: Path | None,
    tls: dict[str, str | None] | None = None,
    grants: Sequence[str] = (),
) -> int:
    """``buildpy serve``: run the daemon until SIGTERM or Ctrl-C. ``tls``: the
    --tlscacert/--tlscert/--tlskey values, required for a tcp:// address;
    ``grants``: --allow-insecure-entitlement values."""
    from buildpy import tlsaddr

    addr = addr or client.DEFAULT_ADDR
    files = None
    try:
        if tlsaddr.is_tcp(addr):
            tlsaddr.parse_tcp(addr)
            files = tlsaddr.files_from(tls or {}, side="daemon")
            tlsaddr.server_context(files)  # a file that does not load: say so now
        else:
            client.socket_path(addr)
    except (client.AddressError, tlsaddr.TLSConfigError) as exc:
        raise UsageError(str(exc)) from None
    root = Path(root) if root is not None else default_root()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["BUILDPY_ROOT"] = str(root)
    daemon = Daemon(root, addr)
    daemon.tls = files
    daemon.grants = tuple(dict.fromkeys(grants))
    try:
        trio.run(daemon.run)
    except BaseExceptionGroup as group:
        from buildpy.errors import sole

        raise sole(group) from None
    return 0


__all__ = ["Daemon", "DaemonError", "Job", "serve"]
