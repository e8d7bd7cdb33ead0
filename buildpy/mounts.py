"""RUN --mount: what each mount of an ExecOp points at, prepared for one step.

Theory of operation
-------------------
``StepMounts.prepare`` turns the op's ``ExecMount`` list into runtime mounts
(``runtime.Mount``, bind or tmpfs) and extra environment, and undoes all of it
when the step is over, cancellation included (every undo runs shielded):

* ``cache``: a directory under ``ROOT/cachemounts/<hash of id and from>/N``,
  bound read-write. It lives across builds and is outside every snapshot, so it
  never reaches a layer, and the op encodes only its id and options, so its
  content never reaches a cache key. Sharing is a ``flock`` on ``N.lock``:
  ``shared`` holds it shared, ``locked`` exclusive (waiting), ``private`` takes
  the first instance N whose lock it can hold exclusively without waiting.
  A new instance is filled in a ``new-*`` directory (``from``/``source`` copied
  in, then ``mode``/``uid``/``gid``) and renamed into place, so a half-made
  cache is never used.
* ``bind``: a path of another result (a read-only overlay view of a snapshot)
  or of the context. Read-only by default; ``rw`` puts a throw-away overlay on
  top, whose upperdir is deleted after the step.
* ``tmpfs``: a tmpfs of ``size`` bytes.
* ``secret``: the value is copied into a file on a tmpfs mounted on the
  step's bundle directory (``private_bundle``), bound read-only at the target,
  and/or put into the environment. The bundle's config.json, which holds the
  environment, is on that tmpfs too, so a secret is never written to the disk
  under the state root. The value is never part of a message.
* ``ssh``: a Unix socket proxy to an ssh agent: the user's agent, or an
  ``ssh-agent`` started for the step and loaded with the given key files. The
  proxy's socket gets the mount's mode/uid/gid without touching the user's.

Mount points the runtime creates in the rootfs for these targets are removed
after the step by runtime.spec.remove_stubs, so they never land in a layer.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from buildpy.errors import UsageError, sole
from runtime import Mount, mount, umount2
from runtime.spec import secure_join
from solver.errors import ExecutionError
from solver.graph import ContextSource, CopyAction, ExecMount, ExecOp, FileOp, Vertex

# The result of a ContextSource, which is no snapshot: the main context's, or
# "context:NAME" for a --build-context NAME=DIR.
CONTEXT_RESULT = "context"


def context_result(name: str) -> str:
    return CONTEXT_RESULT if name == CONTEXT_RESULT else f"{CONTEXT_RESULT}:{name}"


def context_name(result: str) -> str | None:
    """The context a result is (CONTEXT_RESULT for the main one), else None."""
    if result == CONTEXT_RESULT:
        return result
    if result.startswith(CONTEXT_RESULT + ":"):
        return result[len(CONTEXT_RESULT) + 1 :]
    return None


CACHE_DIR = "cachemounts"
SECRETS_DIR = "/run/secrets"
SSH_DIR = "/run/buildkit"
_MS_RDONLY = 1
_MNT_DETACH = 2
_CHUNK = 1 << 16

View = Callable[[str], AbstractAsyncContextManager[Path]]


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


# -- what the user passes to `buildpy build` -------------------------------------


@dataclass(frozen=True)
class SecretSource:
    """``--secret id=NAME,src=FILE`` or ``--secret id=NAME,env=VAR``."""

    id: str
    src: Path | None = None
    env: str | None = None

    @classmethod
    def parse(cls, text: str) -> SecretSource:
        fields = _csv_fields(text, "--secret")
        ident = fields.pop("id", "")
        src = fields.pop("src", None) or fields.pop("source", None)
        env = fields.pop("env", None)
        kind = fields.pop("type", None)
        if fields or not ident or (src and env) or kind not in (None, "file", "env"):
            raise UsageError(
                f"invalid --secret {text!r}: expected id=NAME,src=FILE or "
                "id=NAME,env=VAR"
            )
        if src is None and env is None:
            env = ident  # as buildx: the variable named like the id
        if src is not None and not os.path.isfile(src):
            raise UsageError(f"--secret id={ident}: {src} is not a readable file")
        return cls(ident, Path(src) if src else None, env)

    def value(self) -> bytes:
        """The secret, for an environment variable (small by nature)."""
        if self.src is not None:
            return self.src.read_bytes()
        return os.environb.get(os.fsencode(self.env or ""), b"")

    def write_to(self, path: Path) -> None:
        """Copy the secret into ``path`` (mode 0600), streaming from a file."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as out:
            if self.src is None:
                out.write(self.value())
                return
            with open(self.src, "rb") as f:
                shutil.copyfileobj(f, out, _CHUNK)


