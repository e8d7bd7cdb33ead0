"""A build cache shared between stores: ``--cache-to`` and ``--cache-from``.

Theory of operation
-------------------
Cache keys are content-based (solver/cachekey.py), so two stores that build the
same Dockerfile on the same context and base image digest compute the same keys.
What a store lacks is the *result* behind a key: a committed snapshot. A shared
cache carries, per cache key, how to rebuild that snapshot from layers.

The *cache description* is one JSON document (media type ``CACHE_CONFIG_MEDIA``):

    {"schemaVersion": 1,
     "layers":  {DIFF_ID: {"digest", "mediaType", "size", "uncompressedSize"}},
     "records": {CACHE_KEY: {"chain": [ENTRY...], "origin": {KeyOrigin}}},
     "mounts":  [{"id": CACHE MOUNT DIR, "diffID": DIFF_ID}]}

A record's ``chain`` is its result's snapshot chain, base first: one ENTRY
``{"base": bool, "diffID": str | null, "size": int, "created": float}`` per
snapshot, ``diffID`` null for a step that changed nothing (it keeps its place:
the exporter counts one snapshot per layered history entry). ``origin`` is what
the key was computed from, so that explanations work on imported records too.

Where the description lives (``type=``):

- ``local``: an OCI image layout in a directory (``oci-layout``, ``index.json``,
  ``blobs/sha256/``) as buildx writes one: a manifest whose config is the
  description and whose layers are the gzip layer blobs.
- ``registry``: the same manifest pushed to a registry under its own ref.
- ``inline``: the description inside the built image's config, under the
  top-level field ``INLINE_FIELD`` (as BuildKit does with
  ``moby.buildkit.cache.v0``), without its ``layers`` map: an importer builds
  that from the image's own manifest. So ``--cache-from type=registry,ref=IMAGE``
  reads a plain pushed image.

Import is lazy. ``import_caches`` reads only the descriptions (a manifest and a
config per source) and gives the solver an ``ImportedCacheStore``: the local
records first, then the imported ones, whose result is the placeholder
``IMPORTED_PREFIX + key``. The solver treats a placeholder as any result: a hit
needs no inputs, so a hit whose result nobody reads fetches nothing. Only when a
result is *read* (an input of a step that runs: ``BuildWorker.execute``; the
final result: ``run_build``) does ``Engine.materialize`` turn it into snapshots:
each chain entry becomes a committed snapshot (base layers named by chain ID as
``Engine.image_snapshot`` names them, steps by a digest of the chain so far, so
records that share a chain prefix share its snapshots), its layer fetched and
unpacked only when the store lacks that diff ID. Then the record is written into
the local cache store, origin included.

Export (mode=min: the final vertex and its filesystem ancestors, input 0 of each;
mode=max: every cacheable vertex the solve recorded) materialises every result
it exports, so an exported record always has its layers.

``cache-mounts=true`` also carries the contents of the ``RUN --mount=type=cache``
directories the build's steps name (those without ``from=``), one tar layer
each; an import fills a cache directory that the store does not have yet.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import trio

from buildpy.engine import LAYER_PREFIX, Engine, chain_ids, host_platform
from buildpy.errors import BuildpyError, InfraError
from buildpy.exporters import BuiltImage
from buildpy.images import LAYER_MEDIA, MEDIA_INDEX, MEDIA_MANIFEST
from buildpy.progress import Display
from frontend import BuildPlan
from snapshotter.compression import open_decompressed
from snapshotter.diff import apply_layer, extract_tree, write_tree
from solver.cachekey import KeyOrigin
from solver.cachestore import CacheStore
from solver.graph import ContextSource, ExecOp, Vertex
from solver.scheduler import SolveResult, VertexRecord

log = logging.getLogger(__name__)

CACHE_CONFIG_MEDIA = "application/vnd.buildpy.cache.config.v1+json"
INLINE_FIELD = "buildpy.cache.v0"
IMPORTED_PREFIX = "imported:"
MOUNTS_OPTION = "cache-mounts"
_GZIP = LAYER_MEDIA["gzip"]
_REF_NAME = "org.opencontainers.image.ref.name"
# buildx options that change nothing here (we always write OCI media types and
# gzip layers, and a failed export always fails the build).
_IGNORED = frozenset(
    {
        "oci-mediatypes",
        "image-manifest",
        "compression",
        "compression-level",
        "force-compression",
        "ignore-error",
        "tag",
        "digest",
    }
)


class CacheImportError(BuildpyError):
    """A --cache-from source that cannot be read (a warning, never fatal)."""


# --- flags ----------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSpec:
    """One ``--cache-to`` / ``--cache-from`` value, parsed as buildx parses it."""

    type: str
    attrs: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        return dict(self.attrs).get(key, default)

    @property
    def mode(self) -> str:
        return self.get("mode") or "min"

    @property
    def cache_mounts(self) -> bool:
        return (self.get(MOUNTS_OPTION) or "false").lower() in ("true", "1")

    @property
    def label(self) -> str:
        """``type=local,src=DIR``: how progress and warnings name the cache."""
        where = [f"{k}={v}" for k, v in self.attrs if k in ("src", "dest", "ref")]
        return ",".join([f"type={self.type}", *where])


def _parse(text: str, flag: str, export: bool) -> CacheSpec:
    fields = next(csv.reader([text]), [])
    if len(fields) == 1 and "=" not in fields[0] and fields[0].strip():
        return CacheSpec("registry", (("ref", fields[0].strip()),))
    attrs: dict[str, str] = {}
    for part in fields:
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"invalid {flag} {text!r}: {part!r} is not key=value"
            )
        attrs[key.strip().lower()] = value.strip()
    kind = attrs.pop("type", "registry" if "ref" in attrs else "")
    kinds = ("local", "registry", "inline") if export else ("local", "registry")
    if kind not in kinds:
        raise argparse.ArgumentTypeError(
            f"invalid {flag} {text!r}: type must be one of {', '.join(kinds)}"
        )
    need = {"local": "dest" if export else "src", "registry": "ref"}.get(kind)
    if need is not None and not attrs.get(need):
        raise argparse.ArgumentTypeError(
            f"invalid {flag} {text!r}: type={kind} needs {need}="
        )
    allowed = {"local": {"dest", "src"}, "registry": {"ref"}, "inline": set()}[kind]
    allowed = allowed | ({"mode"} if export else set())
    allowed |= {MOUNTS_OPTION} if kind != "inline" else set()
    for key in attrs:
        if key not in allowed and key not in _IGNORED:
            raise argparse.ArgumentTypeError(
                f"invalid {flag} {text!r}: unknown key {key!r} for type={kind}"
            )
    mode = attrs.get("mode", "min")
    if mode not in ("min", "max") or (kind == "inline" and mode != "min"):
        raise argparse.ArgumentTypeError(
            f"invalid {flag} {text!r}: mode must be "
            + ("min for type=inline" if kind == "inline" else "min or max")
        )
    mounts = attrs.get(MOUNTS_OPTION, "false").lower()
    if mounts not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(
            f"invalid {flag} {text!r}: {MOUNTS_OPTION} must be true or false"
        )
    return CacheSpec(kind, tuple(attrs.items()))


def parse_cache_to(text: str) -> CacheSpec:
    """argparse type of ``--cache-to``."""
    return _parse(text, "--cache-to", export=True)


def parse_cache_from(text: str) -> CacheSpec:
    """argparse type of ``--cache-from``."""
    return _parse(text, "--cache-from", export=False)


def add_build_flags(build: argparse.ArgumentParser) -> None:
    build.add_argument(
        "--cache-to",
        action="append",
        default=[],
        type=parse_cache_to,
        metavar="type=local,dest=DIR|type=registry,ref=REF|type=inline[,...]",
        help="export the build cache (repeatable; mode=min|max, cache-mounts=true)",
    )
    build.add_argument(
        "--cache-from",
        action="append",
        default=[],
        type=parse_cache_from,
        metavar="type=local,src=DIR|type=registry,ref=REF|REF",
        help="import a build cache (repeatable; cache-mounts=true)",
    )


# --- sources of imported caches ---------------------------------------------------


class _Source(Protocol):
    label: str
    description: dict[str, Any]

    def fetch(self, engine: Engine, digest: str) -> None:
        """Copy the blob ``digest`` into the store, verified."""
        ...

    def has(self, digest: str) -> bool:
        """Whether the blob is there, as far as it is cheap to tell."""
        ...


class _LocalSource:
    def __init__(self, spec: CacheSpec) -> None:
        self.label = spec.label
        self.dir = Path(spec.get("src") or "")
        try:
            index = json.loads((self.dir / "index.json").read_text())
            manifests = [
                m
                for m in index.get("manifests", [])
                if m.get("mediaType") in (MEDIA_MANIFEST, None)
            ]
            if not manifests:
                raise CacheImportError("index.json lists no manifest")
            manifest = json.loads(self._read(manifests[0]["digest"]))
            config = manifest["config"]
            if config.get("mediaType") != CACHE_CONFIG_MEDIA:
                raise CacheImportError(
                    f"its manifest's config is {config.get('mediaType')!r}, "
                    f"expected {CACHE_CONFIG_MEDIA}"
                )
            self.description = _checked(json.loads(self._read(config["digest"])))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CacheImportError(_why(exc)) from None

    def _blob(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64 or not hexpart.isalnum():
            raise ValueError(f"bad digest {digest!r}")
        return self.dir / "blobs" / "sha256" / hexpart

    def _read(self, digest: str) -> bytes:
        data = self._blob(digest).read_bytes()  # manifests and configs: small
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob {digest[:19]} does not match its digest")
        return data

    def has(self, digest: str) -> bool:
        try:
            return self._blob(digest).is_file()
        except ValueError:
            return False

    def fetch(self, engine: Engine, digest: str) -> None:
        engine.content.put_file(self._blob(digest), expected=digest)


class _RegistrySource:
    def __init__(self, engine: Engine, spec: CacheSpec) -> None:
        from buildpy.reference import Reference
        from buildpy.registry import INDEX_TYPES, RegistryError
        from buildpy.transfer import RegistrySettings, select_platform

        self.label = spec.label
        self.settings = RegistrySettings.load(engine.root)
        try:
            self.ref = Reference.parse(spec.get("ref") or "")
            with self._client() as client:
                repo = self.ref.repository
                fetched = client.get_manifest(repo, self.ref.reference)
                if fetched.media_type in INDEX_TYPES:
                    chosen = select_platform(fetched.json(), *host_platform())
                    fetched = client.get_manifest(repo, chosen)
                manifest = fetched.json()
                buffer = io.BytesIO()
                client.fetch_blob(repo, manifest["config"]["digest"], buffer)
            config = json.loads(buffer.getvalue())
        except (RegistryError, BuildpyError, ValueError, KeyError, TypeError) as exc:
            raise CacheImportError(_why(exc)) from None
        if manifest["config"].get("mediaType") == CACHE_CONFIG_MEDIA:
            self.description = _checked(config)
            return
        inline = config.get(INLINE_FIELD) if isinstance(config, dict) else None
        if not isinstance(inline, dict):
            raise CacheImportError(
                "it is an image without an inline cache (build it with "
                "--cache-to type=inline)"
            )
        # Inline: the layers are the image's own.
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        layers = {
            diff_id: {
                "digest": desc["digest"],
                "mediaType": desc.get("mediaType", _GZIP),
                "size": desc["size"],
            }
            for diff_id, desc in zip(diff_ids, manifest.get("layers", []), strict=False)
        }
        self.description = _checked({**inline, "layers": layers})

    def _client(self) -> Any:
        return self.settings.client(self.ref.api_host, self.ref.registry)

    def has(self, digest: str) -> bool:
        return True  # a HEAD per lookup would cost more than it saves

    def fetch(self, engine: Engine, digest: str) -> None:
        from buildpy.transfer import _fetch_blob

        with self._client() as client:
            _fetch_blob(client, engine, self.ref.repository, digest)


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename} does not exist"
    if isinstance(exc, KeyError):
        return f"the cache description lacks {exc}"
    return str(exc) or type(exc).__name__


def _checked(description: Any) -> dict[str, Any]:
    if not isinstance(description, dict) or not isinstance(
        description.get("records"), dict
    ):
        raise CacheImportError("not a buildpy cache description (no records)")
    description.setdefault("layers", {})
    description.setdefault("mounts", [])
    return description


# --- import: lazy records ---------------------------------------------------------


class ImportedCache:
    """The records of every --cache-from source, materialised on demand."""

    def __init__(self, engine: Engine, sources: list[_Source]) -> None:
        self.engine = engine
        self.sources = sources
        self.entries: dict[str, tuple[_Source, dict[str, Any]]] = {}
        for source in sources:
            for key, record in source.description["records"].items():
                self.entries.setdefault(key, (source, record))
        self.fetched: list[str] = []  # blob digests copied in, in order
        self._lock = threading.Lock()

    def owns(self, result: str) -> bool:
        return result.startswith(IMPORTED_PREFIX)

    def lookup(self, key: str) -> str | None:
        """The placeholder result of an imported record of ``key``, or None."""
        found = self.entries.get(key)
        if found is None:
            return None
        source, record = found
        for entry in record.get("chain", []):
            diff_id = entry.get("diffID")
            if diff_id and not self.engine.content.has(diff_id):
                desc = source.description["layers"].get(diff_id)
                if desc is None or not source.has(desc["digest"]):
                    return None
        return IMPORTED_PREFIX + key

    def has(self, result: str) -> bool:
        return result.removeprefix(IMPORTED_PREFIX) in self.entries

    def source_of(self, key: str) -> str | None:
        found = self.entries.get(key)
        return None if found is None else found[0].label

    def materialize(self, result: str) -> str:
        """The local snapshot of a placeholder result (made once)."""
        if not self.owns(result):
            return result
        key = result.removeprefix(IMPORTED_PREFIX)
        with self._lock:
            local = self.engine.cache.get(key)
            if local is not None and self.engine.snapshot_exists(local):
                return local
            source, record = self.entries[key]
            try:
                name = self._chain(source, record.get("chain", []))
            except (OSError, ValueError, KeyError, BuildpyError) as exc:
                raise InfraError(
                    f"cache from {source.label}: cannot fetch the result of "
                    f"{key[:19]}: {_why(exc)}"
                ) from exc
            self.engine.cache.put(key, name, _origin(record.get("origin")))
            return name

    def _chain(self, source: _Source, chain: list[dict[str, Any]]) -> str:
        engine = self.engine
        parent: str | None = None
        bases: list[str] = []
        seen: list[str] = []
        for entry in chain:
            diff_id: str | None = entry.get("diffID")
            size = int(entry.get("size") or 0)
            seen.append(f"{'base' if entry.get('base') else 'step'} {diff_id}")
            if entry.get("base"):
                assert diff_id is not None, "a base layer always has a diff ID"
                bases.append(diff_id)
                name = LAYER_PREFIX + chain_ids(bases)[-1].removeprefix("sha256:")
            else:
                digest = hashlib.sha256("\n".join(seen).encode()).hexdigest()
                name = "step-" + digest[:16]
            if not engine.snapshots.exists(name):
                if diff_id is not None:
                    self._layer(source, diff_id)

                def fill(target: Path, diff_id: str | None = diff_id) -> None:
                    if diff_id is not None:
                        with engine.content.open(diff_id) as f:
                            apply_layer(f, target)

                engine.snapshots.create_committed(name, parent, fill)
                if not entry.get("base") and entry.get("created"):
                    _set_created(engine, name, float(entry["created"]))
            engine.images.record_layer(name, diff_id, size)
            parent = name
        return parent or ""

    def _layer(self, source: _Source, diff_id: str) -> None:
        """The uncompressed layer ``diff_id`` in the store, fetched if needed."""
        from buildpy.transfer import _COMPRESSION_OF_MEDIA, _unpack_layer

        if self.engine.content.has(diff_id):
            return
        desc = source.description["layers"][diff_id]
        blob, media = desc["digest"], desc.get("mediaType", _GZIP)
        source.fetch(self.engine, blob)
        self.fetched.append(blob)
        _unpack_layer(self.engine, blob, diff_id, media)
        kind = _COMPRESSION_OF_MEDIA.get(media)
        if blob != diff_id and kind:
            self.engine.images.record_variant(diff_id, kind, blob, int(desc["size"]))

    def import_mounts(self, wanted: set[str], display: Display) -> None:
        """Fill the cache mount directories ``wanted`` that the store lacks."""
        from buildpy.mounts import CACHE_DIR, _install

        for source in self.sources:
            for item in source.description.get("mounts", []):
                ident, diff_id = item.get("id", ""), item.get("diffID", "")
                path = self.engine.root / CACHE_DIR / ident / "0"
                if ident not in wanted or path.is_dir():
                    continue
                self._layer(source, diff_id)
                new = path.with_name(f"new-{uuid.uuid4().hex[:16]}")
                try:
                    new.mkdir(parents=True)
                    with self.engine.content.open(diff_id) as f:
                        extract_tree(open_decompressed(f), new)
                    _install(new, path)
                finally:
                    shutil.rmtree(new, ignore_errors=True)
                display.note(
                    f"importing cache from {source.label}",
                    f"cache mount {ident[:12]} imported",
                )


def _set_created(engine: Engine, name: str, created: float) -> None:
    # The image's `created` is its last step snapshot's creation time: keep the
    # first build's, so that an imported rebuild gives the same image ID.
    engine.snapshots.set_created(name, created)


def _origin(data: Any) -> KeyOrigin | None:
    if not isinstance(data, dict) or "op_digest" not in data:
        return None
    return KeyOrigin(
        data["op_digest"],
        tuple(data.get("input_keys", ())),
        data.get("content"),
        op=data.get("op"),
        name=data.get("name") or "",
        detail=data.get("detail"),
    )


def _origin_json(origin: KeyOrigin | None) -> dict[str, Any] | None:
    if origin is None:
        return None
    return {
        "op_digest": origin.op_digest,
        "input_keys": list(origin.input_keys),
        "content": origin.content,
        "op": origin.op,
        "name": origin.name,
        "detail": origin.detail,
    }


class ImportedCacheStore(CacheStore):
    """The local cache records, then the imported ones (read-only, lazy)."""

    def __init__(self, local: CacheStore, imported: ImportedCache) -> None:
        super().__init__(local._conn, local._clock)
        self.imported = imported

    def get(self, key: str) -> str | None:
        found = super().get(key)
        if found is not None:
            return found
        return self.imported.lookup(key)

    def get_many(self, keys: Collection[str]) -> dict[str, str]:
        """``get`` for many keys at once (the solver's batched lookup)."""
        found: dict[str, str] = dict(super().get_many(keys))  # type: ignore[misc]
        for key in keys:
            if key not in found:
                result = self.imported.lookup(key)
                if result is not None:
                    found[key] = result
        return found


def _mount_ids(graph_vertices: Iterable[Vertex]) -> set[str]:
    """The cache mount directories (under ROOT/cachemounts) the steps name; as
    buildpy.mounts.StepMounts._cache names them, for mounts without from=."""
    ids = set()
    for vertex in graph_vertices:
        if isinstance(vertex.op, ExecOp):
            for m in vertex.op.mounts:
                if m.type == "cache" and m.input is None:
                    ident = f"{m.id or m.target}\0\0"
                    ids.add(hashlib.sha256(ident.encode()).hexdigest()[:32])
    return ids


async def import_caches(
    engine: Engine, specs: list[CacheSpec], plan: BuildPlan, display: Display
) -> CacheStore:
    """The cache store the solver should read: the local one, with the records
    of ``specs`` behind it. A source that cannot be read is a warning."""
    engine.imported = None  # a long-lived engine: no records of an earlier build
    if not specs:
        return engine.cache
    sources: list[_Source] = []
    for spec in specs:
        name = f"importing cache manifest from {spec.label}"
        try:
            source: _Source = await trio.to_thread.run_sync(_open, engine, spec)
        except CacheImportError as exc:
            # As buildx: a cache that cannot be read is no reason to fail.
            display.warn(f"cache from {spec.label} cannot be read: {exc}; ignored")
            continue
        with display.internal(name):
            display.note(name, f"{len(source.description['records'])} cache records")
        sources.append(source)
    imported = ImportedCache(engine, sources)
    engine.imported = imported
    wanted = _mount_ids(_vertices(plan.final))
    if any(s.cache_mounts for s in specs) and wanted:
        await trio.to_thread.run_sync(imported.import_mounts, wanted, display)
    return ImportedCacheStore(engine.cache, imported)


def _open(engine: Engine, spec: CacheSpec) -> _Source:
    if spec.type == "local":
        return _LocalSource(spec)
    return _RegistrySource(engine, spec)


def _vertices(final: Vertex) -> list[Vertex]:
    seen: dict[str, Vertex] = {}
    todo = [final]
    while todo:
        vertex = todo.pop()
        if vertex.digest not in seen:
            seen[vertex.digest] = vertex
            todo.extend(vertex.inputs)
    return list(seen.values())


# --- export -----------------------------------------------------------------------


def _selected(solved: SolveResult, final: Vertex, mode: str) -> list[VertexRecord]:
    """The records to export: mode=min the final vertex's filesystem chain
    (input 0 down to the base), mode=max every cacheable one of the solve."""
    if mode == "max":
        chosen = list(solved.records.values())
    else:
        chosen = []
        vertex: Vertex | None = final
        while vertex is not None:
            record = solved.records.get(vertex.digest)
            if record is not None:
                chosen.append(record)
            vertex = vertex.inputs[0] if vertex.inputs else None
    return [r for r in chosen if not isinstance(r.vertex.op, ContextSource)]


class _Description:
    """A cache description being written, with the blobs it names."""

    def __init__(self, engine: Engine, epoch: int | None) -> None:
        self.engine = engine
        self.epoch = epoch
        self.layers: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.mounts: list[dict[str, Any]] = []
        self._entries: dict[str, dict[str, Any]] = {}  # snapshot -> chain entry

    def add(self, record: VertexRecord) -> None:
        engine = self.engine
        result = engine.materialize(record.result)
        chain = engine.snapshots.chain(result) if result else []
        stored = engine.cache.record(record.key)
        self.records[record.key] = {
            "chain": [self._entry(name) for name in chain],
            "origin": _origin_json(None if stored is None else stored.origin),
        }

    def _entry(self, name: str) -> dict[str, Any]:
        known = self._entries.get(name)
        if known is not None:
            return known
        base = name.startswith(LAYER_PREFIX)
        # SOURCE_DATE_EPOCH: the image's step layers are the clamped ones; the
        # cache carries the same, so inline records name the image's layers.
        diff_id, size = self.engine.snapshot_layer(name, None if base else self.epoch)
        entry = {
            "base": base,
            "diffID": diff_id,
            "size": size,
            "created": self.engine.snapshots.info(name).created,
        }
        if diff_id is not None:
            self.layers[diff_id] = {"uncompressedSize": size}
        self._entries[name] = entry
        return entry

    def add_mounts(self, wanted: set[str]) -> None:
        from buildpy.mounts import CACHE_DIR

        for ident in sorted(wanted):
            path = self.engine.root / CACHE_DIR / ident / "0"
            if not path.is_dir():
                continue
            with self.engine.content.writer() as w:
                write_tree(path, w)  # type: ignore[arg-type]
                diff_id, size = w.commit()
            self.layers[diff_id] = {"uncompressedSize": size}
            self.mounts.append({"id": ident, "diffID": diff_id})

    def compress(self) -> list[tuple[str, int]]:
        """Gzip every layer (once: remembered as its variant); the blobs."""
        from buildpy.exporters import _compressed_layer

        blobs = []
        for diff_id, desc in self.layers.items():
            digest, size = _compressed_layer(
                self.engine, diff_id, int(desc["uncompressedSize"]), "gzip"
            )
            desc.update(digest=digest, mediaType=_GZIP, size=size)
            blobs.append((digest, size))
        return blobs

    def document(self, *, with_layers: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {"schemaVersion": 1}
        if with_layers:
            doc["layers"] = self.layers
        doc["records"] = self.records
        if self.mounts:
            doc["mounts"] = self.mounts
        return doc


def _describe(
    engine: Engine,
    spec: CacheSpec,
    solved: SolveResult,
    plan: BuildPlan,
    epoch: int | None,
) -> _Description:
    description = _Description(engine, epoch)
    for record in _selected(solved, plan.final, spec.mode):
        description.add(record)
    if spec.cache_mounts:
        description.add_mounts(_mount_ids(_vertices(plan.final)))
    return description


def add_inline(
    engine: Engine,
    specs: list[CacheSpec],
    solved: SolveResult,
    plan: BuildPlan,
    image: BuiltImage,
    epoch: int | None,
) -> BuiltImage:
    """``--cache-to type=inline``: the image again, with the cache description
    of its own chain in its config; ``image`` itself without that flag."""
    if not any(s.type == "inline" for s in specs):
        return image
    description = _describe(engine, CacheSpec("inline"), solved, plan, epoch)
    have = set(d for d, _ in image.layers)
    for key, record in list(description.records.items()):
        # Every layer an inline record names must be one of the image's.
        if any(e["diffID"] and e["diffID"] not in have for e in record["chain"]):
            del description.records[key]
    config = dict(image.config)
    config[INLINE_FIELD] = description.document(with_layers=False)
    manifest_digest = engine.images.save(config, image.layers)
    manifest = engine.images.manifest(manifest_digest)
    return BuiltImage(
        manifest_digest=manifest_digest,
        config_digest=manifest["config"]["digest"],
        config=config,
        layers=image.layers,
    )


def _manifest(engine: Engine, description: _Description) -> tuple[bytes, bytes]:
    """(config bytes, manifest bytes) of a cache, both put in the store."""
    blobs = description.compress()
    config = json.dumps(description.document(), separators=(",", ":")).encode()
    config_digest, config_size = engine.content.put_bytes(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": CACHE_CONFIG_MEDIA,
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{"mediaType": _GZIP, "digest": d, "size": s} for d, s in blobs],
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    engine.content.put_bytes(data)
    return config, data


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_local(engine: Engine, dest: Path, description: _Description) -> None:
    """The cache as an OCI image layout in ``dest`` (blobs it has are kept)."""
    config, manifest = _manifest(engine, description)
    blobs_dir = dest / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    digests = [_digest(config), _digest(manifest)]
    digests += [layer["digest"] for layer in description.layers.values()]
    for digest in digests:
        target = blobs_dir / digest.removeprefix("sha256:")
        if not target.is_file():
            with engine.content.open(digest) as src:
                _atomic_write(target, lambda out, src=src: shutil.copyfileobj(src, out))
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": _digest(manifest),
                "size": len(manifest),
                "annotations": {_REF_NAME: "latest"},
            }
        ],
    }
    layout = b'{"imageLayoutVersion":"1.0.0"}'
    _atomic_write(dest / "oci-layout", lambda out: out.write(layout))
    index_data = json.dumps(index, separators=(",", ":")).encode()
    _atomic_write(dest / "index.json", lambda out: out.write(index_data))


