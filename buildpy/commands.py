"""What each command does, between the parsed flags and the engine.

Imported only when a command runs, so that ``buildpy --help`` and a thin client
stay cheap to start.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from buildpy import cachecmds, errors
from buildpy.build import BuildRequest, check_entitlements, run_build
from buildpy.cli import print_json
from buildpy.engine import Engine, host_platform
from buildpy.errors import InfraError, UsageError
from buildpy.exporters import Output, _timestamp, check_stdout
from buildpy.humanize import ago, print_table
from buildpy.mounts import SecretSource, SSHSource
from buildpy.progress import Display, error_block, make_display
from buildpy.stdinput import build_input, uses_stdin
from frontend import DockerfileError, is_git_source
from frontend.errors import source_frame
from runtime import ExecutorUnavailable
from runtime.spec import ulimit_beyond_reach
from snapshotter.compression import open_decompressed
from snapshotter.diff import write_tree
from snapshotter.errors import SnapshotError
from solver.errors import CacheMiss, ExecutionError, VertexFailed


def run_trio(fn: Any, *args: Any) -> Any:
    """trio.run, raising the one exception that matters instead of a group."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        raise errors.sole(group) from None


def build(args: argparse.Namespace, root: Path | None) -> int:
    mode = args.progress or os.environ.get("BUILDKIT_PROGRESS") or "auto"
    if args.quiet:
        mode = "quiet"
    if mode not in ("auto", "plain", "tty", "quiet", "rawjson"):
        raise UsageError(f"invalid progress mode {mode!r} (from BUILDKIT_PROGRESS)")
    git_url = args.context if is_git_source(str(args.context)) else None
    req = BuildRequest(
        context=Path(args.context) if git_url is None else Path("."),
        dockerfile=args.file,
        tags=list(args.tag),
        build_args=dict(args.build_arg),
        target=args.target,
        no_cache=args.no_cache,
        outputs=[Output.parse(o) for o in args.output],
        network="host" if args.network == "default" else args.network,
        jobs=args.jobs,
        oci_runtime=args.oci_runtime,
        secrets={s.id: s for s in map(SecretSource.parse, args.secret)},
        ssh={s.id: s for s in map(SSHSource.parse, args.ssh)},
        cache_from=args.cache_from,  # buildpy.cacheio.CacheSpec, parsed by argparse
        cache_to=args.cache_to,
        labels=dict(args.label),
        annotations=dict(args.annotation),
        pull=args.pull,
        extra_hosts=list(args.add_host),
        shm_size=args.shm_size or 0,
        ulimits=list(args.ulimit),
        build_contexts=list(args.build_context),
        allow=set(args.allow),
        squash=args.squash,
    )
    if args.push:
        req.outputs.append(Output(type="image", push=True))
    if args.load and not any(o.type == "image" for o in req.outputs):
        req.outputs.append(Output(type="image"))
    cachecmds.apply_build_flags(args, req)
    check_stdout(req.outputs, quiet=mode == "quiet")
    check_entitlements(req)
    if req.ulimits and (why := ulimit_beyond_reach(req.ulimits)):
        raise UsageError(why)  # before the build, not from every RUN step
    display = make_display(mode)
    try:
        with (
            Engine.open(root, verify_cache=args.verify_cache) as engine,
            _remembered(engine, args, req) as outcome,
            _build_input(engine, req, git_url),
        ):
            result = cachecmds.run_build_locked(
                engine, args, lambda: run_trio(run_build, engine, req, display)
            )
            outcome.append(result)
    except CacheMiss as exc:  # --fail-on-cache-miss; the solver raises it as is
        display.close()
        print(f"ERROR: {exc}", file=sys.stderr)
        return errors.EXIT_CACHE_MISS
    except DockerfileError as exc:
        display.close()
        _print_dockerfile_error(req, exc)
        return errors.EXIT_DOCKERFILE
    except VertexFailed as exc:
        display.close()
        return _print_step_failure(req, display, exc)
    except (SnapshotError, ExecutorUnavailable) as exc:
        display.close()
        print(f"ERROR: {exc}", file=sys.stderr)
        return errors.EXIT_INFRA
    except BaseException:
        display.close()
        raise
    display.close()
    if result.image is None:
        return cachecmds.print_dry_run(args, result)
    if mode == "quiet":
        print(result.image.config_digest)
    else:
        for name in result.names:
            print(f"naming to {name} done", file=sys.stderr)
    return errors.EXIT_OK


