"""buildpy's worker: the solver's Worker protocol, implemented with the snapshotter
and the runtime.

Every op that changes a filesystem follows the same path: prepare an active
snapshot on the parent's committed one, mount it (overlay), change it (copy files,
or run a process in an OCI bundle whose rootfs is the mount), unmount it and
commit it under a fresh name, which is the vertex's result. Mount points and
bundles live under the state root's mnt/ and bundles/ and are removed on every
path out, cancellation included: unmounting runs in a shielded scope.

A COPY of one directory of the context that missed the cache because some of
its files changed is built on the result of its last run when the solver
names one (``execute_from``): the new snapshot starts as a copy of that one
whose regular files are hard links (Snapshotter.populate), and the copy then
writes everything but the files whose content and mode did not change. The
result is the one a full copy gives, but for the times of the kept files, which
are those of the earlier run, as they are on any cache hit. Only one literal
source qualifies, and only when no file of the earlier run is gone and no
directory, symlink or special file changed; anything else is copied in full.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from buildpy.engine import Engine
from buildpy.errors import BuildpyError
from buildpy.fileops import (
    FileOpError,
    Ignore,
    Kept,
    Selected,
    copy,
    mkdir,
    mkfile,
)
from buildpy.mounts import (
    CONTEXT_RESULT,
    SecretSource,
    SSHSource,
    StepMounts,
    context_name,
    context_reads,
    context_result,
)
from runtime import Executor, ProcessSpec, UserNotFound, make_bundle
from snapshotter.errors import SnapshotError
from solver.errors import ExecutionError
from solver.graph import (
    ContextSource,
    CopyAction,
    ExecOp,
    FileOp,
    GitSource,
    HttpSource,
    ImageSource,
    MkdirAction,
    MkfileAction,
    ScratchSource,
    Vertex,
)
from solver.worker import EarlierRun, LogSink

logger = logging.getLogger(__name__)

SCRATCH_RESULT = ""
# Entries of the context that the checksums selected and a copy may write
# without walking the context again, kept in all (a few hundred bytes each).
_SELECTIONS_KEPT = 50_000


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, from /proc/self/mountinfo."""
    prefix = str(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, with spaces and such escaped as octal.
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """rmtree that refuses to descend into a mount: if an unmount failed, deleting
    through it would destroy a snapshot. What is left is logged by the caller's
    error and removed by the next start's cleanup."""
    if mounts_under(path):
        return
    shutil.rmtree(path, ignore_errors=True)


class BuildWorker:
    def __init__(
        self,
        engine: Engine,
        *,
        context_dir: Path,
        ignore: Ignore | None,
        executor: Executor,
        limiter: trio.CapacityLimiter | None = None,
        secrets: dict[str, SecretSource] | None = None,
        ssh: dict[str, SSHSource] | None = None,
        named_contexts: dict[str, tuple[Path, Ignore | None]] | None = None,
    ) -> None:
        self.engine = engine
        # Every context by name: the main one, and each --build-context NAME=DIR;
        # (directory, its .dockerignore rules).
        self.contexts = {CONTEXT_RESULT: (context_dir, ignore)}
        self.contexts.update(named_contexts or {})
        self.executor = executor
        # Blocking filesystem work (hashing, copying, mounting) runs in threads.
        self.limiter = limiter or trio.CapacityLimiter(4)
        self._details: dict[str, dict[str, list[str]]] = {}
        # (vertex digest, action) -> what its checksum selected: _keep_selection
        self._selections: dict[tuple[str, CopyAction], list[Selected]] = {}
        self._selections_size = 0
        self.mounts = StepMounts(
            engine.root,
            view=self._source,
            secrets=secrets,
            ssh=ssh,
            overlay_options=engine.snapshots.overlay_options,
        )

    async def _thread(self, fn, *args):  # type: ignore[no-untyped-def]
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)

    # --- the Worker protocol ------------------------------------------------

    def cacheable(self, vertex: Vertex) -> bool:
        return not isinstance(vertex.op, ContextSource)

    async def content_checksum(self, vertex: Vertex) -> str | None:
        op = vertex.op
        if isinstance(op, GitSource):
            # The commit the ref names is the content (a pinned one is in the op).
            if op.checksum is not None:
                return None
            try:
                resolved = await self._thread(
                    self.engine.git.resolve, op.remote, op.ref
                )
            except BuildpyError as exc:  # gitsource.GitError
                raise ExecutionError(str(exc)) from exc
            return resolved.checksum()
        if isinstance(op, HttpSource) and op.checksum is None:
            # No digest pinned: the key needs the content, so fetch it now.
            try:
                fetched = await self._thread(self.engine.http.fetch, op.url)
            except BuildpyError as exc:  # httpsource.FetchError
                raise ExecutionError(str(exc)) from exc
            return fetched.checksum()
        reads = context_reads(vertex)  # COPY from a context, RUN --mount=type=bind
        if not reads:
            return None
        sums: list[str] = []
        detail: dict[str, list[str]] = {}  # solver.explain names files with it
        for name, action in reads:
            selected: list[Selected] | None = [] if isinstance(op, FileOp) else None
            directory, ignore = self._context(name)
            try:
                sums.append(
                    await self._thread(
                        self.engine.hasher.checksum,
                        directory,
                        action,
                        ignore,
                        detail,
                        selected,
                    )
                )
            except FileOpError as exc:
                raise ExecutionError(str(exc)) from exc
            if selected:
                self._keep_selection((vertex.digest, action), selected)
        if sums:
            self._details[vertex.digest] = detail
        return ",".join(sums) if sums else None

    def _keep_selection(
        self, key: tuple[str, CopyAction], selected: list[Selected]
    ) -> None:
        """Keep what a copy's checksum selected, for the copy, while the kept
        entries stay under _SELECTIONS_KEPT: a walk of a large context is a
        tenth of a rebuild that copies one changed file of it."""
        old = self._selections.pop(key, None)
        if old is not None:
            self._selections_size -= len(old)
        if self._selections_size + len(selected) <= _SELECTIONS_KEPT:
            self._selections[key] = selected
            self._selections_size += len(selected)

    def _take_selection(self, key: tuple[str, CopyAction]) -> list[Selected] | None:
        selected = self._selections.pop(key, None)
        if selected is not None:
            self._selections_size -= len(selected)
        return selected

    def content_detail(self, vertex: Vertex) -> dict[str, list[str]] | None:
        """Per-file detail of the last content_checksum of ``vertex``."""
        return self._details.get(vertex.digest)

    async def exists(self, result: str) -> bool:
        return await self._thread(self.engine.snapshot_exists, result)

    async def exists_many(self, results: Collection[str]) -> set[str]:
        return await self._thread(self.engine.snapshots_exist, results)

    async def execute(self, vertex: Vertex, inputs: Sequence[str], log: LogSink) -> str:
        return await self._execute(vertex, inputs, log, None)

    async def execute_from(
        self,
        vertex: Vertex,
        inputs: Sequence[str],
        log: LogSink,
        earlier: EarlierRun,
    ) -> str:
        return await self._execute(vertex, inputs, log, earlier)

    async def _execute(
        self,
        vertex: Vertex,
        inputs: Sequence[str],
        log: LogSink,
        earlier: EarlierRun | None,
    ) -> str:
        op = vertex.op
        # Imported cache hits (buildpy.cacheio) are fetched when a step reads them.
        inputs = [await self._thread(self.engine.materialize, r) for r in inputs]
        try:
            if isinstance(op, ContextSource):
                self._context(op.name)  # a name the build was not given fails here
                return context_result(op.name)
            if isinstance(op, ScratchSource):
                return SCRATCH_RESULT
            if isinstance(op, ImageSource):
                return await self._thread(self.engine.image_snapshot, op.digest)
            if isinstance(op, GitSource):
                try:
                    return await self._thread(
                        self.engine.git.snapshot,
                        op.remote,
                        op.ref,
                        op.subdir,
                        op.keep_git_dir,
                        op.checksum,
                    )
                except BuildpyError as exc:  # gitsource.GitError
                    raise ExecutionError(str(exc)) from exc
            if isinstance(op, HttpSource):
                try:
                    return await self._thread(
                        self.engine.http.snapshot, op.url, op.filename, op.checksum
                    )
                except BuildpyError as exc:  # httpsource.FetchError
                    raise ExecutionError(str(exc)) from exc
            if isinstance(op, FileOp):
                return await self._file(vertex, op, inputs, log, earlier)
            if isinstance(op, ExecOp):
                return await self._exec(op, inputs, log)
        except SnapshotError as exc:
            raise ExecutionError(str(exc), user_fault=False) from exc
        raise ExecutionError(f"unknown op {op.kind}", user_fault=False)

    def _context(self, name: str) -> tuple[Path, Ignore | None]:
        """A context's directory and .dockerignore rules, by name."""
        try:
            return self.contexts[name]
        except KeyError:
            raise ExecutionError(
                f"build context {name!r} was not given (--build-context)",
                user_fault=False,
            ) from None

    # --- mounts ---------------------------------------------------------------

    @asynccontextmanager
    async def _active(
        self, parent: str, target: Path, like: str | None = None
    ) -> AsyncIterator[_Active]:
        """An active snapshot on ``parent`` mounted at ``target``. When the body
        ends normally the snapshot is unmounted and only then committed (a
        committed snapshot may at once become another step's lowerdir, so it must
        no longer be writable); its name is then ``.name``. When the body fails,
        the snapshot is removed. ``like``: a result on the same parent to start
        from (``.placed`` then names its files), when it can be had."""
        active = _Active(key="active-" + _new_id())
        snaps = self.engine.snapshots
        await self._thread(snaps.prepare, active.key, parent or None)
        try:
            if like is not None:
                try:
                    active.placed = await self._thread(snaps.populate, active.key, like)
                except SnapshotError as exc:
                    # Gone meanwhile, or unreadable: the step copies in full.
                    logger.debug("not starting from %s: %s", like, exc)
            target.mkdir(parents=True, exist_ok=True)
            await self._thread(snaps.mount, active.key, target)
            try:
                yield active
            finally:
                with trio.CancelScope(shield=True):
                    await self._thread(snaps.unmount, target)
            active.name = "step-" + _new_id()
            await self._thread(snaps.commit, active.key, active.name)
        except BaseException:
            if active.name is None or not await self._thread(snaps.exists, active.name):
                with trio.CancelScope(shield=True):
                    await self._thread(snaps.remove, active.key)
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self._thread(remove_tree, target)

    @asynccontextmanager
    async def _source(self, result: str) -> AsyncIterator[Path]:
        """A directory to copy from: the context, or a read-only view of a result."""
        name = context_name(result)
        if name is not None:
            yield self._context(name)[0]
            return
        target = self.engine.root / "mnt" / ("view-" + _new_id())
        target.mkdir(parents=True)
        try:
            if result == SCRATCH_RESULT:
                yield target
                return
            await self._thread(self.engine.snapshots.view, result, target)
            try:
                yield target
            finally:
                with trio.CancelScope(shield=True):
                    await self._thread(self.engine.snapshots.unmount, target)
        finally:
            with trio.CancelScope(shield=True):
                await self._thread(remove_tree, target)

    async def _file(
        self,
        vertex: Vertex,
        op: FileOp,
        inputs: Sequence[str],
        log: LogSink,
        earlier: EarlierRun | None,
    ) -> str:
        target = self.engine.root / "mnt" / ("file-" + _new_id())
        # A comparison of two per-file details: off the event loop, as it may
        # hold a large context's.
        unchanged = await self._thread(
            _unchanged_files, vertex, self._details.get(vertex.digest), earlier
        )
        like = earlier.result if earlier is not None and unchanged else None
        async with self._active(inputs[0], target, like) as active:
            kept = Kept(unchanged, active.placed) if active.placed else None
            for action in op.actions:
                try:
                    if isinstance(action, CopyAction):
                        result = inputs[action.source]
                        name = context_name(result)
                        selected = (
                            self._take_selection((vertex.digest, action))
                            if name is not None
                            else None
                        )
                        async with self._source(result) as src:
                            count = await self._thread(
                                partial(
                                    copy,
                                    target,
                                    src,
                                    action,
                                    ignore=self._context(name)[1] if name else None,
                                    from_context=name is not None,
                                    kept=kept,
                                    selected=selected,
                                )
                            )
                        if count:
                            await log(1, _kept_line(count))
                    elif isinstance(action, MkdirAction):
                        await self._thread(mkdir, target, action)
                    elif isinstance(action, MkfileAction):
                        await self._thread(mkfile, target, action)
                except FileOpError as exc:
                    raise ExecutionError(str(exc)) from exc
        assert active.name is not None
        return active.name

    async def _exec(self, op: ExecOp, inputs: Sequence[str], log: LogSink) -> str:
        cid = "buildpy-" + _new_id()
        bundle = self.engine.root / "bundles" / cid
        rootfs = bundle / "rootfs"
        try:
            async with (
                self.mounts.private_bundle(op, bundle),
                self._active(inputs[0], rootfs) as active,
                self.mounts.prepare(op, inputs, bundle) as extra,
            ):
                spec = ProcessSpec(
                    args=op.args,
                    env=(*op.env, *extra.env),
                    cwd=op.cwd,
                    user=op.user,
                    network=op.network,
                    mounts=extra.mounts,
                    extra_hosts=op.extra_hosts,
                    shm_size=op.shm_size,
                    ulimits=op.ulimits,
                    privileged=op.security == "insecure",  # the build allowed it
                )
                try:
                    await self._thread(make_bundle, bundle, rootfs, spec)
                except UserNotFound as exc:
                    raise ExecutionError(str(exc)) from exc
                code = await self.executor.run(bundle, cid, log)
                if code != 0:
                    raise ExecutionError(
                        f"process {_shown_command(op.args)} did not complete "
                        f"successfully: exit code: {code}",
                        exit_code=code,
                    )
            assert active.name is not None
            return active.name
        finally:
            with trio.CancelScope(shield=True):
                await self._thread(remove_tree, bundle)


