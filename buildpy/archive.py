"""``buildpy save`` and ``buildpy load``: images of the local store to and from
archives.

A saved archive is an OCI image layout in a tar (``oci-layout``, ``index.json``,
``blobs/sha256/``) with docker's ``manifest.json`` beside it, so that OCI tools
and ``docker load`` both read it; layers are saved uncompressed, as ``docker
save`` does. ``load`` reads either kind: an OCI layout (through ``index.json``,
names from the ``io.containerd.image.name`` or ``org.opencontainers.image.ref.name``
annotations) or a docker archive (``manifest.json``: Config, RepoTags, Layers,
layers plain or compressed). Every blob read is checked against its digest, every
layer against its config's diff ID, and the image is unpacked before it is
named: a bad archive is refused and names nothing.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from buildpy.engine import Engine
from buildpy.errors import UsageError
from buildpy.exporters import _qualified, write_layout_tar
from buildpy.images import MEDIA_INDEX, MEDIA_MANIFEST
from buildpy.registry import INDEX_TYPES
from snapshotter.compression import detect, open_decompressed
from snapshotter.errors import DigestMismatch, SnapshotError

_CHUNK = 1 << 20


class ArchiveError(UsageError):
    """The archive given to ``load`` is not a readable image archive."""


def save_images(engine: Engine, names: list[str], dest: Path) -> None:
    """Write the images ``names`` of the local store into one archive."""
    entries: list[tuple[str, str]] = []  # (name as given, manifest digest)
    for name in names:
        entries.append((name, engine.images.get(name)))
    descriptors = []
    docker_manifest = []
    blobs: dict[str, None] = {}
    for name, digest in entries:
        manifest = engine.images.manifest(digest)
        config = manifest["config"]["digest"]
        layers = [layer["digest"] for layer in manifest["layers"]]
        named = not name.startswith("sha256:") and not _is_id(engine, name)
        descriptor: dict[str, Any] = {
            "mediaType": MEDIA_MANIFEST,
            "digest": digest,
            "size": engine.content.size(digest),
        }
        tags: list[str] = []
        if named:
            from buildpy.images import normalize_ref

            ref = normalize_ref(name)
            tags.append(ref)
            last = ref.rsplit("/", 1)[-1]
            descriptor["annotations"] = {
                "io.containerd.image.name": _qualified(ref),
                "org.opencontainers.image.ref.name": last.rsplit(":", 1)[-1]
                if ":" in last
                else "latest",
            }
        descriptors.append(descriptor)
        docker_manifest.append(
            {
                "Config": "blobs/sha256/" + config.removeprefix("sha256:"),
                "RepoTags": tags,
                "Layers": ["blobs/sha256/" + d.removeprefix("sha256:") for d in layers],
            }
        )
        for blob in (config, digest, *layers):
            blobs[blob] = None
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": descriptors}
    write_layout_tar(engine, dest, index, docker_manifest, blobs)


def _is_id(engine: Engine, name: str) -> bool:
    """A bare image ID prefix rather than a name."""
    import re

    return bool(re.fullmatch(r"[0-9a-f]{6,64}", name)) and not any(
        r.name.split(":")[0] == name for r in engine.images.list()
    )


# --- load -----------------------------------------------------------------------


class _Source:
    """Files of an image archive by name: a tar (``_Archive``) or an OCI
    layout directory (``_Directory``). ``label`` is what messages call it."""

    label: str

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def json(self, name: str) -> Any:
        with self.open(name) as f:
            try:
                return json.load(f)
            except ValueError:
                raise ArchiveError(f"{self.label}: {name} is not JSON") from None

    def blob_path(self, digest: str) -> str:
        algo, _, hexpart = digest.partition(":")
        return f"blobs/{algo}/{hexpart}"


class _Archive(_Source):
    def __init__(self, tar: tarfile.TarFile, label: str) -> None:
        self.tar = tar
        self.label = label
        self.members = {m.name.removeprefix("./"): m for m in tar.getmembers()}

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name.removeprefix("./"))
        if member is None or not member.isfile():
            raise ArchiveError(f"{self.label}: {name} is missing from the archive")
        f = self.tar.extractfile(member)
        assert f is not None
        return f


class _Directory(_Source):
    """An OCI image layout as a directory (``-o type=oci,tar=false`` writes
    one), read as a tar is: names below it, never outside."""

    def __init__(self, root: Path, label: str) -> None:
        self.root = root
        self.label = label

    def has(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str) -> IO[bytes]:
        path = self._path(name)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise ArchiveError(f"{self.label}: {name} is missing") from None
        except OSError as exc:
            raise ArchiveError(f"{self.label}: {name}: {exc.strerror}") from None

    def _path(self, name: str) -> Path:
        parts = name.removeprefix("./").split("/")
        if not name or name.startswith("/") or ".." in parts:
            raise ArchiveError(f"{self.label}: {name!r} is outside the layout")
        return self.root.joinpath(*parts)


def _put_checked(
    engine: Engine, archive: _Source, name: str, digest: str | None
) -> str:
    with archive.open(name) as src, engine.content.writer() as w:
        while chunk := src.read(_CHUNK):
            w.write(chunk)
        try:
            return w.commit(digest).digest
        except DigestMismatch:
            raise ArchiveError(
                f"{archive.label}: {name} does not have the digest {digest}"
            ) from None


def _layer(
    engine: Engine, archive: _Source, name: str, diff_id: str
) -> tuple[str, int]:
    """Store one layer file uncompressed under its diff ID (and, when compressed,
    the compressed blob as its variant)."""
    with archive.open(name) as f:
        kind = detect(f.read(4))
    if kind == "none":
        _put_checked(engine, archive, name, diff_id)
        return diff_id, engine.content.size(diff_id)
    blob = _put_checked(engine, archive, name, None)
    with engine.content.open(blob) as raw, engine.content.writer() as w:
        stream = open_decompressed(raw)
        while chunk := stream.read(_CHUNK):
            w.write(chunk)
        try:
            w.commit(diff_id)
        except DigestMismatch:
            raise ArchiveError(
                f"{archive.label}: layer {name} does not match the diff ID {diff_id}"
            ) from None
    engine.images.record_variant(diff_id, kind, blob, engine.content.size(blob))
    return diff_id, engine.content.size(diff_id)


def _load_image(
    engine: Engine,
    archive: _Source,
    config_name: str,
    layer_names: list[str],
    config_digest: str | None,
) -> str:
    config_digest = _put_checked(engine, archive, config_name, config_digest)
    with engine.content.open(config_digest) as f:
        config_data = f.read()
    try:
        config = json.loads(config_data)
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError):
        raise ArchiveError(
            f"{archive.label}: {config_name} is not an image config"
        ) from None
    if len(diff_ids) != len(layer_names):
        raise ArchiveError(
            f"{archive.label}: config lists {len(diff_ids)} layers, "
            f"the manifest {len(layer_names)}"
        )
    layers = [
        _layer(engine, archive, name, diff_id)
        for name, diff_id in zip(layer_names, diff_ids, strict=True)
    ]
    digest = engine.images.save(config_data, layers)
    try:
        engine.image_snapshot(digest)
    except SnapshotError as exc:
        raise ArchiveError(
            f"{archive.label}: a layer cannot be unpacked: {exc}"
        ) from None
    return digest


def load_images(
    engine: Engine, path: Path, label: str | None = None
) -> list[tuple[str, list[str]]]:
    """Load every image of an OCI or docker archive, or of an OCI layout
    directory; (image ID, names) each. ``label``: what messages call the
    archive, when not its path (stdin)."""
    label = label or str(path)
    loaded: list[tuple[str, list[str]]] = []
    with _opened(path, label) as archive:
        if archive.has("index.json"):
            for digest, names in _oci_entries(archive, archive.json("index.json")):
                local = _load_manifest(engine, archive, digest)
                loaded.append(_name(engine, local, names))
        elif archive.has("manifest.json"):
            for entry in archive.json("manifest.json"):
                local = _load_image(
                    engine, archive, entry["Config"], list(entry["Layers"]), None
                )
                loaded.append(_name(engine, local, list(entry.get("RepoTags") or [])))
        else:
            raise ArchiveError(
                f"{label} is neither an OCI archive (index.json) nor a docker "
                "archive (manifest.json)"
            )
    return loaded


def load_layout_image(engine: Engine, path: Path, pick: str = "") -> str:
    """``--build-context NAME=oci-layout://PATH[:TAG|@DIGEST]``: the image of
    an OCI layout directory that ``pick`` names (its ``ref.name`` annotation,
    or its manifest digest; the only one when empty), loaded into the store
    and named nothing; its local manifest digest."""
    label = f"oci-layout://{path}"
    if not path.is_dir():
        raise ArchiveError(f"{label}: not a directory")
    with _opened(path, label) as archive:
        if not archive.has("index.json"):
            raise ArchiveError(f"{label}: no index.json, not an OCI image layout")
        entries = archive.json("index.json").get("manifests", [])
        chosen = [
            e
            for e in entries
            if not pick
            or e.get("digest") == pick.removeprefix("@")
            or (e.get("annotations") or {}).get("org.opencontainers.image.ref.name")
            == pick
        ]
        if len(chosen) != 1:
            what = f"an image {pick!r}" if pick else "one image"
            raise ArchiveError(
                f"{label}: holds {len(chosen)} images where {what} was asked for"
            )
        # A nested index gives the host platform's manifest, as load takes it.
        digest, _names = _oci_entries(archive, {"manifests": chosen})[0]
        return _load_manifest(engine, archive, digest)


def _load_manifest(engine: Engine, archive: _Source, digest: str) -> str:
    manifest_name = archive.blob_path(digest)
    _put_checked(engine, archive, manifest_name, digest)
    manifest = archive.json(manifest_name)
    config = manifest["config"]["digest"]
    layers = [archive.blob_path(layer["digest"]) for layer in manifest["layers"]]
    return _load_image(engine, archive, archive.blob_path(config), layers, config)


@contextmanager
def _opened(path: Path, label: str) -> Iterator[_Source]:
    """``path`` as an archive to read: a tar (any compression), or an OCI
    layout directory."""
    if path.is_dir():
        yield _Directory(path, label)
        return
    try:
        tar = tarfile.open(path, mode="r:*")
    except tarfile.ReadError:  # its message lists every method it tried
        if path.stat().st_size == 0:
            raise ArchiveError(f"cannot read {label}: it is empty") from None
        raise ArchiveError(
            f"cannot read {label}: not a tar archive (plain, gzip, bzip2 or xz)"
        ) from None
    except (OSError, tarfile.TarError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ArchiveError(f"cannot read {label}: {reason}") from None
    with tar:
        yield _Archive(tar, label)


def _oci_entries(
    archive: _Source, index: dict[str, Any]
) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for entry in index.get("manifests", []):
        media = entry.get("mediaType", "")
        annotations = entry.get("annotations") or {}
        if media in INDEX_TYPES:  # a nested index: take the host's platform
            from buildpy.engine import host_platform
            from buildpy.transfer import select_platform

            nested = archive.json(archive.blob_path(entry["digest"]))
            chosen = select_platform(nested, *host_platform())
            found.append((chosen, _annotated_names(annotations)))
        else:
            found.append((entry["digest"], _annotated_names(annotations)))
    return found


def _annotated_names(annotations: dict[str, str]) -> list[str]:
    full = annotations.get("io.containerd.image.name")
    if full:
        return [full]
    ref = annotations.get("org.opencontainers.image.ref.name", "")
    # A bare tag names nothing without a repository; a full name is a name.
    return [ref] if ("/" in ref or ":" in ref) and ref else []


def _name(engine: Engine, digest: str, names: list[str]) -> tuple[str, list[str]]:
    tagged = [engine.images.tag(name, digest) for name in names]
    image_id = engine.images.manifest(digest)["config"]["digest"]
    return image_id, tagged