@contextmanager
def _remembered(
    engine: Engine, args: argparse.Namespace, req: BuildRequest
) -> Iterator[list[Any]]:
    """Record the build in the store's history (buildpy.buildhistory) when it
    ends, whichever way; the caller appends the BuildResult when there is one.
    A dry run builds nothing and is not recorded."""
    if req.dry_run:
        yield []
        return
    from buildpy.buildhistory import BuildHistory, BuildRecord, new_id

    outcome: list[Any] = []
    build = BuildRecord(
        new_id(),
        time.time(),
        0.0,
        "completed",
        str(args.context),
        str(args.file) if args.file else "Dockerfile",
        req.target or "",
        list(req.tags),
    )
    try:
        yield outcome
    except KeyboardInterrupt:
        build.status = "canceled"
        raise
    except BaseException as exc:
        build.status = "failed"
        cause = errors.sole(exc.cause) if isinstance(exc, VertexFailed) else exc
        build.error = str(cause) or type(cause).__name__
        raise
    finally:
        build.ended = time.time()
        if outcome and outcome[0].image is not None:
            from buildpy.report import step_report

            result = outcome[0]
            build.names = list(result.names) or build.names
            build.image = result.image.config_digest
            build.report = step_report(None, result.solve)
            counts = build.report["buildpy.cache"]
            build.steps = counts["hits"] + counts["misses"]
            build.cached = counts["hits"]
        try:
            BuildHistory(engine.state.db, engine.state.lock).record(build)
        except sqlite3.Error as exc:  # the build's outcome matters more
            print(f"WARNING: the build was not recorded: {exc}", file=sys.stderr)


@contextmanager
def _build_input(
    engine: Engine, req: BuildRequest, git_url: str | None
) -> Iterator[None]:
    """A context that is not a directory of the user's, made one for as long
    as the build runs: a git repository (buildpy.gitsource), or the Dockerfile
    or the context from stdin (buildpy.stdinput)."""
    tmp = engine.root / "tmp"
    if git_url is not None:
        # Imported here: with the registry client under it, it costs every
        # other build some 20 ms.
        from buildpy.gitsource import git_context

        with git_context(git_url, tmp) as where:
            req.context = where
            if req.dockerfile is not None and not req.dockerfile.is_absolute():
                # As docker build: -f names a file of the repository.
                req.dockerfile = where / req.dockerfile
            with _forgotten(engine, where):
                yield
        return
    if not uses_stdin(req.context, req.dockerfile):
        yield
        return
    with build_input(req.context, req.dockerfile, sys.stdin.buffer, tmp) as given:
        req.context, req.dockerfile = given.context, given.dockerfile
        req.dockerfile_text = given.dockerfile_text
        with _forgotten(engine, given.context):
            yield


@contextmanager
def _forgotten(engine: Engine, context: Path) -> Iterator[None]:
    """A context in a directory never seen again: its checksum records go
    when the build ends, or they would only pile up."""
    try:
        yield
    finally:
        engine.hasher.forget(context.resolve())


def _dockerfile_text(req: BuildRequest) -> str:
    if req.dockerfile_text is not None:
        return req.dockerfile_text
    path = req.dockerfile or req.context / "Dockerfile"
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _print_dockerfile_error(req: BuildRequest, exc: DockerfileError) -> None:
    text = _dockerfile_text(req)
    if text and exc.line:
        print(f"{exc.filename}:{exc.line}", file=sys.stderr)
        print(exc.frame(text), file=sys.stderr)
    print(f"ERROR: {exc}", file=sys.stderr)