def _unchanged_files(
    vertex: Vertex,
    detail: dict[str, list[str]] | None,
    earlier: EarlierRun | None,
) -> set[str]:
    """The context files of a COPY that an earlier run of it read as they are
    now (content and written mode): the files a copy built on that run's
    result may keep. Empty when it cannot be built on (see the module's
    docstring)."""
    op = vertex.op
    if earlier is None or detail is None or not isinstance(op, FileOp):
        return set()
    if len(op.actions) != 1 or not isinstance(action := op.actions[0], CopyAction):
        return set()
    if (
        action.unpack
        or action.parents
        or len(action.sources) != 1
        or any(ch in action.sources[0] for ch in "*?[\\")
        or not isinstance(vertex.inputs[action.source].op, ContextSource)
    ):
        return set()
    unchanged: set[str] = set()
    for path, was in earlier.detail.items():
        now = detail.get(path)
        if now is None or now[0] != was[0]:
            return set()  # gone, or of another kind: a full copy removes it
        if now == was:
            if now[0] == "file":
                unchanged.add(path)
        elif now[0] != "file":
            return set()  # a directory's mode, a symlink's target: rare
    return unchanged


def _kept_line(count: int) -> bytes:
    return f"{count:,} unchanged files kept from this step's last run\n".encode()


@dataclass
class _Active:
    """An active snapshot being changed; ``name`` once it is committed;
    ``placed`` the files it started with (``BuildWorker._active``'s ``like``)."""

    key: str
    name: str | None = None
    placed: set[str] = field(default_factory=set)


def _shown_command(args: Sequence[str]) -> str:
    """The command as BuildKit's error line quotes it: ``"/bin/sh -c false"``."""
    return '"' + " ".join(args).replace('"', '\\"') + '"'
