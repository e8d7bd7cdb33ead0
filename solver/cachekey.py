"""Cache keys: the digest that identifies a vertex's result.

Theory of operation
-------------------
A vertex's *cache key* is ``sha256:`` + the hex sha256 of
``graph.canonical_json`` over a JSON object with exactly these fields (declared
once, in ``KEY_FIELDS`` below, which both ``cache_key`` and its test read):

- ``schema``: ``CACHE_SCHEMA_VERSION``. Bump it whenever the encoding of a key
  changes (a field added, removed or encoded differently, an op's ``encode()``
  changing shape), so that no record written under the old encoding is ever
  found under the new one. It is a schema number, not the tool's version: a
  release that leaves the encoding alone keeps every record valid.
- ``op``: ``vertex.op.encode()``, every field of the op and its kind, actions
  included, so any change to the instruction changes the key.
- ``inputs``: the cache keys of ``vertex.inputs``, in input order. They are cache
  keys, not digests, so a change of content anywhere upstream reaches every
  vertex that reads it.
- ``content``: what ``Worker.content_checksum(vertex)`` returned: the checksum
  of the outside content the vertex reads that its op does not name (the
  context files a COPY selects), or null.

What never feeds a key (``NOT_IN_KEY``):

- ``vertex.meta`` (``VertexMeta``: name, stage, lines, ignore_cache): renaming a
  stage or moving an instruction must not invalidate anything, and --no-cache
  decides whether a record is read, not what it is filed under.
- ``vertex.digest``: the digests of the inputs are replaced by their cache keys.
- ``result``, the vertex's result: a key must be known before the vertex runs.
- the tool's version, the time, the host: the same inputs give the same key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from solver.graph import GraphError, Vertex, canonical_json, sha256_digest

CACHE_SCHEMA_VERSION = 3
"""Bump when the encoding of a cache key changes (see the module docstring)."""


@dataclass(frozen=True)
class KeyField:
    """One field of the JSON object a cache key is the sha256 of.

    ``value`` maps (vertex, input keys, content checksum) to the field's value.
    """

    name: str
    value: Callable[[Vertex, Sequence[str], str | None], Any]


# The one declaration of what a cache key covers; the module docstring describes
# each entry and tests/solver/test_cachekey.py checks that each one counts.
KEY_FIELDS: tuple[KeyField, ...] = (
    KeyField("schema", lambda vertex, inputs, content: CACHE_SCHEMA_VERSION),
    KeyField("op", lambda vertex, inputs, content: vertex.op.encode()),
    KeyField("inputs", lambda vertex, inputs, content: list(inputs)),
    KeyField("content", lambda vertex, inputs, content: content),
)

# What a reader might expect in a key but is left out on purpose (see above).
NOT_IN_KEY: tuple[str, ...] = ("vertex.meta", "vertex.digest", "result")


def key_material(
    vertex: Vertex, input_keys: Sequence[str], content: str | None
) -> dict[str, Any]:
    """The JSON object that ``cache_key`` hashes, one entry per ``KEY_FIELDS``."""
    if len(input_keys) != len(vertex.inputs):
        raise GraphError(
            f"cache key of {vertex!r}: got {len(input_keys)} input keys, "
            f"expected one per input ({len(vertex.inputs)})"
        )
    return {f.name: f.value(vertex, input_keys, content) for f in KEY_FIELDS}


def cache_key(vertex: Vertex, input_keys: Sequence[str], content: str | None) -> str:
    """The cache key of ``vertex``, given its inputs' cache keys (in input order)
    and its content checksum."""
    return sha256_digest(canonical_json(key_material(vertex, input_keys, content)))


@dataclass(frozen=True)
class KeyOrigin:
    """What a cache key was computed from, kept beside its record so that a later
    miss can say which part differs (CacheStore.explain_miss).

    The first three fields are what the key covers. The rest only serve the
    explanation and never feed a key: ``op`` is the op's encoding (to name the
    field, the build arg or the base image that changed), ``name`` the step as
    progress shows it, ``detail`` what the worker's ``content_detail`` gave (one
    entry per file read from the context: its path and what of it the key
    covers), so that a content change names the file.
    """

    op_digest: str
    input_keys: tuple[str, ...]
    content: str | None
    op: dict[str, Any] | None = None
    name: str = ""
    detail: dict[str, list[str]] | None = None


def op_digest(vertex: Vertex) -> str:
    """sha256 of the canonical encoding of the vertex's op alone."""
    return sha256_digest(canonical_json(vertex.op.encode()))


def key_origin(
    vertex: Vertex,
    input_keys: Sequence[str],
    content: str | None,
    detail: dict[str, list[str]] | None = None,
) -> KeyOrigin:
    return KeyOrigin(
        op_digest(vertex),
        tuple(input_keys),
        content,
        op=vertex.op.encode(),
        name=vertex.meta.name,
        detail=detail,
    )
