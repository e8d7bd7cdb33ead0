"""Which ignore file a build reads (standard library only: the TCP client
chooses it too, buildpy/remoteclient.py).

``<Dockerfile>.dockerignore`` beside the Dockerfile wins, as in BuildKit; else
the context's ``.dockerignore``; else its ``.containerignore``, the name buildah
and podman read, so that a context made for them builds the same here. Docker's
names come first: where both exist, docker would read its own.
"""

from __future__ import annotations

from pathlib import Path


def ignore_file(context: Path, dockerfile: Path | None = None) -> Path | None:
    """The ignore file of ``context`` for ``dockerfile`` (None: a Dockerfile
    from stdin, or a context with no Dockerfile of its own), or None."""
    candidates = [context / ".dockerignore", context / ".containerignore"]
    if dockerfile is not None:
        candidates.insert(0, dockerfile.with_name(dockerfile.name + ".dockerignore"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


__all__ = ["ignore_file"]