def _print_step_failure(req: BuildRequest, display: Display, exc: VertexFailed) -> int:
    cause = errors.sole(exc.cause)
    vertex = exc.vertex
    if isinstance(cause, CacheMiss):
        print(f"ERROR: {cause}", file=sys.stderr)
        return errors.EXIT_CACHE_MISS
    block = error_block(display, vertex.digest)
    if block:
        print(block, file=sys.stderr)
    text = _dockerfile_text(req)
    if text and vertex.meta.lines:
        first, last = vertex.meta.lines
        name = (req.dockerfile or Path("Dockerfile")).name
        print(f"{name}:{first}", file=sys.stderr)
        print(source_frame(text, first, last), file=sys.stderr)
    print(f"ERROR: {cause}", file=sys.stderr)
    if isinstance(cause, ExecutionError) and cause.user_fault:
        return errors.EXIT_STEP_FAILED
    return errors.EXIT_INFRA


# --- import ---------------------------------------------------------------------


def import_image(args: argparse.Namespace, root: Path | None) -> int:
    source: Path = args.source
    if not source.exists():
        raise UsageError(f"cannot import {source}: no such file or directory")
    with Engine.open(root) as engine:
        try:
            with engine.content.writer() as w:
                if source.is_dir():
                    write_tree(source, w)  # type: ignore[arg-type]
                else:
                    with open(source, "rb") as raw:
                        stream = open_decompressed(raw)
                        while chunk := stream.read(1 << 20):
                            w.write(chunk)
                diff_id, size = w.commit()
        except (OSError, SnapshotError) as exc:
            raise UsageError(f"cannot import {source}: {exc}") from None
        now = _timestamp(time.time())
        os_name, arch = host_platform()
        config: dict[str, Any] = {
            "architecture": arch,
            "os": os_name,
            "created": now,
            "config": _import_changes(args.change),
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": now, "comment": f"Imported from {source.name}"}],
        }
        digest = engine.images.save(config, [(diff_id, size)])
        try:
            # Unpack now: a bad archive is refused here, not in the first build.
            engine.image_snapshot(digest)
        except SnapshotError as exc:
            raise UsageError(f"cannot import {source}: {exc}") from None
        name = engine.images.tag(args.name, digest)
        manifest = engine.images.manifest(digest)
    print(manifest["config"]["digest"])
    print(f"imported {source} as {name}", file=sys.stderr)
    return errors.EXIT_OK


def _import_changes(changes: list[str]) -> dict[str, Any]:
    """``--change 'CMD ["sh"]'``: instructions applied to an empty config, through
    the frontend so that they mean exactly what they mean in a Dockerfile."""
    if not changes:
        return {}
    from frontend import ResolvedImage, convert

    def no_images(name: str) -> ResolvedImage:
        raise LookupError(name)

    text = "FROM scratch\n" + "\n".join(changes) + "\n"
    try:
        plan = convert(text, filename="--change", resolve_image=no_images)
    except DockerfileError as exc:
        raise UsageError(f"invalid --change: {exc}") from None
    return dict(plan.config.get("config", {}))


# --- images, inspect ------------------------------------------------------------


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.3g}{unit}"
        size /= 1000
    return f"{size:.3g}TB"


def images(root: Path | None) -> int:
    with Engine.open(root) as engine:
        rows = []
        for record in engine.images.list():
            manifest = engine.images.manifest(record.digest)
            size = sum(int(layer["size"]) for layer in manifest["layers"])
            repo, _, tag = record.name.rpartition(":")
            if "/" in tag:  # a registry port, not a tag
                repo, tag = record.name, ""
            image_id = manifest["config"]["digest"].removeprefix("sha256:")[:12]
            rows.append(
                (repo, tag, image_id, ago(time.time() - record.created), _human(size))
            )
    print_table(("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"), rows)
    return errors.EXIT_OK


def inspect(name: str, root: Path | None) -> int:
    with Engine.open(root) as engine:
        digest = engine.images.get(name)
        manifest = engine.images.manifest(digest)
        config = engine.images.config(manifest)
        tags = [r.name for r in engine.images.list() if r.digest == digest]
    print_json(
        [
            {
                "Id": manifest["config"]["digest"],
                "Digest": digest,
                "RepoTags": tags,
                "Manifest": manifest,
                "Config": config,
            }
        ]
    )
    return errors.EXIT_OK


__all__ = ["build", "import_image", "images", "inspect", "InfraError"]
