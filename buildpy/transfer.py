"""Pull and push: images between the local store and registries.

Theory of operation. The local store keeps layers uncompressed, a layer's blob
named by its diff ID (buildpy/images.py). A pull fetches the manifest (through
an index, choosing the host's platform), the config as its exact bytes (its
digest is the image ID, so it is never re-serialized), and every layer blob as
the registry has it, verified; then it decompresses each into the store,
checking the result against the config's diff ID, and remembers the compressed
blob as that layer's variant. A push of that image later sends those very
blobs: base layers are never recompressed, so never rewritten. The image gets a
local manifest of uncompressed layers, tagged with the name as pulled.

A push compresses each layer once (remembered as a variant), then per blob:
nothing when the registry has it (HEAD), a cross-repository mount when the blob
came from another repository of the same registry (``blob_sources``), else an
upload; the manifest last, so a registry never lists an image with missing
blobs. Layers go in parallel in a small thread pool.

Registry settings: mirrors of Docker Hub from ``$BUILDPY_REGISTRY_MIRRORS``
(``host:port,...``) else ``registry-mirrors`` of ``$root/config.json``;
insecure registries from ``--insecure-registry``, ``$BUILDPY_INSECURE_REGISTRIES``
and ``insecure-registries`` of the same file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildpy import config as settings
from buildpy.engine import Engine, host_platform
from buildpy.errors import UsageError
from buildpy.images import MEDIA_CONFIG, MEDIA_MANIFEST
from buildpy.layerblobs import LayerCompression, layer_descriptors
from buildpy.reference import DOCKER_HUB, Reference
from buildpy.registry import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    BlobDigestMismatch,
    NotFoundInRegistry,
    RegistryClient,
    RegistryError,
)
from snapshotter.compression import detect, open_decompressed
from snapshotter.errors import DigestMismatch, SnapshotError

log = logging.getLogger(__name__)

PARALLEL_LAYERS = 4
_COMPRESSION_OF_MEDIA = {
    "application/vnd.oci.image.layer.v1.tar": "uncompressed",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "uncompressed",
}


@dataclass
class RegistrySettings:
    mirrors: list[str] = field(default_factory=list)
    insecure: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, root: Path, insecure: list[str] | None = None) -> RegistrySettings:
        config = settings.load(root)
        env = os.environ.get("BUILDPY_REGISTRY_MIRRORS", "")
        mirrors = [m for m in env.split(",") if m.strip()] or list(
            config.get("registry-mirrors", [])
        )
        hosts = set(insecure or [])
        hosts.update(
            h for h in os.environ.get("BUILDPY_INSECURE_REGISTRIES", "").split(",") if h
        )
        hosts.update(config.get("insecure-registries", []))
        # A mirror given as a URL: http:// means it speaks plain HTTP.
        plain = []
        for mirror in mirrors:
            host = mirror.strip().removeprefix("https://")
            if host.startswith("http://"):
                host = host.removeprefix("http://")
                hosts.add(host.rstrip("/"))
            plain.append(host.rstrip("/"))
        return cls(mirrors=plain, insecure={h.strip() for h in hosts})

    def client(self, host: str, auth_name: str | None = None) -> RegistryClient:
        return RegistryClient(host, insecure=host in self.insecure, auth_name=auth_name)


# --- blob sources: which repository a blob is known to live in -----------------


def _sources_schema(engine: Engine) -> None:
    with engine.state.lock:
        engine.state.db.execute(
            "CREATE TABLE IF NOT EXISTS blob_sources (digest TEXT NOT NULL, "
            "registry TEXT NOT NULL, repository TEXT NOT NULL, "
            "PRIMARY KEY (digest, registry, repository))"
        )


def _record_source(engine: Engine, digest: str, ref: Reference) -> None:
    with engine.state.lock:
        engine.state.db.execute(
            "INSERT OR IGNORE INTO blob_sources VALUES (?,?,?)",
            (digest, ref.registry, ref.repository),
        )


def _source_of(engine: Engine, digest: str, ref: Reference) -> str | None:
    with engine.state.lock:
        row = engine.state.db.execute(
            "SELECT repository FROM blob_sources WHERE digest = ? AND registry = ? "
            "AND repository != ? LIMIT 1",
            (digest, ref.registry, ref.repository),
        ).fetchone()
    return None if row is None else str(row[0])


# --- pull -----------------------------------------------------------------------


def select_platform(index: dict[str, Any], os_name: str, arch: str) -> str:
    """The digest of the index's manifest for the platform; the variant v8 is
    preferred on arm64, attestation manifests (``unknown``) never chosen."""
    candidates = []
    available = []
    for entry in index.get("manifests", []):
        platform = entry.get("platform") or {}
        available.append(f"{platform.get('os')}/{platform.get('architecture')}")
        if platform.get("os") == os_name and platform.get("architecture") == arch:
            candidates.append(entry)
    if not candidates:
        raise NotFoundInRegistry(
            f"no manifest for {os_name}/{arch} in the image index "
            f"(it has {', '.join(available) or 'none'})"
        )
    candidates.sort(key=lambda e: e.get("platform", {}).get("variant") != "v8")
    return str(candidates[0]["digest"])


def _fetch_json_blob(
    client: RegistryClient, engine: Engine, repo: str, digest: str
) -> bytes:
    _fetch_blob(client, engine, repo, digest)
    with engine.content.open(digest) as f:
        return f.read()


def _fetch_blob(client: RegistryClient, engine: Engine, repo: str, digest: str) -> None:
    if engine.content.has(digest):
        return
    buffer = _BlobSink(engine)
    try:
        client.fetch_blob(repo, digest, buffer)  # type: ignore[arg-type]
        buffer.commit(digest)
    finally:
        buffer.abort()


class _BlobSink(io.RawIOBase):
    """A file-like writer into the content store that fetch_blob can restart
    (seek(0) + truncate() begin the blob anew)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ctx = engine.content.writer()
        self._w = self._ctx.__enter__()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._w.write(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def truncate(self, size: int | None = None) -> int:
        self._ctx.__exit__(None, None, None)
        self._ctx = self._engine.content.writer()
        self._w = self._ctx.__enter__()
        return 0

    def commit(self, digest: str) -> None:
        try:
            self._w.commit(digest)
        except DigestMismatch as exc:
            raise BlobDigestMismatch(f"blob {digest[:19]}: {exc}") from None

    def abort(self) -> None:
        self._ctx.__exit__(None, None, None)


def _unpack_layer(engine: Engine, blob: str, diff_id: str, media: str) -> int:
    """Decompress a fetched layer blob into the store under its diff ID; the
    uncompressed size."""
    if media.endswith("nondistributable") or "foreign" in media:
        raise RegistryError(f"layer {blob[:19]}: foreign layers are not supported")
    if engine.content.has(diff_id):
        return engine.content.size(diff_id)
    with engine.content.open(blob) as raw, engine.content.writer() as w:
        stream = open_decompressed(raw)
        while chunk := stream.read(1 << 20):
            w.write(chunk)
        try:
            return w.commit(diff_id).size
        except DigestMismatch:
            raise BlobDigestMismatch(
                f"layer {blob[:19]} does not decompress to the diff ID {diff_id} "
                "its config gives"
            ) from None


def pull_image(
    engine: Engine,
    text: str,
    settings: RegistrySettings,
    *,
    report: Callable[[str], None] | None = None,
) -> tuple[Reference, str]:
    """Pull ``text`` into the local store; (the reference, the local manifest
    digest). Docker Hub names go to the mirrors first, in order."""
    ref = Reference.parse(text)
    hosts = [ref.api_host]
    if ref.registry == DOCKER_HUB and settings.mirrors:
        hosts = [*settings.mirrors, ref.api_host]
    failure: RegistryError | None = None
    for host in hosts:
        mirror = host != ref.api_host
        auth_name = host if mirror else ref.registry
        try:
            with settings.client(host, auth_name) as client:
                digest = _pull_from(engine, client, ref, report or (lambda _: None))
        except RegistryError as exc:
            if not mirror:
                raise
            log.info("mirror %s failed: %s", host, exc)
            failure = exc
            continue
        for name in {ref.familiar, Reference.parse(text).familiar}:
            engine.images.tag(name, digest)
        return ref, digest
    assert failure is not None
    raise failure


def _pull_from(
    engine: Engine,
    client: RegistryClient,
    ref: Reference,
    report: Callable[[str], None],
) -> str:
    repo = ref.repository
    fetched = client.get_manifest(repo, ref.reference)
    if fetched.media_type in INDEX_TYPES:
        os_name, arch = host_platform()
        chosen = select_platform(fetched.json(), os_name, arch)
        fetched = client.get_manifest(repo, chosen)
    if fetched.media_type not in MANIFEST_TYPES:
        raise RegistryError(
            f"{ref}: manifest type {fetched.media_type or 'unknown'} is not supported "
            "(expected an OCI or docker schema 2 manifest)"
        )
    manifest = fetched.json()
    config_digest = manifest["config"]["digest"]
    config_data = _fetch_json_blob(client, engine, repo, config_digest)
    config = json.loads(config_data)
    diff_ids = list(config.get("rootfs", {}).get("diff_ids", []))
    descriptors = manifest.get("layers", [])
    if len(diff_ids) != len(descriptors):
        raise RegistryError(
            f"{ref}: config lists {len(diff_ids)} layers, manifest {len(descriptors)}"
        )

    def one(item: tuple[dict[str, Any], str]) -> tuple[str, int]:
        desc, diff_id = item
        blob = desc["digest"]
        kind = _COMPRESSION_OF_MEDIA.get(desc.get("mediaType", ""), "")
        known = engine.images.variant(diff_id, kind) if kind != "uncompressed" else None
        if engine.content.has(diff_id) and (
            kind == "uncompressed" or (known is not None and known[0] == blob)
        ):
            report(f"{blob[:19]}: already exists")
        else:
            report(f"{blob[:19]}: pulling")
            _fetch_blob(client, engine, repo, blob)
            if not kind:  # a media type we do not know: tell by the magic bytes
                with engine.content.open(blob) as f:
                    found = detect(f.read(4))
                kind = "uncompressed" if found == "none" else found
            _unpack_layer(engine, blob, diff_id, desc.get("mediaType", ""))
            if blob != diff_id:
                engine.images.record_variant(diff_id, kind, blob, int(desc["size"]))
            report(f"{blob[:19]}: pull complete")
        _record_source(engine, blob, ref)
        return diff_id, engine.content.size(diff_id)

    _sources_schema(engine)
    with ThreadPoolExecutor(PARALLEL_LAYERS) as pool:
        layers = list(pool.map(one, zip(descriptors, diff_ids, strict=True)))
    _record_source(engine, config_digest, ref)
    digest = engine.images.save(config_data, layers)
    try:
        # Unpack now, as docker does: a bad layer is refused by the pull.
        engine.image_snapshot(digest)
    except SnapshotError as exc:
        raise RegistryError(f"{ref}: a layer cannot be unpacked: {exc}") from None
    report(f"Digest: {fetched.digest}")
    return digest


# --- push -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    reference: Reference
    digest: str
    size: int


def push_image(
    engine: Engine,
    local: str,
    text: str,
    settings: RegistrySettings,
    *,
    compression: str | LayerCompression = "gzip",
    report: Callable[[str], None] | None = None,
    upload_chunk: int | None = None,
) -> Pushed:
    """Push the local image ``local`` as ``text``; the manifest as pushed.
    ``compression`` as a name (``buildpy push --compression``) is forced: every
    layer in that compression, a blob it already has in it reused. As options
    (``-o type=image,push=true,...``) a layer that has a compressed blob (the
    one it was pulled as) sends that blob unless forced (buildpy/layerblobs.py)."""
    if isinstance(compression, str):
        compression = LayerCompression(compression, force=True)
    say = report or (lambda _: None)
    ref = Reference.parse(text)
    if ref.digest and not ref.tag:
        raise UsageError(f"cannot push to {text!r}: push names a tag, not a digest")
    local_digest = engine.images.get(local)
    manifest = engine.images.manifest(local_digest)
    config_desc = manifest["config"]
    descriptors = layer_descriptors(
        engine,
        [(layer["digest"], int(layer["size"])) for layer in manifest["layers"]],
        compression,
    )
    layers = [(d["digest"], int(d["size"])) for d in descriptors]
    _sources_schema(engine)
    lock = threading.Lock()
    with settings.client(ref.api_host, ref.registry) as client:
        if upload_chunk:
            client.upload_chunk = upload_chunk
        repo = ref.repository

        def send(blob: tuple[str, int]) -> None:
            digest, size = blob
            if client.has_blob(repo, digest):
                say(f"{digest[:19]}: layer already exists")
            else:
                source = _source_of(engine, digest, ref)
                if source and client.mount_blob(repo, digest, source):
                    say(f"{digest[:19]}: mounted from {source}")
                else:
                    client.upload_blob(
                        repo, digest, size, lambda: engine.content.open(digest)
                    )
                    say(f"{digest[:19]}: pushed")
            with lock:
                _record_source(engine, digest, ref)

        blobs = list(dict.fromkeys(layers)) + [
            (config_desc["digest"], int(config_desc["size"]))
        ]
        with ThreadPoolExecutor(PARALLEL_LAYERS) as pool:
            list(pool.map(send, blobs))
        pushed = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": MEDIA_CONFIG,
                "digest": config_desc["digest"],
                "size": int(config_desc["size"]),
            },
            "layers": descriptors,
        }
        if manifest.get("annotations"):
            pushed["annotations"] = manifest["annotations"]
        data = json.dumps(pushed, separators=(",", ":")).encode()
        digest = client.put_manifest(repo, ref.reference, data, MEDIA_MANIFEST)
    return Pushed(ref, digest, len(data))


