"""The local image store: names to manifests, manifests and configs as blobs.

Images in the local store keep their layers uncompressed (DESIGN.md, "Compression"):
a layer's blob digest is its diff ID, so a snapshot's layer is written once and
exporters compress it on the way out (remembering each compressed variant in
``layer_variants`` so that the next export does not compress it again).

Tables owned here: ``images`` (name -> manifest digest), ``layers`` (committed
snapshot -> its layer's diff ID, or empty), ``layer_variants`` (diff ID +
compression -> compressed blob digest).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from buildpy.errors import ImageNotFound, UsageError
from snapshotter.content import ContentStore

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAYER_MEDIA = {"none": MEDIA_LAYER, "gzip": MEDIA_LAYER_GZIP, "zstd": MEDIA_LAYER_ZSTD}
_FULL_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

# A reference's name part, as the distribution spec allows it (lower case path
# components separated by / with an optional registry host:port first).
_REF = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+|__)*"
    r"(?:(?::[0-9]+)?/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def normalize_ref(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``; Docker Hub's implicit prefixes are dropped
    (``docker.io/library/busybox`` is ``busybox``), as ``docker images`` shows them."""
    original = ref
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    match = _REF.match(ref)
    if match is None:
        raise UsageError(f"invalid reference format: {original!r}")
    if match["tag"] is None and match["digest"] is None:
        ref += ":latest"
    return ref


@dataclass(frozen=True)
class ImageRecord:
    name: str
    digest: str
    created: float


class ImageStore:
    def __init__(self, db: sqlite3.Connection, content: ContentStore) -> None:
        self.db = db
        self.content = content
        self._lock = threading.Lock()

    def init_schema(self) -> None:
        with self._lock:
            self.db.executescript(
                """
                CREATE TABLE IF NOT EXISTS images (
                    name TEXT PRIMARY KEY, digest TEXT NOT NULL, created REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS layers (
                    snapshot TEXT PRIMARY KEY, diff_id TEXT, size INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS layer_variants (
                    diff_id TEXT NOT NULL, compression TEXT NOT NULL,
                    digest TEXT NOT NULL, size INTEGER NOT NULL,
                    PRIMARY KEY (diff_id, compression));
                """
            )

    # --- names ----------------------------------------------------------------

    def tag(self, name: str, digest: str) -> str:
        name = normalize_ref(name)
        with self._lock:
            self.db.execute(
                "INSERT OR REPLACE INTO images (name, digest, created) VALUES (?,?,?)",
                (name, digest, time.time()),
            )
        return name

    def get(self, name: str) -> str:
        """The manifest digest of an image by name, or by (a prefix of) its digest."""
        ref = normalize_ref(name) if not name.startswith("sha256:") else name
        with self._lock:
            row = self.db.execute(
                "SELECT digest FROM images WHERE name = ?", (ref,)
            ).fetchone()
            if row is None and re.fullmatch(r"(sha256:)?[0-9a-f]{6,64}", name):
                hexpart = name.removeprefix("sha256:")
                row = self.db.execute(
                    "SELECT digest FROM images WHERE digest LIKE ? LIMIT 1",
                    (f"sha256:{hexpart}%",),
                ).fetchone()
        if row is None and _FULL_DIGEST.fullmatch(name) and self._is_manifest(name):
            return name  # an image of the store no name points at (oci-layout://)
        if row is None:
            raise ImageNotFound(name)
        return str(row[0])

    def _is_manifest(self, digest: str) -> bool:
        if not self.content.has(digest) or self.content.size(digest) > 1 << 20:
            return False
        try:
            return "config" in self.manifest(digest)
        except (OSError, ValueError, TypeError):
            return False

    def list(self) -> list[ImageRecord]:
        with self._lock:
            rows = self.db.execute(
                "SELECT name, digest, created FROM images ORDER BY created DESC, name"
            ).fetchall()
        return [ImageRecord(*row) for row in rows]

    # --- blobs ----------------------------------------------------------------

    def read_json(self, digest: str) -> dict[str, Any]:
        with self.content.open(digest) as f:
            return json.load(f)

    def put_json(self, value: dict[str, Any]) -> tuple[str, int]:
        """Store a JSON document as docker does: compact, keys in our order."""
        data = json.dumps(value, separators=(",", ":")).encode()
        return self.content.put_bytes(data)

    def manifest(self, digest: str) -> dict[str, Any]:
        return self.read_json(digest)

    def config(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.read_json(manifest["config"]["digest"])

    def save(
        self,
        config: dict[str, Any] | bytes,
        layers: list[tuple[str, int]],
        annotations: Mapping[str, str] | None = None,
    ) -> str:
        """Write config and manifest for uncompressed ``layers`` (digest, size);
        return the manifest digest. A config given as bytes (pulled or loaded) is
        kept byte for byte, so the image keeps its ID. ``annotations``: the
        manifest's (``build --annotation``); exports and pushes carry them."""
        if isinstance(config, bytes):
            config_digest, config_size = self.content.put_bytes(config)
        else:
            config_digest, config_size = self.put_json(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": MEDIA_CONFIG,
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {"mediaType": MEDIA_LAYER, "digest": d, "size": s} for d, s in layers
            ],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        digest, _ = self.put_json(manifest)
        return digest

    # --- layers of snapshots --------------------------------------------------

    def layer_of(self, snapshot: str) -> tuple[str | None, int] | None:
        """(diff ID or None when the snapshot changed nothing, size), or None when
        the layer was never computed."""
        with self._lock:
            row = self.db.execute(
                "SELECT diff_id, size FROM layers WHERE snapshot = ?", (snapshot,)
            ).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def record_layer(self, snapshot: str, diff_id: str | None, size: int) -> None:
        with self._lock:
            self.db.execute(
                "INSERT OR REPLACE INTO layers VALUES (?,?,?)",
                (snapshot, diff_id, size),
            )

    def variant(self, diff_id: str, compression: str) -> tuple[str, int] | None:
        with self._lock:
            row = self.db.execute(
                "SELECT digest, size FROM layer_variants "
                "WHERE diff_id = ? AND compression = ?",
                (diff_id, compression),
            ).fetchone()
        if row is None or not self.content.has(row[0]):
            return None
        return str(row[0]), int(row[1])

    def record_variant(
        self, diff_id: str, compression: str, digest: str, size: int
    ) -> None:
        with self._lock:
            self.db.execute(
                "INSERT OR REPLACE INTO layer_variants VALUES (?,?,?,?)",
                (diff_id, compression, digest, size),
            )
