"""Image references as docker reads them: ``busybox`` is
``docker.io/library/busybox:latest``; ``host:5000/app@sha256:...`` names a
registry, a repository and a digest.

A first path component is a registry host when it holds a dot or a colon or is
``localhost``; otherwise the registry is Docker Hub, and a name of one component
lives under ``library/`` there. The local store keeps the short ("familiar")
form that ``docker images`` shows; the registry client needs the full one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buildpy.errors import UsageError

DOCKER_HUB = "docker.io"
# Docker Hub's API is not served at docker.io itself.
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[a-zA-Z0-9.-]+|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    """One image reference, split; ``tag`` is None only when ``digest`` is set."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Read ``text`` as docker does; UsageError when it is no reference."""
        rest, _, digest = text.partition("@")
        name, tag = rest, None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            name, _, tag = rest.rpartition(":")
        first, sep, remainder = name.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, remainder
        else:
            registry, repository = DOCKER_HUB, name
        if registry in ("index.docker.io", "registry-1.docker.io"):
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in repository:
            repository = "library/" + repository
        if (
            not _HOST.match(registry)
            or not _REPOSITORY.match(repository)
            or (tag is not None and not _TAG.match(tag))
            or (digest and not _DIGEST.match(digest))
        ):
            raise UsageError(
                f"invalid reference format: {text!r} "
                "(expected [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST])"
            )
        if tag is None and not digest:
            tag = "latest"
        return cls(registry, repository, tag, digest or None)

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in the registry API: the digest, else the
        tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """registry/repository, fully qualified."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def familiar(self) -> str:
        """The short form the local store and ``docker images`` use."""
        text = str(self)
        if self.registry == DOCKER_HUB:
            text = text.removeprefix(DOCKER_HUB + "/").removeprefix("library/")
        return text

    def with_registry(self, registry: str) -> Reference:
        """The same repository and tag on another registry (a mirror)."""
        return Reference(registry, self.repository, self.tag, self.digest)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)


def is_local_host(host: str) -> bool:
    """Registries on the loopback interface speak plain HTTP, as docker allows."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if host.startswith("[") and "]" in host:
        name = host[1 : host.index("]")]
    return name in ("localhost", "::1") or name.startswith("127.")
