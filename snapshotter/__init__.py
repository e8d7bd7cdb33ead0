"""Content store, overlay snapshots, layer diff and apply, compression.

Imports no other engine package; everything here is synchronous.
"""

from snapshotter.compression import MEDIA_TYPE_SUFFIX, compress, open_decompressed
from snapshotter.content import BlobWriter, ContentStore, Descriptor
from snapshotter.diff import (
    apply_layer,
    extract_tree,
    layer_is_empty,
    write_layer,
    write_tree,
)
from snapshotter.errors import (
    BlobNotFound,
    DigestMismatch,
    MountError,
    SnapshotError,
    UnsafeArchiveError,
)
from snapshotter.overlay import SnapshotInfo, Snapshotter

__all__ = [
    "MEDIA_TYPE_SUFFIX",
    "BlobNotFound",
    "BlobWriter",
    "ContentStore",
    "Descriptor",
    "DigestMismatch",
    "MountError",
    "SnapshotError",
    "SnapshotInfo",
    "Snapshotter",
    "UnsafeArchiveError",
    "apply_layer",
    "compress",
    "extract_tree",
    "layer_is_empty",
    "open_decompressed",
    "write_layer",
    "write_tree",
]
