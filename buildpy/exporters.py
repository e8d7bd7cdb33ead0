"""Exporters: the final snapshot chain becomes an image (layers, config, manifest)
in the local store, an OCI or Docker archive, or a root filesystem.

Layers: a base image's layers are reused as they are (never rewritten); every step
that changed something adds the diff of its upperdir; a step that changed nothing
adds no layer, and its history entry is marked ``empty_layer``, as BuildKit does.
Archives are written to a temporary file beside the destination and renamed into
place, so an interrupted export leaves nothing half-written under the real name.
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from buildpy.engine import LAYER_PREFIX, Engine
from buildpy.errors import InfraError, UsageError
from buildpy.images import (
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    normalize_ref,
)
from buildpy.layerblobs import LayerCompression, compressed_layer, layer_descriptors
from frontend import BuildPlan
from snapshotter.diff import extract_tree, write_tree

STDOUT = "-"  # an output's dest that means stdout (-o -, dest=-)
# cacheonly, as buildx: the steps run and are recorded, nothing is exported.
_TYPES = ("oci", "docker", "local", "tar", "image", "registry", "cacheonly")


@dataclass(frozen=True)
class Output:
    """One ``-o`` value: ``type=oci,dest=x.tar,compression=zstd``."""

    type: str
    dest: str | None = None
    compression: str | None = None
    name: str | None = None
    push: bool = False
    compression_level: int | None = None
    force_compression: bool = False
    tar: bool = True  # oci/docker: false writes the layout as a directory

    def layer_compression(self) -> LayerCompression | None:
        """The compression options given (None when none was: the type's own
        default applies)."""
        if (self.compression, self.compression_level) == (None, None) and not (
            self.force_compression
        ):
            return None
        default = "uncompressed" if self.type == "docker" else "gzip"
        return LayerCompression(
            self.compression or default,
            self.compression_level,
            self.force_compression,
        )

    @classmethod
    def parse(cls, text: str) -> Output:
        if text == STDOUT:  # as buildx: the root filesystem as a tar, to stdout
            return cls(type="tar", dest=STDOUT)
        if "=" not in text.split(",")[0]:
            # A bare path means type=local, as in buildx.
            return cls(type="local", dest=text)
        fields: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise UsageError(
                    f"invalid --output {text!r}: {part!r} is not key=value"
                )
            fields[key.strip()] = value.strip()
        kind = fields.pop("type", "")
        if kind not in _TYPES:
            raise UsageError(
                f"invalid --output {text!r}: type must be one of {', '.join(_TYPES)}"
            )
        dest = fields.pop("dest", None)
        if kind == "registry":  # buildx's shorthand for type=image,push=true
            kind = "image"
            fields["push"] = "true"
        elif kind == "docker" and not dest:
            # buildx loads such an image into docker's store; here, ours.
            kind = "image"
        if kind not in ("image", "cacheonly") and not dest:
            raise UsageError(f"invalid --output {text!r}: type={kind} needs dest=PATH")
        if kind == "local" and dest == STDOUT:
            raise UsageError(
                f"invalid --output {text!r}: type=local writes a directory; "
                "type=tar writes to stdout"
            )
        compression = fields.pop("compression", None)
        options = LayerCompression.parse(
            f"invalid --output {text!r}",
            compression,
            fields.pop("compression-level", None),
            fields.pop("force-compression", None),
            default="uncompressed" if kind == "docker" else "gzip",
        )
        name = fields.pop("name", None)
        push = fields.pop("push", "false").lower() in ("true", "1")
        tar = fields.pop("tar", "true").lower() not in ("false", "0")
        if not tar and kind not in ("oci", "docker"):
            raise UsageError(
                f"invalid --output {text!r}: tar=false is for type=oci and "
                "type=docker, whose image layout it writes as a directory"
            )
        if not tar and dest == STDOUT:
            raise UsageError(f"invalid --output {text!r}: a directory is not stdout")
        if fields:
            raise UsageError(
                f"invalid --output {text!r}: unknown key {next(iter(fields))!r}"
            )
        return cls(
            type=kind,
            dest=dest,
            compression=compression,
            name=name,
            push=push,
            compression_level=options.level,
            force_compression=options.force,
            tar=tar,
        )


@dataclass(frozen=True)
class BuiltImage:
    manifest_digest: str
    config_digest: str
    config: dict[str, Any]
    layers: list[tuple[str, int]]  # uncompressed (diff ID, size)
    base_layers: int = 0  # how many of ``layers`` are the base image's


def _timestamp(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def assemble_image(
    engine: Engine,
    plan: BuildPlan,
    final: str,
    *,
    source_date_epoch: int | None,
    annotations: Mapping[str, str] | None = None,
    squash: bool = False,
) -> BuiltImage:
    """Write the image of a solved plan into the store (blobs only, no name);
    ``annotations`` go on its manifest. ``squash``: the build's own layers as
    one, above the base image's (``build --squash``, as buildah's)."""
    chain = engine.snapshots.chain(final) if final else []
    base_layers = [n for n in chain if n.startswith(LAYER_PREFIX)]
    step_snapshots = [n for n in chain if not n.startswith(LAYER_PREFIX)]
    layered = [h for h in plan.history if not h.empty_layer]
    if len(layered) != len(step_snapshots):
        raise InfraError(
            f"internal error: {len(layered)} layer steps but "
            f"{len(step_snapshots)} snapshots; please report this"
        )
    # Dated by when the final filesystem was made, not by the clock: a rebuild that
    # is all cached then gives the same config, so the same image ID, as BuildKit.
    if source_date_epoch is not None:
        moment = float(source_date_epoch)
    elif step_snapshots:
        moment = engine.snapshots.info(step_snapshots[-1]).created
    else:
        moment = time.time()
    created = _timestamp(moment)

    layers: list[tuple[str, int]] = []
    for name in base_layers:
        known = engine.images.layer_of(name)
        assert known is not None and known[0] is not None, name
        layers.append((known[0], known[1]))

    base_config = plan.base.config if plan.base is not None else {}
    history: list[dict[str, Any]] = [
        dict(h) for h in base_config.get("history", []) if isinstance(h, dict)
    ]
    squashed: tuple[str | None, int] | None = None
    if squash and step_snapshots:
        # Every step's entry stays in the history; the last one that made a
        # layer carries the layer of them all.
        squashed = engine.squashed_layer(step_snapshots, source_date_epoch)
        last = max(i for i, h in enumerate(plan.history) if not h.empty_layer)
    steps = iter(step_snapshots)
    for index, entry in enumerate(plan.history):
        item: dict[str, Any] = {
            "created": created,
            "created_by": entry.created_by,
            "comment": entry.comment,
        }
        if squashed is not None:
            diff_id, size = squashed
            if index == last and diff_id is not None:
                layers.append((diff_id, size))
            else:
                item["empty_layer"] = True
        elif not entry.empty_layer:
            diff_id, size = engine.snapshot_layer(next(steps), source_date_epoch)
            if diff_id is None:
                item["empty_layer"] = True
            else:
                layers.append((diff_id, size))
        else:
            item["empty_layer"] = True
        history.append(item)

    config = copy.deepcopy(plan.config)
    config["created"] = created
    config["rootfs"] = {"type": "layers", "diff_ids": [d for d, _ in layers]}
    config["history"] = history
    manifest_digest = engine.images.save(config, layers, annotations)
    manifest = engine.images.manifest(manifest_digest)
    return BuiltImage(
        manifest_digest=manifest_digest,
        config_digest=manifest["config"]["digest"],
        config=config,
        layers=layers,
        base_layers=len(base_layers),
    )


# --- archives -------------------------------------------------------------------


def _compressed_layer(
    engine: Engine, diff_id: str, size: int, kind: str, level: int | None = None
) -> tuple[str, int]:
    return compressed_layer(engine, diff_id, size, kind, level)


def _umask() -> int:
    """The process's umask, read without setting it: os.umask() would change it
    for a moment in every thread of the build."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


