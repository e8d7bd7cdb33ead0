"""``buildpy run``: start an image of the local store, as ``docker run`` does.

The container runs with the runtime that runs RUN steps (same bundle, same
executors) on a fresh active snapshot of the image's committed one. There are
no named containers: the snapshot, its mount and the bundle are removed when the
container exits, whatever the way out (``--rm`` is accepted for docker's sake).
Its stdio is ours (no pipes, so a CI step sees the output as it comes), and
``buildpy run`` exits with the container's exit code. SIGTERM and Ctrl-C stop
the container (SIGTERM, a grace period, SIGKILL) and clean up before exiting.
"""

from __future__ import annotations

import argparse
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildpy.errors import InfraError, UsageError

if TYPE_CHECKING:  # the rest is imported when the command runs: --help is cheap
    from buildpy.engine import Engine
    from runtime import Executor, Mount, ProcessSpec


@dataclass(frozen=True)
class RunRequest:
    image: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # -e K=V, or -e K to take it from our environment
    volumes: tuple[str, ...] = ()  # -v SRC:DST[:ro|rw]
    workdir: str | None = None
    user: str | None = None
    entrypoint: str | None = None
    network: str = "host"
    interactive: bool = False
    tty: bool = False
    oci_runtime: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``buildpy run``, as docker spells them."""
    parser.add_argument("--rm", action="store_true", help="(always: no names yet)")
    parser.add_argument("--network", choices=("host", "none"), default="host")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    parser.add_argument(
        "-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]"
    )
    parser.add_argument("-w", "--workdir", help="working directory in the container")
    parser.add_argument("-u", "--user", help="user[:group], by name or number")
    parser.add_argument("--entrypoint", help="the program to run instead")
    parser.add_argument("-i", "--interactive", action="store_true", help="keep stdin")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    parser.add_argument("--oci-runtime", help="runc, crun, builtin or a path")
    parser.add_argument("image", help="NAME[:TAG] of the local store")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="command and args")


def run_command(args: argparse.Namespace, root: Path | None) -> int:
    req = RunRequest(
        image=args.image,
        args=tuple(args.args),
        env=tuple(args.env),
        volumes=tuple(args.volume),
        workdir=args.workdir,
        user=args.user,
        entrypoint=args.entrypoint,
        network=args.network,
        interactive=args.interactive,
        tty=args.tty,
        oci_runtime=args.oci_runtime,
    )
    from buildpy.commands import run_trio
    from buildpy.engine import Engine
    from runtime import RuntimeFault, find_executor

    with Engine.open(root) as engine:
        digest = engine.images.get(req.image)
        config = engine.images.config(engine.images.manifest(digest))
        spec = process_spec(req, config.get("config") or {})
        try:
            executor = find_executor(req.oci_runtime, engine.root / "runc")
            return int(run_trio(_run, engine, digest, spec, executor, req))
        except RuntimeFault as exc:
            raise InfraError(str(exc)) from None


def process_spec(req: RunRequest, config: dict[str, Any]) -> ProcessSpec:
    """The container's process from the image config and the flags, with
    docker's rules: --entrypoint replaces the image's and drops its Cmd; ARGs
    replace Cmd; -e overrides the image's Env by name."""
    from runtime import ProcessSpec

    if req.entrypoint is not None:
        entrypoint = [req.entrypoint] if req.entrypoint else []
        cmd: list[str] = []
    else:
        entrypoint = list(config.get("Entrypoint") or [])
        cmd = list(config.get("Cmd") or [])
    argv = entrypoint + (list(req.args) if req.args else cmd)
    if not argv:
        raise UsageError(f"no command given and image {req.image} has no CMD")
    env = {}
    for item in [*(config.get("Env") or []), *map(_env_item, req.env)]:
        key, _, _ = item.partition("=")
        env[key] = item
    return ProcessSpec(
        args=argv,
        env=tuple(env.values()),
        cwd=req.workdir or config.get("WorkingDir") or "/",
        user=req.user if req.user is not None else config.get("User") or "",
        network=req.network,
        hostname=uuid.uuid4().hex[:12],
        mounts=tuple(_volume(v) for v in req.volumes),
        terminal=req.tty,  # a pty of the container's; runtime.console
    )


def _env_item(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not key:
        raise UsageError(f"invalid -e {text!r}: expected KEY=VALUE")
    return text if sep else f"{key}={os.environ.get(key, '')}"


def _volume(text: str) -> Mount:
    from runtime import Mount

    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise UsageError(f"invalid -v {text!r}: expected SRC:/DST[:ro|rw]")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise UsageError(f"invalid -v {text!r}: mode {mode!r}, expected ro or rw")
    source = os.path.abspath(parts[0])
    if not os.path.exists(source):
        raise UsageError(f"-v {text}: {source} does not exist")
    return Mount(parts[1], "bind", source, ("rbind", mode))


async def _run(
    engine: Engine, digest: str, spec: ProcessSpec, executor: Executor, req: RunRequest
) -> int:
    import trio

    from buildpy.worker import remove_tree
    from runtime import StepSpecError, make_bundle

    ident = uuid.uuid4().hex[:16]
    cid = "buildpy-run-" + ident
    bundle = engine.root / "bundles" / cid
    rootfs = bundle / "rootfs"
    key = "run-" + ident
    snaps = engine.snapshots
    parent = await trio.to_thread.run_sync(engine.image_snapshot, digest)
    await trio.to_thread.run_sync(snaps.prepare, key, parent or None)
    try:
        rootfs.mkdir(parents=True)
        await trio.to_thread.run_sync(snaps.mount, key, rootfs)
        try:
            try:
                await trio.to_thread.run_sync(make_bundle, bundle, rootfs, spec)
            except StepSpecError as exc:
                raise UsageError(str(exc)) from None
            return await _until_signal(executor, bundle, cid, req)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(snaps.unmount, rootfs)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(snaps.remove, key)
            await trio.to_thread.run_sync(remove_tree, bundle)


async def _until_signal(
    executor: Executor, bundle: Path, cid: str, req: RunRequest
) -> int:
    """Run the container; SIGTERM or SIGHUP to us stops it (the executor's
    TERM, grace, KILL) and we exit 128+N, as a shell reports a signal."""
    import trio

    code: int | None = None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def container() -> None:
                nonlocal code
                code = await executor.run(
                    bundle, cid, None, stdin=req.interactive or req.tty
                )
                nursery.cancel_scope.cancel("the container exited")

            async def watch() -> None:
                nonlocal code
                async for signum in signals:
                    code = 128 + signum
                    nursery.cancel_scope.cancel(f"signal {signum}")
                    return

            nursery.start_soon(container)
            nursery.start_soon(watch)
    assert code is not None
    return code


__all__ = ["RunRequest", "add_arguments", "process_spec", "run_command"]
