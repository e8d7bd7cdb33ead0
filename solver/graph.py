"""The build graph: ops, vertices and their digests.

Theory of operation
-------------------
An *op* says what a step does (run a process, copy files, name a base image). A
*vertex* is an op together with its inputs, which are vertices too, so a graph is
a set of vertices reachable from one final vertex. Ops are frozen value types;
their ``encode()`` gives the canonical form that a digest is computed over.

A vertex's *digest* is sha256 over the canonical JSON of its op and the digests of
its inputs, in order. It identifies the vertex inside one solve (two stages that
run the same step on the same input share one vertex) but it is not a cache key:
``FROM busybox`` names an image by its resolved manifest digest, which the
frontend pins into the op, yet a vertex that reads the build context does not
know the content it will read. The solver computes cache keys (solver.cachekey)
from digests plus the content checksums that the worker reports.

What a digest covers is exactly what ``encode()`` returns. ``VertexMeta`` (the
display name, the stage, the Dockerfile lines) never enters a digest: renaming a
stage or moving an instruction to another line must not invalidate anything.

Inputs by op:
- ImageSource, ScratchSource, ContextSource, HttpSource, GitSource: no inputs.
- ExecOp: inputs[0] is the root filesystem the process runs on; a mount's
  ``input`` names a further input (another stage, an image, the context).
- FileOp: inputs[0] is the filesystem the actions change; a CopyAction reads
  from inputs[action.source] (1 or more: the context or another stage's root).

``BuildGraph`` orders the vertices with the standard library's graphlib, not
networkx: every build sorts its graph, and importing networkx cost every
command 90 ms, a quarter of a no-op rebuild without the daemon (0.37 s ->
0.28 s). The order is the one networkx's lexicographical topological sort
gives (a test holds it to that); ``to_networkx`` gives the networkx view for
analysis and export, and imports networkx then.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from graphlib import TopologicalSorter
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import networkx as nx


class GraphError(Exception):
    """Misuse of the graph types: a bug in the caller, never the user's fault."""


def canonical_json(value: Any) -> bytes:
    """The one encoding that digests are computed over: sorted keys, no blanks."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Op:
    """Base of every op. Subclasses are frozen dataclasses of plain values."""

    kind: ClassVar[str] = "op"

    def encode(self) -> dict[str, Any]:
        """The canonical form of the op: every field, plus the op's kind."""
        return _encode_fields(self)


def _encode_fields(value: Op | Action) -> dict[str, Any]:
    encoded: dict[str, Any] = {"kind": value.kind}
    for f in fields(value):
        encoded[f.name] = _encode_value(getattr(value, f.name))
    return encoded


def _encode_value(value: Any) -> Any:
    if isinstance(value, Op | Action):
        return value.encode()
    if isinstance(value, tuple | list):
        return [_encode_value(v) for v in value]
    return value


# --- sources -------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSource(Op):
    """A base image from the local store, pinned to its manifest digest."""

    kind: ClassVar[str] = "image"
    ref: str
    digest: str


@dataclass(frozen=True)
class ScratchSource(Op):
    """The empty filesystem of ``FROM scratch``."""

    kind: ClassVar[str] = "scratch"


@dataclass(frozen=True)
class ContextSource(Op):
    """The build context. Its result is the context directory itself, not a
    snapshot; it is never cached. ``excludes`` holds the .dockerignore patterns
    in order (a leading ``!`` re-includes)."""

    kind: ClassVar[str] = "context"
    name: str = "context"
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HttpSource(Op):
    """A remote file of ``ADD <url>``: its result holds ``/filename`` alone.
    ``checksum`` (ADD --checksum) pins the content, so that the op's encoding
    covers it; without it the worker reports the content as a checksum."""

    kind: ClassVar[str] = "http"
    url: str
    filename: str
    checksum: str | None = None


@dataclass(frozen=True)
class GitSource(Op):
    """A git repository of ``ADD <git url>``: its result holds the files of
    ``subdir`` at ``ref`` (with ``.git`` when ``keep_git_dir``). ``checksum``
    (ADD --checksum) pins the commit; without it the worker reports the commit
    the ref names as a checksum."""

    kind: ClassVar[str] = "git"
    remote: str
    ref: str = ""
    subdir: str = ""
    keep_git_dir: bool = False
    checksum: str | None = None


