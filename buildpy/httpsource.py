"""``ADD <url>``: remote files, fetched as BuildKit's HTTP source fetches them.

Theory of operation
-------------------
The frontend turns each URL source of an ADD into a vertex of its own
(solver.graph.HttpSource) that a copy reads from, as a COPY --from reads another
stage. Its result is a committed snapshot holding one file, named after the last
segment of the URL's path, with mode 0600 and the mtime of the response's
Last-Modified header (the Dockerfile reference's rules); the copy then puts it in
place, applying --chmod and --chown.

Its cache key needs the content. With ``--checksum`` the op carries the digest,
so a cached step needs no request at all, and a fetch whose content has another
digest fails. Without it the worker fetches the file before keys are computed, as
BuildKit does, and the content checksum is the blob's digest and the mtime.
Fetches are conditional: the ETag and Last-Modified of the last fetch of a URL
are kept in the table ``http_sources``, and a 304 answer reuses its blob, so a
rebuild transfers nothing when the file did not change.

Bodies stream into the content store (never into memory). The network guard of
the registry client (BUILDPY_REGISTRY_ALLOW=loopback, set by the test suite)
applies here too.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from buildpy.errors import BuildpyError
from buildpy.registry import RegistryError, check_allowed
from frontend import redacted
from snapshotter.content import ContentStore
from snapshotter.errors import DigestMismatch
from snapshotter.overlay import Snapshotter

_SCHEMA = """
CREATE TABLE IF NOT EXISTS http_sources (
    url TEXT PRIMARY KEY,
    etag TEXT,            -- of the last 200 answer, for If-None-Match
    last_modified TEXT,   -- of the last 200 answer, for If-Modified-Since
    digest TEXT NOT NULL, -- the body's blob
    size INTEGER NOT NULL
)
"""
_CHUNK = 1 << 20
FILE_MODE = 0o600  # the Dockerfile reference: a remote file gets 0600


class FetchError(BuildpyError):
    """A remote file that cannot be fetched: the user's URL or its server."""

    exit_code = 1


@dataclass(frozen=True)
class Fetched:
    """A fetched body: its blob, and the mtime Last-Modified gives (or None)."""

    digest: str
    size: int
    mtime: int | None

    def checksum(self) -> str:
        """What the cache key of the fetching vertex covers."""
        return f"{self.digest} mtime={self.mtime}"


class HttpSources:
    """Fetches into ``content``; remembers validators in ``db``."""

    def __init__(
        self, db: sqlite3.Connection, content: ContentStore, snapshots: Snapshotter
    ) -> None:
        self._db = db
        self._content = content
        self._snapshots = snapshots
        self._lock = threading.Lock()
        self._fetched: dict[str, Fetched] = {}  # url -> this build's fetch

    def init_schema(self) -> None:
        with self._lock:
            self._db.execute(_SCHEMA)

    def fetch(self, url: str, checksum: str | None = None) -> Fetched:
        """The body of ``url``, once per build; checked against ``checksum``."""
        fetched = self._fetched.get(url)
        if fetched is None:
            fetched = self._fetched[url] = self._get(url)
        if checksum is not None and fetched.digest != checksum:
            raise FetchError(
                f"ADD {redacted(url)}: checksum mismatch: expected {checksum}, "
                f"got {fetched.digest}"
            )
        return fetched

    def _get(self, url: str) -> Fetched:
        with self._lock:
            row = self._db.execute(
                "SELECT etag, last_modified, digest, size FROM http_sources "
                "WHERE url = ?",
                (url,),
            ).fetchone()
        headers = {}
        if row is not None and self._content.has(row[2]):
            if row[0]:
                headers["If-None-Match"] = row[0]
            if row[1]:
                headers["If-Modified-Since"] = row[1]
        try:
            with httpx.Client(
                follow_redirects=True,
                timeout=httpx.Timeout(30.0, read=300.0),
                event_hooks={"request": [check_allowed]},
                headers={"User-Agent": "buildpy"},
            ) as client:
                with client.stream("GET", url, headers=headers) as resp:
                    if resp.status_code == 304 and row is not None:
                        return Fetched(row[2], int(row[3]), _mtime(row[1]))
                    if resp.status_code != 200:
                        raise FetchError(
                            f"ADD {redacted(url)}: the server answered "
                            f"{resp.status_code} {resp.reason_phrase}"
                        )
                    with self._content.writer() as w:
                        for chunk in resp.iter_bytes(_CHUNK):
                            w.write(chunk)
                        digest, size = w.commit()
                    etag = resp.headers.get("ETag")
                    modified = resp.headers.get("Last-Modified")
        except RegistryError as exc:  # the network guard
            raise FetchError(f"ADD {redacted(url)}: {exc}") from None
        except httpx.HTTPError as exc:
            raise FetchError(
                f"ADD {redacted(url)}: {exc or type(exc).__name__}"
            ) from None
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO http_sources VALUES (?,?,?,?,?)",
                (url, etag, modified, digest, size),
            )
        return Fetched(digest, size, _mtime(modified))

    def snapshot(self, url: str, filename: str, checksum: str | None) -> str:
        """The committed snapshot holding the file: ``/filename``, mode 0600."""
        fetched = self.fetch(url, checksum)
        identity = f"{fetched.digest}\0{filename}\0{fetched.mtime}".encode()
        name = "http-" + hashlib.sha256(identity).hexdigest()[:32]

        def fill(fs: Path) -> None:
            path = fs / filename
            with self._content.open(fetched.digest) as src, open(path, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
            os.chmod(path, FILE_MODE)
            if fetched.mtime is not None:
                os.utime(path, (fetched.mtime, fetched.mtime))

        try:
            self._snapshots.create_committed(name, None, fill)
        except DigestMismatch as exc:  # the blob went bad on disk
            raise FetchError(f"ADD {redacted(url)}: {exc}") from None
        return name


def _mtime(header: str | None) -> int | None:
    if not header:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(header).timestamp())
    except (TypeError, ValueError):
        return None
