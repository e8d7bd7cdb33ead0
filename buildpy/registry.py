"""A client of the OCI distribution spec (docker's registry API v2) on httpx.

Theory of operation. One ``RegistryClient`` talks to one registry host. It is a
synchronous client, safe to share between threads: pulls and pushes run their
layers in a thread pool, and a Trio caller runs it in worker threads, so the
client needs nothing from an event loop.

Authentication follows the registry's challenge: a request goes out without
credentials (or with what the last challenge asked for); a 401 carries
``WWW-Authenticate``. ``Basic`` means: send the user's credentials on every
request. ``Bearer realm=...,service=...,scope=...`` means: fetch a token from the
realm (anonymously, or with the user's credentials as basic auth) for the scope
this request needs, and send it; tokens are kept per scope. Credentials come
from ~/.docker/config.json (``$DOCKER_CONFIG``): ``auths`` entries, or a
credential helper (``credHelpers``/``credsStore``, run as
``docker-credential-NAME get``). They appear in no log and no error message:
errors name the registry, the repository and the status, never a header.

Transport: HTTPS, except plain HTTP for registries on the loopback interface
and for those named as insecure (tried over HTTPS without certificate checks
first, as docker does, then over HTTP). Connection errors, timeouts, 429 and
5xx are retried a few times with growing pauses; every other status is final.

Every blob fetched is hashed as it streams into its destination and refused
when its digest is not the one asked for; a manifest fetched by digest too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from buildpy.errors import EXIT_INFRA, EXIT_USAGE, BuildpyError
from buildpy.reference import DOCKER_HUB, is_local_host

log = logging.getLogger(__name__)

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))

_CHUNK = 1 << 20
# Blobs larger than this go up in PATCH chunks of this size (distribution spec,
# "Pushing a blob in chunks"); smaller ones in one PUT.
DEFAULT_UPLOAD_CHUNK = 64 << 20
_RETRIES = 4
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class RegistryError(BuildpyError):
    """Root of the registry client's errors: the registry or the network failed."""

    exit_code = EXIT_INFRA


class RegistryAuthError(RegistryError):
    """The registry refused the credentials, or wants some and has none: the
    user's to fix (docker login, ~/.docker/config.json)."""

    exit_code = EXIT_USAGE


class NotFoundInRegistry(RegistryError, LookupError):
    """The registry has no such manifest or repository."""

    exit_code = EXIT_USAGE


class BlobDigestMismatch(RegistryError):
    """What the registry sent is not what its digest says: never stored."""


