"""Which blob each layer of an exported or pushed image is: the ``-o`` fields
``compression=gzip|zstd|uncompressed``, ``compression-level=N`` and
``force-compression=true``.

Theory of operation. The store keeps every layer uncompressed under its diff ID
and remembers compressed variants of it in ``layer_variants`` (buildpy/images.py):
the blob a layer was pulled as, and each blob an export made. A variant's key is
its compression ("gzip", "zstd"), with the level after a dash when an export
asked for a level other than the default ("gzip-9"): another level is another
blob, with another digest.

As BuildKit does, a layer of the base image keeps a compressed blob it already
has (the one it was pulled as, preferring one in the requested compression), so
base layers are never rewritten and an image may mix gzip and zstd layers; the
build's own layers get the requested compression and level. With
``force-compression=true`` every layer gets the requested compression: a base
layer stored in another one is recompressed; one stored in the same compression
is kept as is, whatever level it was made at (its level cannot be known).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from buildpy.engine import Engine
from buildpy.errors import UsageError
from buildpy.images import LAYER_MEDIA
from snapshotter.compression import compress

COMPRESSIONS = ("gzip", "zstd", "uncompressed")
# The levels each algorithm has (buildx documents gzip 0-9 and zstd 0-22).
LEVELS = {"gzip": range(0, 10), "zstd": range(0, 23)}
# The level used when none is given (snapshotter/compression.py): the same blob
# whether the level was left out or given as this number.
DEFAULT_LEVELS = {"gzip": 6, "zstd": 3}
# The compressed variants a kept base layer may have, in order of preference
# after the requested one.
_STORED = ("gzip", "zstd")


@dataclass(frozen=True)
class LayerCompression:
    """How an export compresses layers."""

    kind: str = "gzip"  # gzip | zstd | uncompressed
    level: int | None = None
    force: bool = False

    @classmethod
    def parse(
        cls,
        where: str,
        kind: str | None,
        level: str | None,
        force: str | None,
        *,
        default: str = "gzip",
    ) -> LayerCompression:
        """From the text of the ``-o`` fields (None when absent); UsageError with
        one line naming ``where`` for a bad value."""
        kind = kind if kind is not None else default
        if kind not in COMPRESSIONS:
            raise UsageError(
                f"{where}: compression must be one of {', '.join(COMPRESSIONS)}, "
                f"not {kind!r}"
            )
        number: int | None = None
        if level is not None:
            try:
                number = int(level)
            except ValueError:
                raise UsageError(
                    f"{where}: compression-level must be a whole number, not {level!r}"
                ) from None
            if kind == "uncompressed":
                raise UsageError(
                    f"{where}: compression-level needs compression=gzip or zstd"
                )
            levels = LEVELS[kind]
            if number not in levels:
                raise UsageError(
                    f"{where}: compression-level {number} is out of range for "
                    f"{kind} ({levels.start}-{levels.stop - 1})"
                )
        forced = False
        if force is not None:
            if force.lower() not in ("true", "false", "1", "0"):
                raise UsageError(
                    f"{where}: force-compression must be true or false, not {force!r}"
                )
            forced = force.lower() in ("true", "1")
        return cls(kind=kind, level=number, force=forced)

    @property
    def variant(self) -> str:
        """The ``layer_variants`` key of a blob this makes."""
        if self.level is None or self.level == DEFAULT_LEVELS.get(self.kind):
            return self.kind
        return f"{self.kind}-{self.level}"


def media_type(kind: str) -> str:
    """The OCI layer media type of a blob in compression ``kind``."""
    return LAYER_MEDIA["none" if kind == "uncompressed" else kind]


def compressed_layer(
    engine: Engine, diff_id: str, size: int, kind: str, level: int | None = None
) -> tuple[str, int]:
    """The blob of a layer in compression ``kind`` at ``level`` (digest, size),
    compressed once and then remembered."""
    if kind == "uncompressed":
        return diff_id, size
    key = LayerCompression(kind, level).variant
    known = engine.images.variant(diff_id, key)
    if known is not None:
        return known
    with engine.content.open(diff_id) as src, engine.content.writer() as w:
        compress(src, w, kind, level)  # type: ignore[arg-type]
        digest, csize = w.commit()
    engine.images.record_variant(diff_id, key, digest, csize)
    return digest, csize


def layer_descriptors(
    engine: Engine,
    layers: list[tuple[str, int]],
    compression: LayerCompression,
    *,
    keep: Container[int] | None = None,
) -> list[dict[str, Any]]:
    """The manifest's layer descriptors for uncompressed ``layers`` (diff ID,
    size). ``keep``: the indexes of base layers, which keep a compressed blob
    they have unless the compression is forced (None: every layer)."""
    descriptors = []
    for index, (diff_id, size) in enumerate(layers):
        kept = None
        if not compression.force and (keep is None or index in keep):
            kept = _stored_blob(engine, diff_id, compression.kind)
        if kept is not None:
            kind, (digest, blob_size) = kept
        else:
            kind = compression.kind
            digest, blob_size = compressed_layer(
                engine, diff_id, size, kind, compression.level
            )
        descriptors.append(
            {"mediaType": media_type(kind), "digest": digest, "size": blob_size}
        )
    return descriptors


def _stored_blob(
    engine: Engine, diff_id: str, wanted: str
) -> tuple[str, tuple[str, int]] | None:
    """A compressed blob the layer already has: (its compression, (digest,
    size)), one in ``wanted`` first."""
    for kind in sorted(_STORED, key=lambda k: k != wanted):
        known = engine.images.variant(diff_id, kind)
        if known is not None:
            return kind, known
    return None