def pull_base(engine: Engine, name: str, *, asked: bool = False) -> str:
    """For ``FROM``: pull an image the store lacks, or (``asked``: ``build
    --pull``) one it may have, whose layers already stored are not fetched
    again; its local manifest digest. BaseImageUnavailable (a LookupError)
    when the registry has no such image or cannot be reached."""
    settings = RegistrySettings.load(engine.root)
    try:
        _, digest = pull_image(engine, name, settings)
    except RegistryError as exc:
        message = f"base image {name}: --pull failed: {exc}" if asked else ""
        raise BaseImageUnavailable(name, str(exc), message=message) from None
    return digest


class BaseImageUnavailable(LookupError):
    """A FROM image that the store lacks and no registry gave; ``detail`` says
    why (not found, refused, unreachable), for the frontend's message, and
    ``message`` is the whole message when the frontend's own would not fit."""

    def __init__(self, name: str, detail: str, *, message: str = "") -> None:
        super().__init__(name)
        self.detail = detail
        self.message = message


def push_built(engine: Engine, names: list[str], out: Any) -> list[Pushed]:
    """``-o type=image,push=true`` and ``--push``: push every name of the build."""
    if not names:
        raise UsageError("push=true needs a name: give -t NAME or name=REF")
    settings = RegistrySettings.load(engine.root)
    compression = out.layer_compression() or LayerCompression("gzip")
    return [
        push_image(engine, name, name, settings, compression=compression)
        for name in names
    ]