def _atomic_write(target: Path, fill: Callable[[BinaryIO], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
        os.chmod(tmp, 0o644)
        os.rename(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def push_cache(engine: Engine, ref_text: str, description: _Description) -> str:
    """The cache as its own manifest in a registry; the manifest digest."""
    from buildpy.reference import Reference
    from buildpy.transfer import RegistrySettings

    config, manifest = _manifest(engine, description)
    ref = Reference.parse(ref_text)
    settings = RegistrySettings.load(engine.root)
    blobs = [
        (layer["digest"], int(layer["size"])) for layer in description.layers.values()
    ]
    blobs.append((_digest(config), len(config)))
    with settings.client(ref.api_host, ref.registry) as client:
        repo = ref.repository
        for digest, size in blobs:
            if not client.has_blob(repo, digest):
                client.upload_blob(
                    repo, digest, size, lambda d=digest: engine.content.open(d)
                )
        return client.put_manifest(repo, ref.reference, manifest, MEDIA_MANIFEST)


async def export_caches(
    engine: Engine,
    specs: list[CacheSpec],
    solved: SolveResult,
    plan: BuildPlan,
    epoch: int | None,
    display: Display,
) -> None:
    """``--cache-to`` of type local and registry (inline is ``add_inline``)."""
    for spec in specs:
        if spec.type == "inline":
            continue
        name = f"exporting cache to {spec.label}"
        with display.internal(name):

            def run(spec: CacheSpec = spec) -> str:
                description = _describe(engine, spec, solved, plan, epoch)
                if spec.type == "local":
                    write_local(engine, Path(spec.get("dest") or ""), description)
                    return f"{len(description.records)} records written"
                digest = push_cache(engine, spec.get("ref") or "", description)
                return f"{len(description.records)} records pushed, {digest}"

            display.note(name, await trio.to_thread.run_sync(run))