@dataclass(frozen=True)
class SSHSource:
    """``--ssh ID[=PATH[,PATH...]]``: an agent socket or key files; without a
    path, ``$SSH_AUTH_SOCK``."""

    id: str
    paths: tuple[Path, ...]

    @classmethod
    def parse(cls, text: str) -> SSHSource:
        ident, sep, rest = text.partition("=")
        if not ident or not re.fullmatch(r"[\w.-]+", ident):
            raise UsageError(f"invalid --ssh {text!r}: expected ID[=SOCKET|KEY,...]")
        paths = [p for p in rest.split(",") if p] if sep else []
        if not paths:
            sock = os.environ.get("SSH_AUTH_SOCK")
            if not sock:
                raise UsageError(
                    f"--ssh {ident}: no path given and SSH_AUTH_SOCK is not set"
                )
            paths = [sock]
        for p in paths:
            if not os.path.exists(p):
                raise UsageError(f"--ssh {ident}: {p} does not exist")
        return cls(ident, tuple(Path(p) for p in paths))

    def socket(self) -> Path | None:
        """The agent socket, when the source is one (else key files)."""
        if len(self.paths) == 1 and stat.S_ISSOCK(os.stat(self.paths[0]).st_mode):
            return self.paths[0]
        return None


def _csv_fields(text: str, flag: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid {flag} {text!r}: {item!r} is not KEY=VALUE")
        fields[key.strip().lower()] = value
    return fields


# -- the prepared mounts ---------------------------------------------------------


@dataclass
class Prepared:
    """What a step gets on top of its op: mounts, and environment entries."""

    mounts: list[Mount] = field(default_factory=list)
    env: list[str] = field(default_factory=list)


def needs_private_bundle(op: ExecOp) -> bool:
    return any(m.type == "secret" for m in op.mounts)


def context_reads(vertex: Vertex) -> list[tuple[str, CopyAction]]:
    """What a step reads from a context, as (the context's name, a copy): a
    COPY's own actions, and the paths a RUN binds as copies, so that the
    content of what it reads enters its cache key as a COPY's does."""
    op = vertex.op
    if isinstance(op, FileOp):
        return [
            (source.name, a)
            for a in op.actions
            if isinstance(a, CopyAction)
            and isinstance(source := vertex.inputs[a.source].op, ContextSource)
        ]
    if not isinstance(op, ExecOp):
        return []
    reads = []
    for m in op.mounts:
        if m.type != "bind":
            continue
        name = CONTEXT_RESULT
        if m.input is not None:
            source = vertex.inputs[m.input].op
            if not isinstance(source, ContextSource):
                continue
            name = source.name
        path = m.source.strip("/") or "."
        reads.append((name, CopyAction(sources=(path,), dest="/")))
    return reads


class StepMounts:
    """Prepares the RUN --mount sources of the steps of one build."""

    def __init__(
        self,
        root: Path,
        *,
        view: View,
        secrets: Mapping[str, SecretSource] | None = None,
        ssh: Mapping[str, SSHSource] | None = None,
        overlay_options: Callable[[], tuple[str, ...]] = lambda: (),
    ) -> None:
        self.root = root
        self.view = view
        self.secrets = dict(secrets or {})
        self.ssh = dict(ssh or {})
        self.overlay_options = overlay_options

    @asynccontextmanager
    async def private_bundle(self, op: ExecOp, bundle: Path) -> AsyncIterator[None]:
        """A tmpfs on ``bundle`` when the op reads secrets (see the module doc)."""
        if not needs_private_bundle(op):
            yield
            return
        bundle.mkdir(parents=True)
        try:
            flags = 0x2 | 0x4  # nosuid, nodev
            await _thread(mount, "tmpfs", str(bundle), "tmpfs", flags, "mode=0700")
            try:
                yield
            finally:
                with trio.CancelScope(shield=True):
                    await _thread(umount2, str(bundle), _MNT_DETACH)
        finally:
            with trio.CancelScope(shield=True):
                await _thread(shutil.rmtree, bundle, True)

    @asynccontextmanager
    async def prepare(
        self, op: ExecOp, inputs: Sequence[str], bundle: Path
    ) -> AsyncIterator[Prepared]:
        prepared = Prepared()
        try:
            async with AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                stack.callback(nursery.cancel_scope.cancel, "the step has ended")
                await self._prepare(stack, nursery, op, inputs, bundle, prepared)
                yield prepared
        except BaseExceptionGroup as group:
            # The proxies' nursery wraps whatever the step raised; the solver
            # wants the step's own error.
            raise sole(group) from None

    async def _prepare(
        self,
        stack: AsyncExitStack,
        nursery: trio.Nursery,
        op: ExecOp,
        inputs: Sequence[str],
        bundle: Path,
        prepared: Prepared,
    ) -> None:
        ssh_count = 0
        # Outer targets first, so that a mount inside another one is seen.
        for m in sorted(op.mounts, key=lambda m: m.target.count("/")):
            mount: Mount | None
            if m.type == "cache":
                mount = await self._cache(stack, m, inputs)
            elif m.type == "bind":
                mount = await self._bind(stack, m, inputs)
            elif m.type == "tmpfs":
                options = ("nosuid", "nodev", "strictatime")
                if m.size:
                    options += (f"size={m.size}",)
                mount = Mount(m.target, "tmpfs", "tmpfs", options)
            elif m.type == "secret":
                mount = await self._secret(m, bundle, prepared)
            elif m.type == "ssh":
                mount = await self._ssh(stack, nursery, m, ssh_count, prepared)
                ssh_count += mount is not None
            else:
                raise ExecutionError(
                    f"RUN --mount: unknown type {m.type!r}: expected bind, "
                    "cache, tmpfs, secret or ssh"
                )
            if mount is not None:
                prepared.mounts.append(mount)

    # -- cache ---------------------------------------------------------------------

    async def _cache(
        self, stack: AsyncExitStack, m: ExecMount, inputs: Sequence[str]
    ) -> Mount:
        if m.sharing not in ("shared", "private", "locked"):
            raise ExecutionError(
                f"RUN --mount=type=cache: sharing={m.sharing!r}: expected shared, "
                "private or locked"
            )
        seed = inputs[m.input] if m.input is not None else None
        ident = f"{m.id or m.target}\0{seed or ''}\0{m.source if seed else ''}"
        base = self.root / CACHE_DIR / hashlib.sha256(ident.encode()).hexdigest()[:32]
        fd, path = await _locked(base, m.sharing)
        stack.callback(os.close, fd)
        if not path.is_dir():
            await self._make_cache(path, m, seed)
        return Mount(m.target, "bind", str(path), ("rbind", "rw"))

    async def _make_cache(self, path: Path, m: ExecMount, seed: str | None) -> None:
        new = path.with_name(f"new-{_new_id()}")
        try:
            if seed is None:
                new.mkdir()
            else:
                async with self.view(seed) as src:
                    source = secure_join(src, m.source or "/")
                    if not source.is_dir():
                        raise ExecutionError(
                            f"RUN --mount=type=cache: from source {m.source!r} is "
                            "not a directory"
                        )
                    await _thread(shutil.copytree, source, new, True)
            os.chmod(new, 0o755 if m.mode is None else m.mode)
            os.lchown(new, m.uid or 0, m.gid or 0)
            await _thread(_install, new, path)
        finally:
            with trio.CancelScope(shield=True):
                await _thread(shutil.rmtree, new, True)

    # -- bind ----------------------------------------------------------------------

    async def _bind(
        self, stack: AsyncExitStack, m: ExecMount, inputs: Sequence[str]
    ) -> Mount:
        result = inputs[m.input] if m.input is not None else CONTEXT_RESULT
        src_root = await stack.enter_async_context(self.view(result))
        source = secure_join(src_root, m.source or "/")
        if not os.path.lexists(source):
            named = context_name(result)
            where = (
                "its input"
                if named is None
                else "the context"
                if named == CONTEXT_RESULT
                else f"the build context {named}"
            )
            raise ExecutionError(
                f"RUN --mount=type=bind: source {m.source!r} not found in {where}"
            )
        if m.readonly:
            return Mount(m.target, "bind", str(source), ("rbind", "ro"))
        scratch = self.root / "mnt" / f"rw-{_new_id()}"
        scratch.mkdir(parents=True)
        stack.push_async_callback(_shielded, shutil.rmtree, scratch, True)
        if not source.is_dir():
            # A file: the step writes to a copy, which is thrown away.
            copy = scratch / "file"
            await _thread(shutil.copy2, source, copy)
            return Mount(m.target, "bind", str(copy), ("rbind", "rw"))
        for sub in ("upper", "work", "merged"):
            (scratch / sub).mkdir()
        options = [
            f"lowerdir={source}",
            f"upperdir={scratch / 'upper'}",
            f"workdir={scratch / 'work'}",
            *self.overlay_options(),
        ]
        merged = scratch / "merged"
        data = ",".join(options)
        await _thread(mount, "overlay", str(merged), "overlay", 0, data)
        stack.push_async_callback(_shielded, umount2, str(merged), _MNT_DETACH)
        return Mount(m.target, "bind", str(merged), ("rbind", "rw"))

    # -- secret --------------------------------------------------------------------

    async def _secret(
        self, m: ExecMount, bundle: Path, prepared: Prepared
    ) -> Mount | None:
        source = self.secrets.get(m.id)
        if source is None:
            if m.required:
                raise ExecutionError(
                    f"secret {m.id} is required but was not given: pass "
                    f"--secret id={m.id},src=FILE or id={m.id},env=VAR"
                )
            return None
        if m.env:
            value = await _thread(source.value)
            prepared.env.append(f"{m.env}={value.decode(errors='surrogateescape')}")
            if not m.target:
                return None
        target = m.target or f"{SECRETS_DIR}/{m.id}"
        secrets = bundle / "secrets"  # on the bundle's tmpfs: private_bundle
        secrets.mkdir(exist_ok=True, mode=0o700)
        path = secrets / _new_id()
        await _thread(source.write_to, path)
        os.chmod(path, 0o400 if m.mode is None else m.mode)
        os.chown(path, m.uid or 0, m.gid or 0)
        return Mount(target, "bind", str(path), ("rbind", "ro", "nosuid", "nodev"))

    # -- ssh -------------------------------------------------------------------------

    async def _ssh(
        self,
        stack: AsyncExitStack,
        nursery: trio.Nursery,
        m: ExecMount,
        count: int,
        prepared: Prepared,
    ) -> Mount | None:
        ident = m.id or "default"
        source = self.ssh.get(ident)
        if source is None:
            if m.required:
                raise ExecutionError(
                    f"ssh agent {ident} is required but was not given: pass "
                    f"--ssh {ident}=$SSH_AUTH_SOCK or --ssh {ident}=KEYFILE"
                )
            return None
        agent = await stack.enter_async_context(_agent(source))
        # Unix socket paths are short (108 bytes): a state root may be deeper.
        tmp = Path(tempfile.mkdtemp(prefix="buildpy-ssh-"))
        stack.push_async_callback(_shielded, shutil.rmtree, tmp, True)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener: trio.SocketListener | None = None
        try:
            path = tmp / "agent.sock"
            await sock.bind(str(path))
            sock.listen(16)
            listener = trio.SocketListener(sock)
        finally:
            if listener is None:
                sock.close()
        # The proxy task owns the listener and closes it when cancelled.
        nursery.start_soon(_proxy, listener, agent)
        os.chmod(path, 0o600 if m.mode is None else m.mode)
        os.chown(path, m.uid or 0, m.gid or 0)
        target = m.target or f"{SSH_DIR}/ssh_agent.{count}"
        if count == 0:
            prepared.env.append(f"SSH_AUTH_SOCK={target}")
        return Mount(target, "bind", str(path), ("rbind",))


# -- helpers ---------------------------------------------------------------------


async def _thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args))


