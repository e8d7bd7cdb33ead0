"""The state root: where the store lives, and the one database every package shares.

Layout under the root (``--root``, else $BUILDPY_ROOT, else /var/lib/buildpy for root
and $XDG_DATA_HOME/buildpy for others):

    buildpy.db        SQLite in WAL mode: cache records, snapshots, images, layers,
                      context checksums; each package creates its own tables
    blobs/sha256/     the content store (snapshotter.content)
    snapshots/        overlay snapshots (snapshotter.overlay)
    mnt/, bundles/    mount points and OCI bundles of running steps; empty when idle
    runc/             the state directory handed to runc
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from buildpy.errors import InfraError


def default_root() -> Path:
    env = os.environ.get("BUILDPY_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/buildpy")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data_home) / "buildpy"


def open_database(path: Path) -> sqlite3.Connection:
    """The shared connection: WAL so that concurrent builds can read while one
    writes, autocommit so that each package decides its own transactions, and
    usable from worker threads (each package guards its statements with a lock)."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=30.0
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@dataclass
class State:
    """An opened state root. Open it with ``State.open(root)``; close it after."""

    root: Path
    db: sqlite3.Connection
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, root: Path | None = None) -> State:
        root = Path(root) if root is not None else default_root()
        try:
            root.mkdir(parents=True, exist_ok=True)
            for sub in ("mnt", "bundles", "runc", "tmp"):
                (root / sub).mkdir(exist_ok=True)
            db = open_database(root / "buildpy.db")
        except (OSError, sqlite3.Error) as exc:
            raise InfraError(f"cannot open the state root {root}: {exc}") from exc
        return cls(root=root, db=db)

    def close(self) -> None:
        self.db.close()
