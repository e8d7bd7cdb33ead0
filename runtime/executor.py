"""Executors: run an OCI bundle and report the step's exit code.

Theory of operation
-------------------
An executor runs one container per ``run`` call as a child process through
trio's process API: ``runc``/``crun`` (``RuncExecutor``) or buildpy's own init
(``BuiltinExecutor``, see runtime/init.py). With an ``output`` sink the step's
stdout and stderr are two pipes, each streamed chunk by chunk to the sink in
its own task, so their order within a stream is kept and nothing is buffered
whole; the run returns when the process has exited and both pipes reached EOF.
Without a sink the process inherits our stdio (``buildpy run``).

Cancellation (a trio Cancelled, Ctrl-C, a failing sink) always ends with no
process of the step left: SIGTERM to the step, a grace period, SIGKILL, and for
runc/crun a ``delete --force`` in a shielded scope; then the exception goes on.
The step is pid 1 of its pid namespace, so once it is reaped the kernel has
reaped every other process in the namespace too.

After every run, whatever the outcome, the mount-point stubs the runtime
created in the rootfs are removed (runtime.spec.remove_stubs).

A process that could not be started at all (runc's create failed, the builtin
init could not mount or exec) raises ExecutorError; a step that ran returns its
exit code, 128+N when signal N killed it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import trio

from runtime.errors import ExecutorError, ExecutorUnavailable, InternalError
from runtime.spec import remove_stubs

# (1 stdout | 2 stderr, chunk), as solver.worker.LogSink.
OutputSink = Callable[[int, bytes], Awaitable[None]]

DEFAULT_GRACE = 5.0
_CHUNK = 65536
# The container ids runc accepts.
_CONTAINER_ID = re.compile(r"^[\w+.-]+$")


class Executor(Protocol):
    name: str

    async def run(
        self,
        bundle_dir: Path,
        container_id: str,
        output: OutputSink | None = None,
        *,
        stdin: bool = True,
    ) -> int:
        """Run the bundle as container ``container_id``; return its exit code.

        Without ``output`` the container shares our stdio (``buildpy run``);
        its stdin is ours only when ``stdin`` is true, else /dev/null."""
        ...


async def _pump(stream: trio.abc.ReceiveStream, fd: int, output: OutputSink) -> None:
    while chunk := await stream.receive_some(_CHUNK):
        await output(fd, chunk)


class _ProcessExecutor:
    """The run loop both executors share; subclasses say how to start and stop."""

    name = ""

    def __init__(self, state_dir: Path, grace: float) -> None:
        self.state_dir = Path(state_dir)
        self.grace = grace

    def _argv(self, bundle_dir: Path, container_id: str) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _before(self, bundle_dir: Path, container_id: str) -> None:
        """Clear what an earlier run with the same paths left behind."""

    def _after(self, bundle_dir: Path, container_id: str) -> None:
        """Remove this run's own state files."""

    def _startup_failure(self, bundle_dir: Path, container_id: str) -> str | None:
        raise NotImplementedError

    async def _stop(self, proc: trio.Process, container_id: str) -> None:
        raise NotImplementedError

    async def run(
        self,
        bundle_dir: Path,
        container_id: str,
        output: OutputSink | None = None,
        *,
        stdin: bool = True,
    ) -> int:
        if not _CONTAINER_ID.match(container_id):
            raise InternalError(
                f"invalid container id {container_id!r}: expected [A-Za-z0-9_+.-]+"
            )
        bundle_dir = Path(os.path.abspath(bundle_dir))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._before(bundle_dir, container_id)
        try:
            code = await self._run_process(bundle_dir, container_id, output, stdin)
            reason = self._startup_failure(bundle_dir, container_id)
            if code != 0 and reason is not None:
                raise ExecutorError(f"{self.name}: {reason}", executor=self.name)
            return code
        finally:
            self._after(bundle_dir, container_id)
            remove_stubs(bundle_dir)

    async def _run_process(
        self,
        bundle_dir: Path,
        container_id: str,
        output: OutputSink | None,
        stdin: bool,
    ) -> int:
        argv = self._argv(bundle_dir, container_id)
        piped = subprocess.PIPE if output is not None else None
        keep_stdin = output is None and stdin
        try:
            proc = await trio.lowlevel.open_process(
                argv,
                stdin=None if keep_stdin else subprocess.DEVNULL,
                stdout=piped,
                stderr=piped,
                env=self._env(),
            )
        except OSError as exc:
            raise ExecutorError(
                f"{self.name}: cannot start {argv[0]}: {exc.strerror}",
                executor=self.name,
            ) from exc
        try:
            async with trio.open_nursery() as nursery:
                if output is not None:
                    assert proc.stdout is not None and proc.stderr is not None
                    nursery.start_soon(_pump, proc.stdout, 1, output)
                    nursery.start_soon(_pump, proc.stderr, 2, output)
                code = await proc.wait()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop(proc, container_id)
            raise
        finally:
            with trio.CancelScope(shield=True):
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        await stream.aclose()
        return code

    async def _wait(self, proc: trio.Process, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``proc`` to exit; True when it has."""
        with trio.move_on_after(seconds):
            await proc.wait()
        return proc.returncode is not None


class RuncExecutor(_ProcessExecutor):
    """Runs bundles with an OCI runtime binary that speaks runc's command line
    (runc, crun): ``BINARY --root STATE run --bundle B ID``."""

    def __init__(
        self, binary: str | Path, state_dir: Path, grace: float = DEFAULT_GRACE
    ) -> None:
        super().__init__(state_dir, grace)
        self.binary = str(binary)
        self.name = Path(self.binary).name

    def _base(self) -> list[str]:
        return [self.binary, "--root", str(self.state_dir)]

    def _argv(self, bundle_dir: Path, container_id: str) -> list[str]:
        return [
            *self._base(),
            "--log",
            str(bundle_dir / "runtime.log"),
            "--log-format",
            "json",
            "run",
            "--bundle",
            str(bundle_dir),
            "--pid-file",
            str(bundle_dir / "runtime.pid"),
            container_id,
        ]

    def _before(self, bundle_dir: Path, container_id: str) -> None:
        for name in ("runtime.log", "runtime.pid"):
            (bundle_dir / name).unlink(missing_ok=True)
        # With "terminal" set in the config, `runc run` in the foreground
        # makes the container's pty itself and copies between it and our
        # stdio, with raw mode and window size changes: no console socket.
        # The first size goes into the config, so the step sees it at once.
        config_path = bundle_dir / "config.json"
        config = json.loads(config_path.read_text())
        if config["process"].get("terminal") and os.isatty(0):
            columns, lines = os.get_terminal_size(0)
            config["process"]["consoleSize"] = {"height": lines, "width": columns}
            config_path.write_text(json.dumps(config, indent=2))

    def _startup_failure(self, bundle_dir: Path, container_id: str) -> str | None:
        # The pid file is written once the container exists: without it, the
        # runtime itself failed, and its log says why.
        if (bundle_dir / "runtime.pid").exists():
            return None
        return _last_log_error(bundle_dir / "runtime.log") or "container not started"

    async def _command(self, *args: str) -> bool:
        result = await trio.run_process(
            [*self._base(), *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        return result.returncode == 0

    async def _stop(self, proc: trio.Process, container_id: str) -> None:
        try:
            if proc.returncode is None:
                if not await self._command("kill", container_id, "TERM"):
                    # Not created yet: runc run forwards the signal once it is.
                    proc.terminate()
                if not await self._wait(proc, self.grace):
                    await self._command("kill", container_id, "KILL")
            if not await self._wait(proc, self.grace):
                proc.kill()
                await proc.wait()
        finally:
            await self._command("delete", "--force", container_id)


class BuiltinExecutor(_ProcessExecutor):
    """buildpy's own executor: ``python -m runtime.init BUNDLE STATE/ID``.

    It implements the part of the OCI runtime spec that build steps need (see
    runtime/init.py), docker's default seccomp profile included (compiled with
    libseccomp). Not applied: AppArmor and SELinux, cgroups (no resource limits
    and no device cgroup) and ambient capabilities.
    """

    name = "builtin"

    def __init__(self, state_dir: Path, grace: float = DEFAULT_GRACE) -> None:
        super().__init__(state_dir, grace)

    def _container_dir(self, container_id: str) -> Path:
        return self.state_dir / container_id

    def _argv(self, bundle_dir: Path, container_id: str) -> list[str]:
        # -S: the init needs only the standard library and this package.
        state = self._container_dir(container_id)
        return [sys.executable, "-S", "-m", "runtime.init", str(bundle_dir), str(state)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p
        )
        return env

    def _before(self, bundle_dir: Path, container_id: str) -> None:
        state = self._container_dir(container_id)
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)

    def _after(self, bundle_dir: Path, container_id: str) -> None:
        shutil.rmtree(self._container_dir(container_id), ignore_errors=True)

    def _startup_failure(self, bundle_dir: Path, container_id: str) -> str | None:
        try:
            return (self._container_dir(container_id) / "error").read_text().strip()
        except FileNotFoundError:
            return None

    def _step_pid(self, proc: trio.Process, container_id: str) -> int | None:
        """The step's pid, only while it is still the init process's child (so
        a reused pid is never signalled)."""
        try:
            pid = int((self._container_dir(container_id) / "pid").read_text())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ValueError):
            return None
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        return pid if ppid == proc.pid else None

    async def _stop(self, proc: trio.Process, container_id: str) -> None:
        if proc.returncode is None:
            proc.terminate()  # the init forwards it to the step
            if await self._wait(proc, self.grace):
                return
            pid = self._step_pid(proc, container_id)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if await self._wait(proc, self.grace):
                    return
            # The step dies with its init (PR_SET_PDEATHSIG).
            proc.kill()
            await proc.wait()


def _last_log_error(log: Path) -> str | None:
    """The last error a runc/crun JSON log holds."""
    message = None
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("level") in ("error", "fatal") and entry.get("msg"):
                    message = str(entry["msg"])
    except FileNotFoundError:
        return None
    return message


# -- choosing an executor -----------------------------------------------------------


def cgroup_hybrid_reason() -> str | None:
    """Why crun cannot run here, or None: crun refuses a machine with cgroup v1
    and v2 mounted side by side while v2 holds controllers (MACHINE-NOTES)."""
    v1 = False
    v2_mounts: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "cgroup":
                v1 = True
            elif fstype == "cgroup2":
                v2_mounts.append(fields[4])
    for mount_point in v2_mounts if v1 else []:
        try:
            controllers = Path(mount_point, "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if controllers:
            return (
                f"cgroups in hybrid mode (v1 and v2 mounted together, controllers "
                f"{' '.join(controllers)} on v2 at {mount_point})"
            )
    return None


def find_executor(
    name: str | None, state_dir: Path, grace: float = DEFAULT_GRACE
) -> Executor:
    """The executor ``name`` asks for: None or "auto" (runc on PATH, else
    builtin; crun only when named, since it cannot run on hybrid-cgroup
    machines), "runc", "crun", "builtin" or a path to an OCI runtime binary.

    ``state_dir`` is where executors keep per-container state; each gets its own
    subdirectory. Raises ExecutorUnavailable with one line saying why.
    """
    state_dir = Path(state_dir)
    if os.geteuid() != 0:
        raise ExecutorUnavailable(
            f"executor {name or 'auto'} needs root: rootless builds are not supported"
        )
    if name in (None, "", "auto"):
        runc = shutil.which("runc")
        if runc:
            return RuncExecutor(runc, state_dir / "runc", grace)
        return BuiltinExecutor(state_dir / "builtin", grace)
    if name == "builtin":
        return BuiltinExecutor(state_dir / "builtin", grace)
    if name in ("runc", "crun"):
        binary = shutil.which(name)
        if binary is None:
            raise ExecutorUnavailable(
                f"{name} not found on PATH ({os.get_exec_path()})"
            )
    elif "/" in name:
        binary = os.path.abspath(name)
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise ExecutorUnavailable(f"OCI runtime {name} is not an executable file")
    else:
        raise ExecutorUnavailable(
            f"unknown executor {name!r}: expected auto, runc, crun, builtin "
            f"or a path to an OCI runtime binary"
        )
    label = Path(binary).name
    if label.startswith("crun"):
        reason = cgroup_hybrid_reason()
        if reason:
            raise ExecutorUnavailable(
                f"crun cannot run containers here: {reason}; use runc or builtin"
            )
    return RuncExecutor(binary, state_dir / label, grace)