async def _shielded(fn: Callable[..., Any], *args: Any) -> None:
    with trio.CancelScope(shield=True):
        await _thread(fn, *args)


def _acquire(base: Path, sharing: str) -> tuple[int, Path]:
    """Lock a cache instance under ``base`` as ``sharing`` asks (blocking)."""
    base.mkdir(parents=True, exist_ok=True)
    number = 0
    while True:
        lock = base / f"{number}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if sharing == "private":
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.flock(fd, fcntl.LOCK_SH if sharing == "shared" else fcntl.LOCK_EX)
        except BlockingIOError:
            os.close(fd)
            number += 1
            continue
        except BaseException:
            os.close(fd)
            raise
        return fd, base / str(number)


def _install(new: Path, path: Path) -> None:
    """Rename a filled cache instance into place, unless a step sharing it
    made it first (then theirs is used and ours is deleted by the caller)."""
    fd = os.open(path.parent / "create.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not path.exists():
            os.rename(new, path)
    finally:
        os.close(fd)


async def _locked(base: Path, sharing: str) -> tuple[int, Path]:
    """``_acquire`` in a thread that a cancel abandons; a lock the abandoned
    thread gets later is released at once, never leaked."""
    guard = threading.Lock()
    state: dict[str, Any] = {}

    def work() -> tuple[int, Path] | None:
        fd, path = _acquire(base, sharing)
        with guard:
            if state.get("abandoned"):
                os.close(fd)
                return None
            state["fd"] = fd
        return fd, path

    try:
        got = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        with guard:
            state["abandoned"] = True
            if "fd" in state:
                os.close(state["fd"])
        raise
    assert got is not None
    return got


@asynccontextmanager
async def _agent(source: SSHSource) -> AsyncIterator[Path]:
    """The agent socket of ``source``: the user's, or a fresh ssh-agent holding
    the source's key files, stopped afterwards."""
    sock = source.socket()
    if sock is not None:
        yield sock
        return
    tmp = Path(tempfile.mkdtemp(prefix="buildpy-agent-"))
    pid: int | None = None
    try:
        path = tmp / "agent.sock"
        started = await trio.run_process(
            ["ssh-agent", "-s", "-a", str(path)],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        found = re.search(rb"SSH_AGENT_PID=(\d+)", started.stdout)
        if started.returncode != 0 or not found:
            raise ExecutionError(
                f"cannot start ssh-agent for --ssh {source.id}: "
                f"{started.stderr.decode(errors='replace').strip()}",
                user_fault=False,
            )
        pid = int(found.group(1))
        env = {**os.environ, "SSH_AUTH_SOCK": str(path), "SSH_ASKPASS_REQUIRE": "never"}
        for key in source.paths:
            added = await trio.run_process(
                ["ssh-add", "-q", str(key)],
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                env=env,
                check=False,
            )
            if added.returncode != 0:
                raise ExecutionError(
                    f"--ssh {source.id}: cannot load key {key}: "
                    f"{added.stderr.decode(errors='replace').strip()}"
                )
        yield path
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


async def _proxy(listener: trio.SocketListener, agent: Path) -> None:
    """Serve every connection to ``listener`` by one to the agent's socket."""
    async with listener, trio.open_nursery() as nursery:
        while True:
            client = await listener.accept()
            nursery.start_soon(_splice, client, agent)


async def _splice(client: trio.SocketStream, agent: Path) -> None:
    async with client:
        try:
            upstream = await trio.open_unix_socket(str(agent))
        except OSError:
            return
        async with upstream:

            async def pipe(a: trio.SocketStream, b: trio.SocketStream) -> None:
                try:
                    while data := await a.receive_some(_CHUNK):
                        await b.send_all(data)
                    await b.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipe, client, upstream)
                nursery.start_soon(pipe, upstream, client)