@contextmanager
def _atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """A new file that appears at ``dest`` whole or not at all; stdout when
    ``dest`` is ``-`` (STDOUT)."""
    if str(dest) == STDOUT:
        yield stdout_stream()
        sys.stdout.buffer.flush()
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    # mkstemp makes the file private; an output gets the mode any new file would.
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_stdout(outputs: list[Output], *, quiet: bool) -> None:
    """Refuse, before the build, what would mix other output into an archive on
    stdout, or write one to a terminal."""
    to_stdout = [o for o in outputs if o.dest == STDOUT]
    if not to_stdout:
        return
    if len(to_stdout) > 1:
        raise UsageError("only one --output can write to stdout (dest=-)")
    if quiet:
        raise UsageError(
            "--quiet prints the image ID on stdout, where --output dest=- writes"
        )
    stdout_stream()


def stdout_stream() -> BinaryIO:
    """Our stdout, for an archive, unless it is a terminal (as docker refuses)."""
    if sys.stdout.isatty():
        raise UsageError(
            "refusing to write an archive to the terminal: redirect stdout "
            "to a file or a pipe"
        )
    sys.stdout.flush()
    return _Counted(sys.stdout.buffer)  # type: ignore[return-value]


class _Counted:
    """A pipe that knows how much was written to it: tarfile asks (``tell``)
    where it starts, which a pipe cannot say."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._written = 0

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        self._raw.flush()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def write_archive(
    engine: Engine,
    image: BuiltImage,
    dest: Path,
    *,
    kind: str,
    names: list[str],
    compression: str | LayerCompression | None,
    tar: bool = True,
) -> str:
    """An OCI image layout in a tar (or, ``tar`` False, a directory), with
    docker's manifest.json beside it so that both OCI tools and ``docker
    load`` read it. ``kind`` "docker" defaults to
    uncompressed layers, all of them (as ``docker save``), "oci" to gzip; base
    layers keep their blobs unless forced (buildpy/layerblobs.py). Returns the
    digest of the manifest written."""
    if compression is None and kind == "docker":
        compression = LayerCompression("uncompressed", force=True)
    elif not isinstance(compression, LayerCompression):
        compression = LayerCompression(compression or "gzip")
    layer_descs = layer_descriptors(
        engine, image.layers, compression, keep=range(image.base_layers)
    )
    layers = [(d["digest"], d["size"]) for d in layer_descs]
    config_digest = image.config_digest
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": engine.content.size(config_digest),
        },
        "layers": layer_descs,
    }
    stored = engine.images.manifest(image.manifest_digest)
    if stored.get("annotations"):
        manifest["annotations"] = stored["annotations"]
    manifest_digest, manifest_size = engine.images.put_json(manifest)
    # -t app:1 and name=app:1 together are one name (umoci refuses a tag twice).
    refs = list(dict.fromkeys(normalize_ref(n) for n in names))
    descriptors = []
    for ref in refs or [None]:
        descriptor: dict[str, Any] = {
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
        }
        if ref is not None:
            tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
            descriptor["annotations"] = {
                "io.containerd.image.name": _qualified(ref),
                "org.opencontainers.image.ref.name": tag,
            }
        descriptors.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": descriptors}
    docker_manifest = [
        {
            "Config": "blobs/sha256/" + config_digest.removeprefix("sha256:"),
            "RepoTags": refs,
            "Layers": ["blobs/sha256/" + d.removeprefix("sha256:") for d, _ in layers],
        }
    ]
    blobs = [config_digest, manifest_digest, *(d for d, _ in layers)]
    write = write_layout_tar if tar else write_layout_dir
    write(engine, dest, index, docker_manifest, blobs)
    return manifest_digest


def write_layout_tar(
    engine: Engine,
    dest: Path,
    index: dict[str, Any],
    docker_manifest: list[dict[str, Any]],
    blobs: Iterable[str],
) -> None:
    """An OCI image layout as a tar (oci-layout, index.json, the blobs once each)
    with docker's manifest.json beside it, written atomically to ``dest``."""
    with (
        _atomic_file(dest) as f,
        tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, data in _layout_files(index, docker_manifest):
            _add_bytes(tar, name, data)
        _add_dir(tar, "blobs/")
        _add_dir(tar, "blobs/sha256/")
        for digest in dict.fromkeys(blobs):
            info = tarfile.TarInfo("blobs/sha256/" + digest.removeprefix("sha256:"))
            info.size = engine.content.size(digest)
            info.mode = 0o644
            with engine.content.open(digest) as blob:
                tar.addfile(info, blob)


def write_layout_dir(
    engine: Engine,
    dest: Path,
    index: dict[str, Any],
    docker_manifest: list[dict[str, Any]],
    blobs: Iterable[str],
) -> None:
    """The same layout as ``write_layout_tar``, as the directory ``dest``
    (``-o type=oci,tar=false``). Blobs already there are kept (their names are
    their digests); index.json is written last, so the layout names the image
    only once everything it needs is in place."""
    blob_dir = dest / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for digest in dict.fromkeys(blobs):
        target = blob_dir / digest.removeprefix("sha256:")
        if target.exists():
            continue
        with _atomic_file(target) as f:
            engine.content.copy_to(digest, f)
    # index.json last: _layout_files names it last.
    for name, data in _layout_files(index, docker_manifest):
        with _atomic_file(dest / name) as f:
            f.write(data)


def _layout_files(
    index: dict[str, Any], docker_manifest: list[dict[str, Any]]
) -> list[tuple[str, bytes]]:
    """The files of an image layout beside its blobs, index.json last."""
    return [
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        ("manifest.json", json.dumps(docker_manifest).encode()),
        ("index.json", json.dumps(index, separators=(",", ":")).encode()),
    ]


def _qualified(ref: str) -> str:
    """docker.io/library/app:1 for app:1, as containerd names images."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    if "/" in ref:
        return "docker.io/" + ref
    return "docker.io/library/" + ref


# --- root filesystems -----------------------------------------------------------


@contextmanager
def mounted_view(engine: Engine, final: str) -> Iterator[Path]:
    """The final filesystem, mounted read-only (an empty dir for scratch)."""
    target = Path(tempfile.mkdtemp(prefix="export-", dir=engine.root / "mnt"))
    try:
        if final:
            engine.snapshots.view(final, target)
            try:
                yield target
            finally:
                engine.snapshots.unmount(target)
        else:
            yield target
    finally:
        os.rmdir(target)


def write_rootfs_tar(engine: Engine, final: str, dest: Path, epoch: int | None) -> None:
    with mounted_view(engine, final) as view, _atomic_file(dest) as f:
        write_tree(view, f, source_date_epoch=epoch)


def write_rootfs_dir(engine: Engine, final: str, dest: Path, epoch: int | None) -> None:
    """Copy the final filesystem into ``dest`` through a tar stream in a pipe, so
    owners, modes, links and special files come out exactly as in the image."""
    dest.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce(view: Path) -> None:
        try:
            with os.fdopen(write_fd, "wb") as w:
                write_tree(view, w, source_date_epoch=epoch)
        except BaseException as exc:  # handed to the consumer's thread below
            failure.append(exc)

    with mounted_view(engine, final) as view:
        producer = threading.Thread(target=produce, args=(view,), daemon=True)
        producer.start()
        try:
            with os.fdopen(read_fd, "rb") as r:
                extract_tree(r, dest)
        finally:
            producer.join()
    if failure:
        raise InfraError(f"cannot export the root filesystem: {failure[0]}")