# --- actions of a FileOp -------------------------------------------------------


@dataclass(frozen=True)
class Action:
    kind: ClassVar[str] = "action"

    def encode(self) -> dict[str, Any]:
        return _encode_fields(self)


@dataclass(frozen=True)
class CopyAction(Action):
    """COPY or ADD of ``sources`` (paths or wildcards, relative to the source
    input's root) to ``dest`` (absolute; a trailing ``/`` means a directory).

    ``chown`` is ``user[:group]`` as written (names are resolved against the
    destination's /etc/passwd when the op runs); ``chmod`` an octal string.
    ``unpack`` is ADD's rule: a local tar archive source is extracted.
    ``source`` is the index of the op input to read from.
    ``parents`` is COPY --parents: each matched source lands at ``dest`` joined
    with its path as written (wildcards as matched), relative to the source
    root, or to the pivot when the source holds a ``/./`` (only what follows
    the pivot is kept); ``dest`` is then always a directory.
    """

    kind: ClassVar[str] = "copy"
    sources: tuple[str, ...]
    dest: str
    source: int = 1
    chown: str | None = None
    chmod: str | None = None
    unpack: bool = False
    excludes: tuple[str, ...] = ()
    parents: bool = False


@dataclass(frozen=True)
class MkdirAction(Action):
    """``mkdir -p`` of an absolute path, as WORKDIR does."""

    kind: ClassVar[str] = "mkdir"
    path: str
    mode: int = 0o755
    owner: str | None = None


@dataclass(frozen=True)
class MkfileAction(Action):
    """Write a file with the given text (heredoc sources of COPY)."""

    kind: ClassVar[str] = "mkfile"
    path: str
    data: str
    mode: int = 0o644
    owner: str | None = None


# --- ops that change a filesystem ----------------------------------------------


@dataclass(frozen=True)
class ExecMount(Action):
    """One ``RUN --mount``. ``type`` is bind, cache, tmpfs, secret or ssh.

    ``input`` is the index of the op input a bind mount (or a cache mount's
    ``from=``) reads, ``source`` the path inside it. Secrets and ssh sockets are
    named by ``id`` only: their content never enters the op, so never a key.
    """

    kind: ClassVar[str] = "mount"
    type: str
    target: str
    input: int | None = None
    source: str = ""
    readonly: bool = True
    id: str = ""
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    required: bool = False
    env: str = ""


@dataclass(frozen=True)
class ExecOp(Op):
    """Run a process on inputs[0] and keep what it writes.

    ``env`` is the full environment the process sees, ``KEY=VALUE`` in order;
    ``user`` is ``user[:group]`` as the stage's USER set it ("" is root);
    ``security`` is "sandbox" or "insecure" (``RUN --security``);
    ``extra_hosts`` are (name, address) lines added to /etc/hosts (``build
    --add-host``); ``shm_size`` is /dev/shm's size in bytes, 0 for the default
    (``--shm-size``); ``ulimits`` are (name, soft, hard), -1 for unlimited
    (``--ulimit``).
    """

    kind: ClassVar[str] = "exec"
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    network: str = "host"
    mounts: tuple[ExecMount, ...] = ()
    security: str = "sandbox"
    extra_hosts: tuple[tuple[str, str], ...] = ()
    shm_size: int = 0
    ulimits: tuple[tuple[str, int, int], ...] = ()

    # Fields added after the cache's first records: left out of the encoding
    # when unset, so a step without them keeps the key it had, and the caches
    # made before stay good.
    _LATER: ClassVar[tuple[str, ...]] = ("extra_hosts", "shm_size", "ulimits")

    def encode(self) -> dict[str, Any]:
        encoded = super().encode()
        for name in self._LATER:
            if not getattr(self, name):
                del encoded[name]
        return encoded


@dataclass(frozen=True)
class FileOp(Op):
    """Filesystem edits without a container, applied in order to inputs[0]."""

    kind: ClassVar[str] = "file"
    actions: tuple[Action, ...]


# --- vertices ------------------------------------------------------------------


