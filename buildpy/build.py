"""One build, start to end: the Dockerfile through the frontend into a plan, the
plan through the solver with buildpy's worker, the result through the exporters.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import trio

from buildpy import cacheio
from buildpy.cacheio import CacheSpec
from buildpy.engine import Engine, host_platform
from buildpy.errors import InfraError, UsageError
from buildpy.exporters import (
    BuiltImage,
    Output,
    assemble_image,
    write_archive,
    write_rootfs_dir,
    write_rootfs_tar,
)
from buildpy.ignorefile import ignore_file
from buildpy.mounts import SecretSource, SSHSource
from buildpy.progress import Display
from buildpy.worker import BuildWorker
from frontend import (
    BuildPlan,
    IgnoreMatcher,
    NamedContext,
    convert,
    read_dockerignore,
)
from runtime import find_executor
from solver.graph import ExecOp, reachable
from solver.keylock import KeyLocks
from solver.scheduler import Solver, SolveResult


@dataclass
class BuildRequest:
    context: Path
    dockerfile: Path | None = None
    dockerfile_text: str | None = None  # read from stdin: -f -, or build -
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    outputs: list[Output] = field(default_factory=list)
    network: str = "host"
    jobs: int | None = None
    oci_runtime: str | None = None
    no_cache_filter: list[str] = field(default_factory=list)  # stages
    fail_on_cache_miss: bool = False
    dry_run: bool = False  # solve's dry_run: list hits and misses, run nothing
    secrets: dict[str, SecretSource] = field(default_factory=dict)  # --secret
    ssh: dict[str, SSHSource] = field(default_factory=dict)  # --ssh
    cache_from: list[CacheSpec] = field(default_factory=list)  # --cache-from
    cache_to: list[CacheSpec] = field(default_factory=list)  # --cache-to
    labels: dict[str, str] = field(default_factory=dict)  # --label
    annotations: dict[str, str] = field(default_factory=dict)  # --annotation
    pull: bool = False  # --pull: FROM images from their registries, always
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)  # --add-host
    shm_size: int = 0  # --shm-size, bytes; 0: the default 64 MiB
    ulimits: list[tuple[str, int, int]] = field(default_factory=list)  # --ulimit
    build_contexts: list[tuple[str, str]] = field(default_factory=list)  # NAME, VALUE
    allow: set[str] = field(default_factory=set)  # --allow: entitlements asked for
    squash: bool = False  # --squash: the build's own layers as one


# What ``buildpy serve --allow-insecure-entitlement`` granted, set in the
# daemon's zygote for every command it runs; None embedded, where the user
# who runs buildpy grants what they ask for.
DAEMON_GRANTS: frozenset[str] | None = None


def check_entitlements(req: BuildRequest) -> None:
    """Refuse, before the build, --allow security.insecure when the daemon
    does not grant it (as buildkitd's own flag of the same name decides);
    network.host needs no grant: RUN steps use the host's network already."""
    wanted = "security.insecure"
    if DAEMON_GRANTS is not None and wanted in req.allow - DAEMON_GRANTS:
        raise UsageError(
            f"--allow {wanted}: the buildpy daemon was not started with "
            f"--allow-insecure-entitlement {wanted}"
        )


def _insecure_without_allow(req: BuildRequest, plan: BuildPlan, name: str) -> None:
    """A RUN --security=insecure step runs privileged only when the build
    allows it (--allow security.insecure), as in buildx; else the build stops."""
    if "security.insecure" in req.allow:
        return
    for vertex in reachable(plan.final):
        op = vertex.op
        if isinstance(op, ExecOp) and op.security == "insecure":
            where = f"{name}:{vertex.meta.lines[0]}: " if vertex.meta.lines else ""
            raise UsageError(
                f"{where}RUN --security=insecure needs --allow security.insecure"
            )


@dataclass
class BuildResult:
    image: BuiltImage | None  # None after a dry run
    solve: SolveResult
    names: list[str]
    warnings: list[str]


def _source_date_epoch(req: BuildRequest) -> int | None:
    text = req.build_args.get("SOURCE_DATE_EPOCH") or os.environ.get(
        "SOURCE_DATE_EPOCH"
    )
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(
            f"SOURCE_DATE_EPOCH must be a whole number: {text!r}"
        ) from None


def read_dockerfile(req: BuildRequest) -> tuple[Path, str]:
    if not req.context.is_dir():
        raise UsageError(f"build context {str(req.context)!r} is not a directory")
    if req.dockerfile_text is not None:
        return Path("Dockerfile"), req.dockerfile_text
    path = req.dockerfile or req.context / "Dockerfile"
    try:
        return path, path.read_text()
    except FileNotFoundError:
        raise UsageError(f"cannot read Dockerfile: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read Dockerfile {path}: {exc}") from None


IMAGE_SCHEME = "docker-image://"


LAYOUT_SCHEME = "oci-layout://"


def named_contexts(
    given: list[tuple[str, str]], engine: Engine | None = None
) -> tuple[dict[str, NamedContext], dict[str, tuple[Path, IgnoreMatcher | None]]]:
    """``--build-context NAME=VALUE``s: what the frontend reads of them, and the
    worker's directory and .dockerignore rules of each one that is a directory.
    VALUE is ``docker-image://REF``, ``oci-layout://PATH[:TAG|@DIGEST]`` (its
    image loaded into ``engine``'s store) or a directory (the CLI refuses the
    rest)."""
    frontend: dict[str, NamedContext] = {}
    directories: dict[str, tuple[Path, IgnoreMatcher | None]] = {}
    for name, value in given:
        if value.startswith(IMAGE_SCHEME):
            frontend[name] = NamedContext(image=value.removeprefix(IMAGE_SCHEME))
            continue
        if value.startswith(LAYOUT_SCHEME):
            if engine is None:
                raise UsageError(f"--build-context {name}={value}: needs the store")
            from buildpy.archive import load_layout_image

            path, pick = _layout_reference(value.removeprefix(LAYOUT_SCHEME))
            digest = load_layout_image(engine, path, pick)
            frontend[name] = NamedContext(image=digest)
            continue
        path = Path(value)
        if not path.is_dir():
            raise UsageError(f"--build-context {name}={value}: not a directory")
        found = ignore_file(path)
        try:
            text = found.read_text() if found is not None else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {found}: {exc}") from None
        patterns = read_dockerignore(text)
        frontend[name] = NamedContext(excludes=tuple(patterns))
        rules = IgnoreMatcher(patterns) if patterns else None
        directories[name] = (path.resolve(), rules)
    return frontend, directories


def _layout_reference(text: str) -> tuple[Path, str]:
    """PATH[:TAG|@DIGEST] of an oci-layout:// context: (path, TAG or @DIGEST)."""
    if "@" in text:
        path, _, digest = text.rpartition("@")
        return Path(path), "@" + digest
    head, slash, last = text.rpartition("/")
    if ":" in last:
        last, _, tag = last.partition(":")
        return Path(head + slash + last), tag
    return Path(text), ""


def read_ignore_patterns(req: BuildRequest, dockerfile: Path) -> list[str]:
    """The rules of the context's ignore file (buildpy.ignorefile). A
    Dockerfile from stdin is beside nothing."""
    beside = dockerfile if req.dockerfile_text is None else None
    found = ignore_file(req.context, beside)
    return read_dockerignore(found.read_text()) if found is not None else []


async def run_build(engine: Engine, req: BuildRequest, display: Display) -> BuildResult:
    with display.internal("[internal] load build definition from Dockerfile"):
        dockerfile, text = read_dockerfile(req)
        patterns = read_ignore_patterns(req, dockerfile)
        named, named_dirs = named_contexts(req.build_contexts, engine)
    plan = convert(
        text,
        filename=dockerfile.name,
        build_args=req.build_args,
        target=req.target,
        resolve_image=partial(engine.resolve_image, pull=req.pull),
        dockerignore=patterns,
        network=req.network,
        no_cache=req.no_cache,
        platform=host_platform(),
        extra_hosts=req.extra_hosts,
        shm_size=req.shm_size,
        ulimits=req.ulimits,
        named_contexts=named,
    )
    _insecure_without_allow(req, plan, dockerfile.name)
    for warning in plan.warnings:
        display.warn(warning)
    if req.labels:
        # The image's metadata, as a LABEL after the last line would set it, but
        # outside every step's cache key: no step runs again for a new label.
        inner = plan.config.get("config") or {}
        labels = {**(inner.get("Labels") or {}), **req.labels}
        config = {**plan.config, "config": {**inner, "Labels": labels}}
        plan = replace(plan, config=config)
    epoch = _source_date_epoch(req)
    executor = find_executor(req.oci_runtime, engine.root / "runc")
    worker = BuildWorker(
        engine,
        context_dir=req.context.resolve(),
        ignore=IgnoreMatcher(patterns) if patterns else None,
        executor=executor,
        secrets=req.secrets,
        ssh=req.ssh,
        named_contexts=named_dirs,
    )
    cache = await cacheio.import_caches(engine, req.cache_from, plan, display)
    solver = Solver(
        worker,
        cache,
        reporter=display,
        jobs=req.jobs,
        fail_on_cache_miss=req.fail_on_cache_miss,
        no_cache_stages=req.no_cache_filter,
        build_args=req.build_args,
        locks=KeyLocks(engine.root / "locks"),
    )
    if req.dry_run:
        planned = await solver.dry_run(plan.final)
        return BuildResult(image=None, solve=planned, names=[], warnings=plan.warnings)
    solved = await solver.solve(plan.final)
    # A hit from an imported cache is fetched only now that its result is read.
    final = await trio.to_thread.run_sync(engine.materialize, solved.result(plan.final))

    outputs = req.outputs or [Output(type="image")]
    names: list[str] = []
    store = f"the store {engine.root}"
    with display.internal("exporting to image"), _writing(store):
        image = await trio.to_thread.run_sync(
            lambda: assemble_image(
                engine,
                plan,
                final,
                source_date_epoch=epoch,
                annotations=req.annotations,
                squash=req.squash,
            )
        )
        image = await trio.to_thread.run_sync(
            cacheio.add_inline, engine, req.cache_to, solved, plan, image, epoch
        )
        display.note("exporting to image", f"writing image {image.config_digest} done")
        for out in outputs:
            with _writing(out.dest):
                await trio.to_thread.run_sync(
                    lambda out=out: _export(
                        engine, image, final, out, req, epoch, names
                    )
                )
    await cacheio.export_caches(engine, req.cache_to, solved, plan, epoch, display)
    return BuildResult(image=image, solve=solved, names=names, warnings=plan.warnings)


_MACHINE_FULL_OR_BROKEN = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


@contextmanager
def _writing(where: str | Path | None) -> Iterator[None]:
    """A file the image or an output cannot be written to (a full disk, a
    directory not allowed) stops the build with one line naming where."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:  # not the machine's: an error of ours, as it is
            raise
        place = "stdout" if str(where) == "-" else where or "the output"
        message = f"cannot write {place}: {exc.strerror}"
        if exc.errno in _MACHINE_FULL_OR_BROKEN:
            raise InfraError(message) from None
        raise UsageError(message) from None  # a path the user gave


def _export(
    engine: Engine,
    image: BuiltImage,
    final: str,
    out: Output,
    req: BuildRequest,
    epoch: int | None,
    names: list[str],
) -> None:
    if out.type == "image":
        for tag in req.tags + ([out.name] if out.name else []):
            names.append(engine.images.tag(tag, image.manifest_digest))
        if out.push:
            from buildpy.transfer import push_built

            push_built(engine, req.tags + ([out.name] if out.name else []), out)
    elif out.type in ("oci", "docker"):
        assert out.dest is not None
        write_archive(
            engine,
            image,
            Path(out.dest),
            kind=out.type,
            names=req.tags + ([out.name] if out.name else []),
            compression=out.layer_compression(),
            tar=out.tar,
        )
    elif out.type == "tar":
        assert out.dest is not None
        write_rootfs_tar(engine, final, Path(out.dest), epoch)
    elif out.type == "local":
        assert out.dest is not None
        write_rootfs_dir(engine, final, Path(out.dest), epoch)
