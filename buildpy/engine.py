"""An opened store: the content store, snapshots, images, cache records and context
checksums over one state root, and the operations that span them (a manifest's
layers as snapshots, a snapshot's layer as a blob)."""

from __future__ import annotations

import hashlib
import platform
import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildpy.context import ContextHasher
from buildpy.errors import ImageNotFound, InfraError
from buildpy.images import ImageStore, normalize_ref
from buildpy.state import State
from frontend import ResolvedImage
from snapshotter.compression import open_decompressed
from snapshotter.content import ContentStore
from snapshotter.diff import apply_layer, layer_is_empty, write_layer
from snapshotter.overlay import Snapshotter
from snapshotter.squash import merge_upperdirs
from solver.cachestore import CacheStore

if TYPE_CHECKING:
    from buildpy.gitsource import GitSources
    from buildpy.httpsource import HttpSources

# Snapshot names: base image layers are named by chain ID (OCI image spec,
# "ChainID"), so two images that share their first layers share their snapshots.
LAYER_PREFIX = "layer-"


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " +
    DiffID(Ln)), as the OCI image spec defines it."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            text = f"{chain[-1]} {diff_id}".encode()
            chain.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chain


def host_platform() -> tuple[str, str]:
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(
        machine, machine
    )
    return "linux", arch