@dataclass(frozen=True)
class VertexMeta:
    """What a person sees of a vertex; never part of a digest or cache key.

    ``name`` is the progress line (``[build 2/4] RUN make``); ``stage`` the
    stage name or index; ``lines`` the 1-based (first, last) Dockerfile lines
    the step came from, for error frames; ``ignore_cache`` is --no-cache.
    """

    name: str = ""
    stage: str = ""
    lines: tuple[int, int] | None = None
    ignore_cache: bool = False


@dataclass(frozen=True, eq=False)
class Vertex:
    """An op with its inputs. Equal when their digests are equal."""

    op: Op
    inputs: tuple[Vertex, ...] = ()
    meta: VertexMeta = field(default_factory=VertexMeta)

    @cached_property
    def digest(self) -> str:
        return sha256_digest(
            canonical_json(
                {"op": self.op.encode(), "inputs": [v.digest for v in self.inputs]}
            )
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vertex) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Vertex({self.op.kind}, {self.digest[7:19]}, {self.meta.name!r})"


def reachable(final: Vertex) -> Iterator[Vertex]:
    """``final`` and every vertex below it, each once (by digest)."""
    seen: set[str] = set()
    stack = [final]
    while stack:
        vertex = stack.pop()
        if vertex.digest in seen:
            continue
        seen.add(vertex.digest)
        yield vertex
        stack.extend(vertex.inputs)


class BuildGraph:
    """The vertices reachable from one or more final vertices, as a DAG.

    Edges point from an input to the vertex that reads it, so a topological order
    is an order in which vertices can run. Vertices with equal digests are one
    node: the first one added keeps its meta.
    """

    def __init__(self, *finals: Vertex) -> None:
        self._vertices: dict[str, Vertex] = {}
        self._readers: dict[str, list[str]] = {}  # digest -> its readers' digests
        self._order: list[Vertex] | None = None  # topological(), until add()
        self.finals: tuple[Vertex, ...] = ()
        for final in finals:
            self.add(final)

    def add(self, final: Vertex) -> None:
        for vertex in reachable(final):
            if vertex.digest in self._vertices:
                continue
            self._vertices[vertex.digest] = vertex
            for inp in dict.fromkeys(i.digest for i in vertex.inputs):
                self._readers.setdefault(inp, []).append(vertex.digest)
        self.finals = (*self.finals, self.vertex(final.digest))
        self._order = None

    def vertex(self, digest: str) -> Vertex:
        try:
            return self._vertices[digest]
        except KeyError:
            raise GraphError(f"no vertex {digest} in the graph") from None

    def __contains__(self, vertex: Vertex) -> bool:
        return vertex.digest in self._vertices

    def __len__(self) -> int:
        return len(self._vertices)

    def topological(self) -> list[Vertex]:
        """Every vertex, inputs before the vertices that read them; of the
        vertices ready at each point, the smallest digest first, so that the
        order is the same on every run."""
        if self._order is None:  # a solve asks several times
            sorter = TopologicalSorter(
                {d: [i.digest for i in v.inputs] for d, v in self._vertices.items()}
            )
            sorter.prepare()
            ready = list(sorter.get_ready())
            heapq.heapify(ready)
            order: list[Vertex] = []
            while ready:
                digest = heapq.heappop(ready)
                order.append(self._vertices[digest])
                sorter.done(digest)
                for freed in sorter.get_ready():
                    heapq.heappush(ready, freed)
            self._order = order
        return list(self._order)

    def inputs(self, vertex: Vertex) -> list[Vertex]:
        return [self.vertex(inp.digest) for inp in vertex.inputs]

    def readers(self, vertex: Vertex) -> list[Vertex]:
        """The vertices that take this one as an input."""
        return [self.vertex(d) for d in self._readers.get(vertex.digest, [])]

    def to_networkx(self) -> nx.DiGraph:
        """The graph as a networkx DiGraph, for analysis and export: nodes are
        digests (each with its ``vertex``), edges go from an input to its
        reader."""
        import networkx as nx

        g = nx.DiGraph()
        for digest, vertex in self._vertices.items():
            g.add_node(digest, vertex=vertex)
        for digest, readers in self._readers.items():
            g.add_edges_from((digest, reader) for reader in readers)
        return g
