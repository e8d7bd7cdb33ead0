"""The snapshotter's exceptions, split by whose fault a failure is.

    SnapshotError                    root of everything raised here
    ├── InputError                   the content handed in is bad: a layer, a blob
    │   ├── DigestMismatch           content does not hash to the digest it claims
    │   ├── InvalidDigest            a digest string that is not sha256:<64 hex>
    │   ├── UnsafeArchiveError       a tar entry that would write outside its root
    │   ├── InvalidArchiveError      a tar stream that cannot be read or applied
    │   └── UnrepresentableFile      a file a layer tar cannot express
    ├── NotFoundError                something looked up is not there
    │   ├── BlobNotFound
    │   └── SnapshotNotFound
    ├── MachineError                 the host refused: mounts, kernel features
    │   └── MountError
    └── UsageError                   the caller broke a rule of the API (a bug)
        ├── SnapshotExists
        └── SnapshotStateError       wrong kind (active/committed), in use, ...

Whether a missing blob or snapshot is a bug or a race with a prune is for the
caller to decide, so NotFoundError stands apart from UsageError.
"""

from __future__ import annotations


class SnapshotError(Exception):
    """Root of every error the snapshotter raises."""


class InputError(SnapshotError):
    """The content handed in (an archive, a blob) is bad."""


class DigestMismatch(InputError):
    """Content does not hash to the digest it was expected to have."""

    def __init__(self, expected: str, actual: str, where: str) -> None:
        super().__init__(f"{where}: digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class InvalidDigest(InputError, ValueError):
    """A digest string that is not of the form sha256:<64 lowercase hex>."""


class UnsafeArchiveError(InputError):
    """A tar entry that would write outside the directory it is extracted into."""


class InvalidArchiveError(InputError):
    """A tar stream that cannot be read or applied."""


class UnrepresentableFile(InputError):
    """A file in a snapshot that an OCI layer tar cannot express."""


class NotFoundError(SnapshotError, LookupError):
    """Something looked up is not there."""


class BlobNotFound(NotFoundError):
    """No blob with this digest in the content store."""


class SnapshotNotFound(NotFoundError):
    """No snapshot with this name or key."""


class MachineError(SnapshotError):
    """The host refused an operation: a mount, a missing kernel feature."""


class MountError(MachineError):
    """A mount or unmount failed."""


class UsageError(SnapshotError):
    """The caller broke a rule of the API; a bug in the caller."""


class SnapshotExists(UsageError):
    """A snapshot with this name or key already exists."""


class SnapshotStateError(UsageError):
    """A snapshot is of the wrong kind for the operation, or still in use."""