class Engine:
    def __init__(self, state: State, *, verify_cache: bool = False) -> None:
        self.state = state
        self.root = state.root
        self.content = ContentStore(state.root)
        self.snapshots = Snapshotter(state.root, state.db)
        self.images = ImageStore(state.db, self.content)
        self.cache = CacheStore(state.db)
        self.hasher = ContextHasher(state.db, verify=verify_cache)
        # --cache-from's records (buildpy.cacheio.ImportedCache), set per build.
        self.imported: Any = None
        with state.lock:
            self.snapshots.init_schema()
            self.images.init_schema()
            self.cache.init_schema()
            self.hasher.init_schema()

    @cached_property
    def http(self) -> HttpSources:
        """The fetcher of ``ADD <url>``, made when a build has one: it imports
        httpx, which a build without one need not pay for."""
        from buildpy.httpsource import HttpSources

        sources = HttpSources(self.state.db, self.content, self.snapshots)
        with self.state.lock:
            sources.init_schema()
        return sources

    @cached_property
    def git(self) -> GitSources:
        """The cloner of ``ADD <git url>``, made when a build has one."""
        from buildpy.gitsource import GitSources

        return GitSources(self.snapshots, self.root / "tmp")

    @classmethod
    @contextmanager
    def open(cls, root: Path | None, **kwargs: bool) -> Iterator[Engine]:
        state = State.open(root)
        try:
            engine = cls(state, **kwargs)
            engine.snapshots.cleanup_stale()
            yield engine
        finally:
            state.close()

    # --- images ---------------------------------------------------------------

    def resolve_image(self, name: str, *, pull: bool = False) -> ResolvedImage:
        """The frontend's image resolver: a name of the local store, pinned; pulled
        from its registry (or a mirror) when the store does not have it, or always
        with ``pull`` (``build --pull``) unless a digest pins it."""
        # transfer (and the registry client) imported only when a pull is due.
        if pull and "@" not in name:
            from buildpy.transfer import pull_base

            digest = pull_base(self, name, asked=True)  # LookupError when it fails
        else:
            try:
                digest = self.images.get(name)
            except ImageNotFound:
                from buildpy.transfer import pull_base

                digest = pull_base(self, name)  # LookupError when nowhere
        manifest = self.images.manifest(digest)
        return ResolvedImage(
            ref=normalize_ref(name), digest=digest, config=self.images.config(manifest)
        )

    def image_snapshot(self, manifest_digest: str) -> str:
        """The committed snapshot holding an image's filesystem ("" when the image
        has no layers), unpacking the layers that have no snapshot yet."""
        manifest = self.images.manifest(manifest_digest)
        config = self.images.config(manifest)
        diff_ids = list(config.get("rootfs", {}).get("diff_ids", []))
        layers = manifest.get("layers", [])
        if len(diff_ids) != len(layers):
            raise InfraError(
                f"image {manifest_digest[:19]}: config lists {len(diff_ids)} layers, "
                f"manifest {len(layers)}"
            )
        # TODO(#4): an image built in this store is unpacked again here although
        # its step snapshots hold the same files (1.8 s for python:3.11-slim's 90
        # MB of new layers); record chain ID -> step snapshot at export and reuse
        # it. Acceptable for now: it costs once per image, then the layer-<chain>
        # snapshots are shared by every build on it.
        parent: str | None = None
        for chain_id, diff_id, layer in zip(
            chain_ids(diff_ids), diff_ids, layers, strict=True
        ):
            name = LAYER_PREFIX + chain_id.removeprefix("sha256:")
            if not self.snapshots.exists(name):
                blob = layer["digest"]

                def fill(target: Path, blob: str = blob) -> None:
                    with self.content.open(blob) as raw:
                        apply_layer(open_decompressed(raw), target)

                self.snapshots.create_committed(name, parent, fill)
            self.images.record_layer(name, diff_id, int(layer["size"]))
            parent = name
        return parent or ""

    def snapshot_layer(
        self, name: str, epoch: int | None = None
    ) -> tuple[str | None, int]:
        """The uncompressed layer of a committed snapshot: (diff ID, size), or
        (None, 0) when the snapshot changed nothing. Written once, then recorded.
        With SOURCE_DATE_EPOCH (``epoch``) mtimes are clamped to it, and such a
        layer is not the snapshot's recorded one (another epoch, another layer)."""
        if epoch is not None:
            return self._layer_blob(self.snapshots.fs_path(name), epoch)
        known = self.images.layer_of(name)
        if known is not None:
            return known
        digest, size = self._layer_blob(self.snapshots.fs_path(name), None)
        self.images.record_layer(name, digest, size)
        return digest, size

    def squashed_layer(
        self, names: list[str], epoch: int | None = None
    ) -> tuple[str | None, int]:
        """One layer of the committed snapshots ``names`` (lowest first), as
        ``snapshot_layer`` makes one of each (``build --squash``). Recorded
        under a name for the whole stack, so a rebuild makes it once."""
        record = "squash-" + hashlib.sha256("\n".join(names).encode()).hexdigest()
        known = self.images.layer_of(record) if epoch is None else None
        # No snapshot keeps this layer's blob alive: prune may have taken it.
        if known is not None and (known[0] is None or self.content.has(known[0])):
            return known
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        merged = Path(tempfile.mkdtemp(prefix="squash-", dir=tmp))
        try:
            merge_upperdirs([self.snapshots.fs_path(n) for n in names], merged)
            digest, size = self._layer_blob(merged, epoch)
        finally:
            shutil.rmtree(merged, ignore_errors=True)
        if epoch is None:
            self.images.record_layer(record, digest, size)
        return digest, size

    def _layer_blob(self, upperdir: Path, epoch: int | None) -> tuple[str | None, int]:
        """The layer of an overlay upperdir into the content store: (diff ID,
        size), or (None, 0) when it holds no change."""
        if layer_is_empty(upperdir):
            return None, 0
        with self.content.writer() as w:
            write_layer(upperdir, w, source_date_epoch=epoch)  # type: ignore[arg-type]
            digest, size = w.commit()
        return digest, size

    def materialize(self, result: str) -> str:
        """A result as a local snapshot: an imported cache record's is fetched."""
        return result if self.imported is None else self.imported.materialize(result)

    def snapshots_exist(self, names: Collection[str]) -> set[str]:
        """Those of ``names`` that are usable results: the context, a record of an
        imported cache (buildpy.cacheio) that its cache still has, or a snapshot
        recorded with its whole chain. One call for a rebuild's lookups."""
        special = {n for n in names if n in ("", "context")}
        if self.imported is not None:
            imported = self.imported
            owned = {n for n in names if imported.owns(n)}
            special |= {n for n in owned if imported.has(n)}
            names = [n for n in names if n not in owned]
        return special | self.snapshots.complete([n for n in names if n not in special])

    def snapshot_exists(self, name: str) -> bool:
        return name in self.snapshots_exist((name,))