@dataclass(frozen=True)
class Fetched:
    """A manifest as the registry sent it: the exact bytes, their media type and
    their digest."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        value = json.loads(self.data)
        if not isinstance(value, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return value


# --- credentials ----------------------------------------------------------------


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker/config.json"


def _config_key(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://h:5000`` -> h:5000."""
    host = re.sub(r"^[a-z]+://", "", key).split("/", 1)[0]
    if host in ("index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB
    return host


def load_credentials(registry: str) -> tuple[str, str] | None:
    """(user, secret) for ``registry`` from docker's config file, or None."""
    path = docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryAuthError(f"cannot read {path}: {exc}") from None
    helper = config.get("credHelpers", {}).get(registry) or config.get("credsStore")
    for key, entry in config.get("auths", {}).items():
        if _config_key(key) != registry or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, secret = (
                    base64.b64decode(entry["auth"]).decode().partition(":")
                )
            except ValueError:
                raise RegistryAuthError(
                    f"{path}: the auth entry of {key} is not base64 user:password"
                ) from None
            return user, secret
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    if helper:
        return _from_helper(str(helper), registry)
    return None


def _from_helper(helper: str, registry: str) -> tuple[str, str] | None:
    server = "https://index.docker.io/v1/" if registry == DOCKER_HUB else registry
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run(
            [program, "get"], input=server, capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise RegistryAuthError(
            f"credential helper {program} named in {docker_config_path()} "
            "is not on PATH"
        ) from None
    if proc.returncode != 0:
        # Helpers say "credentials not found in native keychain": not an error.
        if "not found" in proc.stdout + proc.stderr:
            return None
        raise RegistryAuthError(
            f"credential helper {program} failed for {registry} "
            f"(exit {proc.returncode})"
        )
    try:
        answer = json.loads(proc.stdout)
        return str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        raise RegistryAuthError(
            f"credential helper {program} gave no Username/Secret for {registry}"
        ) from None


# --- the client -----------------------------------------------------------------


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


ALLOW_ENV = "BUILDPY_REGISTRY_ALLOW"


def refusal(host: str) -> str | None:
    """Why ``host`` may not be contacted, or None: with
    BUILDPY_REGISTRY_ALLOW=loopback only this machine may be. The test suite sets
    it so that no code path (a mirror's fallback to Docker Hub, say) can reach
    the internet; registries, ADD <url> and ADD <git url> all ask."""
    if os.environ.get(ALLOW_ENV) != "loopback":
        return None
    if is_local_host(f"[{host}]" if ":" in host else host):
        return None
    return f"refusing to contact {host}: {ALLOW_ENV}=loopback allows only this machine"


def check_allowed(request: httpx.Request) -> None:
    """httpx's request hook: every request is checked, token realms and blob
    redirects included, not just the registry's name."""
    reason = refusal(request.url.host)
    if reason is not None:
        raise RegistryError(reason)


class RegistryClient:
    """The registry at ``host`` (as in a reference: ``127.0.0.1:5000``,
    ``registry-1.docker.io``). ``credentials`` (user, secret) default to what
    docker's config file has for ``auth_name`` (the host as users name it)."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: tuple[str, str] | None = None,
        auth_name: str | None = None,
        upload_chunk: int = DEFAULT_UPLOAD_CHUNK,
        timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.upload_chunk = upload_chunk
        self._credentials = credentials
        self._auth_name = auth_name or host
        self._loaded_credentials = credentials is not None
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}
        self._basic = False
        self._insecure = insecure
        plain = is_local_host(host)
        self.base = f"{'http' if plain else 'https'}://{host}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=15.0),
            verify=not insecure,
            follow_redirects=True,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
            event_hooks={"request": [check_allowed]},
        )
        self._fallback_checked = plain or not insecure

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------

    def _creds(self) -> tuple[str, str] | None:
        with self._lock:
            if not self._loaded_credentials:
                self._credentials = load_credentials(self._auth_name)
                self._loaded_credentials = True
            return self._credentials

    def _check_scheme(self) -> None:
        """An insecure registry: HTTPS (unverified) when it answers, else HTTP."""
        if self._fallback_checked:
            return
        try:
            self._http.get(self.base + "/v2/", timeout=10.0)
        except httpx.TransportError:
            self.base = f"http://{self.host}"
        self._fallback_checked = True

    def _headers(self, scope: str) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get(scope)
            basic = self._basic
        if token:
            return {"Authorization": f"Bearer {token}"}
        if basic:
            creds = self._creds()
            if creds:
                raw = f"{creds[0]}:{creds[1]}".encode()
                return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _authenticate(self, response: httpx.Response, scope: str, what: str) -> None:
        scheme, params = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self._creds() is None:
                raise RegistryAuthError(
                    f"{self.host} wants credentials for {what}: run `docker login "
                    f"{self.host}` or add them to {docker_config_path()}"
                )
            with self._lock:
                self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryAuthError(f"{self.host} refused {what} (401, no challenge)")
        query = {"service": params.get("service", "")}
        if scope:
            query["scope"] = scope
        creds = self._creds()
        try:
            answer = self._http.get(
                params["realm"],
                params={k: v for k, v in query.items() if v},
                auth=httpx.BasicAuth(*creds) if creds else None,
            )
        except httpx.TransportError as exc:
            raise RegistryError(
                f"cannot reach the token service of {self.host}: {type(exc).__name__}"
            ) from None
        if answer.status_code in (401, 403):
            raise RegistryAuthError(
                f"{self.host}'s token service refused the credentials for {what}"
            )
        if answer.status_code != 200:
            raise RegistryError(
                f"{self.host}'s token service answered {answer.status_code}"
            )
        body = answer.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"{self.host}'s token service sent no token")
        with self._lock:
            self._tokens[scope] = str(token)

    @staticmethod
    def _pause(attempt: int, response: httpx.Response | None) -> None:
        delay = min(0.5 * 2**attempt, 8.0)
        if response is not None and response.headers.get("Retry-After", "").isdigit():
            delay = min(float(response.headers["Retry-After"]), 30.0)
        time.sleep(delay)

    def request(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        what: str,
        headers: dict[str, str] | None = None,
        content: bytes | Callable[[], Iterator[bytes]] | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        """Send one request with auth and retries; a response whose status is in
        ``ok`` (open, when ``stream``: the caller closes it), else an error.
        ``content`` as a callable gives a fresh body for each attempt."""
        self._check_scheme()
        if url.startswith("/"):
            url = self.base + url
        authed = False
        attempt = 0
        while True:
            body = content() if callable(content) else content
            request = self._http.build_request(
                method,
                url,
                headers={**(headers or {}), **self._headers(scope)},
                content=body,
            )
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                # A name that does not resolve will not resolve a second later.
                if attempt + 1 >= _RETRIES or "not known" in str(exc):
                    raise RegistryError(
                        f"cannot reach {self.host} for {what}: {type(exc).__name__}"
                        f" ({exc})"
                    ) from None
                log.info("retrying %s on %s: %s", what, self.host, exc)
                self._pause(attempt, None)
                attempt += 1
                continue
            status = response.status_code
            if status in ok:
                return response
            response.read()
            response.close()
            if status == 401 and not authed:
                self._authenticate(response, scope, what)
                authed = True
                continue
            if status in _TRANSIENT_STATUS and attempt + 1 < _RETRIES:
                log.info("retrying %s on %s: status %d", what, self.host, status)
                self._pause(attempt, response)
                attempt += 1
                continue
            raise self._error(response, what)

    def _error(self, response: httpx.Response, what: str) -> RegistryError:
        status = response.status_code
        detail = ""
        try:
            errors = response.json().get("errors") or []
            if errors:
                detail = f": {errors[0].get('code')} {errors[0].get('message', '')}"
        except (ValueError, AttributeError):
            pass
        if status in (401, 403):
            return RegistryAuthError(f"{self.host} refused {what} ({status}){detail}")
        if status == 404:
            return NotFoundInRegistry(f"{what}: not found on {self.host}{detail}")
        return RegistryError(f"{what} on {self.host} failed with {status}{detail}")

    # --- the API ----------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: the registry speaks the API (authentication aside)."""
        self.request("GET", "/v2/", scope="", what="the API check", ok=(200, 401))

    def get_manifest(self, repository: str, reference: str) -> Fetched:
        """A manifest or index by tag or digest; by digest, its bytes are checked."""
        what = f"manifest {repository}:{reference}"
        response = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scope=f"repository:{repository}:pull",
            what=what,
            headers={"Accept": ACCEPT},
        )
        data = response.content
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise BlobDigestMismatch(
                f"{what} from {self.host} has digest {digest}, not {reference}"
            )
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media not in MANIFEST_TYPES + INDEX_TYPES:
            try:
                media = json.loads(data).get("mediaType") or media
            except ValueError:
                pass
        return Fetched(data, media, digest)

    def fetch_blob(self, repository: str, digest: str, out: BinaryIO) -> int:
        """Stream the blob into ``out`` (positioned at its start; it is truncated
        and rewritten on a retry); its digest is checked; returns its size."""
        what = f"blob {digest[:19]} of {repository}"
        for attempt in range(_RETRIES):
            out.seek(0)
            out.truncate()
            hasher = hashlib.sha256()
            size = 0
            response = self.request(
                "GET",
                f"/v2/{repository}/blobs/{digest}",
                scope=f"repository:{repository}:pull",
                what=what,
                stream=True,
            )
            try:
                for chunk in response.iter_bytes(_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            except httpx.TransportError as exc:
                if attempt + 1 >= _RETRIES:
                    raise RegistryError(
                        f"{what}: download from {self.host} broke off: "
                        f"{type(exc).__name__}"
                    ) from None
                self._pause(attempt, None)
                continue
            finally:
                response.close()
            got = "sha256:" + hasher.hexdigest()
            if got != digest:
                raise BlobDigestMismatch(
                    f"{what} from {self.host} has digest {got}: refused"
                )
            return size
        raise AssertionError("unreachable")

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scope=f"repository:{repository}:pull",
            what=f"blob {digest[:19]} of {repository}",
            ok=(200, 404),
        )
        return response.status_code == 200

    def _push_scope(self, repository: str, source: str | None = None) -> str:
        scope = f"repository:{repository}:pull,push"
        if source and source != repository:
            scope += f" repository:{source}:pull"
        return scope

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Ask the registry to link ``source``'s blob into ``repository``
        (cross-repository mount); False when it would not."""
        response = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/?mount={digest}&from={source}",
            scope=self._push_scope(repository, source),
            what=f"mount of blob {digest[:19]} into {repository}",
            ok=(201, 202),
        )
        if response.status_code == 201:
            return True
        # 202: the registry opened an upload instead; drop it, the caller uploads.
        location = response.headers.get("Location")
        if location:
            try:
                self.request(
                    "DELETE",
                    self._absolute(location),
                    scope=self._push_scope(repository),
                    what="cancel of an upload",
                    ok=(200, 202, 204, 404),
                )
            except RegistryError:
                pass
        return False

    def _absolute(self, location: str) -> str:
        return location if "://" in location else self.base + location

    def upload_blob(
        self, repository: str, digest: str, size: int, open_blob: Callable[[], BinaryIO]
    ) -> None:
        """Upload a blob: one PUT when small, PATCH chunks then PUT when larger
        than ``upload_chunk``. ``open_blob`` opens it (again on a retry)."""
        scope = self._push_scope(repository)
        what = f"upload of blob {digest[:19]} to {repository}"
        response = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scope=scope,
            what=what,
            ok=(202,),
        )
        location = self._absolute(response.headers["Location"])
        with open_blob() as f:
            if size > self.upload_chunk:
                offset = 0
                while offset < size:
                    data = f.read(self.upload_chunk)
                    if not data:
                        raise RegistryError(f"{what}: the blob ended at byte {offset}")
                    end = offset + len(data) - 1
                    response = self.request(
                        "PATCH",
                        location,
                        scope=scope,
                        what=what,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{end}",
                            "Content-Length": str(len(data)),
                        },
                        content=data,
                        ok=(202,),
                    )
                    location = self._absolute(response.headers["Location"])
                    offset += len(data)
                body: bytes | Callable[[], Iterator[bytes]] = b""
            else:
                start = f.tell()

                def chunks() -> Iterator[bytes]:
                    f.seek(start)
                    while chunk := f.read(_CHUNK):
                        yield chunk

                body = chunks
            url = httpx.URL(location).copy_merge_params({"digest": digest})
            self.request(
                "PUT",
                str(url),
                scope=scope,
                what=what,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(0 if isinstance(body, bytes) else size),
                },
                content=body,
                ok=(201,),
            )

    def put_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str
    ) -> str:
        """PUT a manifest under a tag or digest; returns its digest."""
        self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._push_scope(repository),
            what=f"manifest {repository}:{reference}",
            headers={"Content-Type": media_type},
            content=data,
            ok=(201,),
        )
        return "sha256:" + hashlib.sha256(data).hexdigest()
