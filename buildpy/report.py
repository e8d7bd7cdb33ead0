"""What a build tells about itself after it ran: ``--metadata-file``, ``--graph``
and the listing of ``--dry-run``.

The metadata file has the keys ``docker buildx build --metadata-file`` writes
(``containerimage.digest``, ``containerimage.config.digest``,
``containerimage.descriptor``, ``image.name``) and buildpy's own under
``buildpy.*``: one entry per step (its cache key, whether it was cached and
why it was not, its start, end and wall time, the bytes it wrote) and the
critical path, the chain of steps whose times add up to the longest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildpy.build import BuildResult
from buildpy.engine import Engine
from buildpy.errors import UsageError
from buildpy.exporters import _qualified
from buildpy.images import MEDIA_MANIFEST
from solver.graph import BuildGraph, Vertex
from solver.scheduler import SolveResult, VertexRecord

GRAPH_FORMATS = {".dot": "dot", ".gv": "dot", ".json": "json"}


@dataclass(frozen=True)
class Step:
    """One vertex of the solve as the report shows it."""

    vertex: Vertex
    status: str  # "cached", "ran", "would run" (dry run) or "unused"
    record: VertexRecord | None
    bytes_written: int
    source: str | None = None  # the --cache-from a cached step's record came from

    @property
    def wall(self) -> float:
        r = self.record
        if r is None or r.started is None or r.ended is None:
            return 0.0
        return r.ended - r.started


def graph_format(path: Path) -> str:
    """The --graph format its file's extension names; a usage error otherwise."""
    try:
        return GRAPH_FORMATS[path.suffix.lower()]
    except KeyError:
        raise UsageError(
            f"--graph {path}: unknown extension {path.suffix!r}, expected .dot, "
            ".gv or .json"
        ) from None


def steps(engine: Engine | None, solved: SolveResult) -> list[Step]:
    """Every vertex of the solve's graph, inputs first."""
    graph = solved.graph
    assert graph is not None, "a SolveResult of Solver.solve has its graph"
    out = []
    for vertex in graph.topological():
        record = solved.records.get(vertex.digest)
        if record is None:
            status = "unused"
        elif record.cached:
            status = "cached"
        else:
            status = "ran" if record.started is not None else "would run"
        written = 0
        if engine is not None and status == "ran" and record is not None:
            written = _bytes_written(engine, record.result)
        source = None
        imported = None if engine is None else engine.imported
        if status == "cached" and record is not None and imported is not None:
            if imported.owns(record.result):  # buildpy.cacheio's placeholder
                source = imported.source_of(record.key)
        out.append(Step(vertex, status, record, written, source))
    return out


def _bytes_written(engine: Engine, result: str) -> int:
    """The bytes of the files a step wrote: the size of its snapshot's own
    directory (its upperdir), not of the chain below it."""
    if not result.startswith("step-") or not engine.snapshots.exists(result):
        return 0
    total = 0
    for top, dirs, files in os.walk(engine.snapshots.fs_path(result)):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:  # removed meanwhile: it no longer counts
                continue
    return total


def critical_path(graph: BuildGraph, by_digest: dict[str, Step]) -> list[Step]:
    """The chain of steps, each an input of the next, whose wall times add up
    to the most: what bounds the build's time however many --jobs run."""
    best: dict[str, tuple[float, list[Step]]] = {}
    for vertex in graph.topological():
        step = by_digest[vertex.digest]
        before = max(
            (best[i.digest] for i in vertex.inputs),
            key=lambda b: b[0],
            default=(0.0, []),
        )
        best[vertex.digest] = (before[0] + step.wall, [*before[1], step])
    total, path = max(best.values(), key=lambda b: b[0], default=(0.0, []))
    return [s for s in path if s.wall > 0] if total > 0 else []


def _name(vertex: Vertex) -> str:
    return vertex.meta.name or vertex.op.kind


def step_entry(step: Step) -> dict[str, Any]:
    r = step.record
    entry: dict[str, Any] = {
        "name": _name(step.vertex),
        "digest": step.vertex.digest,
        "cache_key": None if r is None else r.key,
        "cached": step.status == "cached",
        "status": step.status,
        "reason": None if r is None else r.miss_reason,
        "start": None if r is None else r.started,
        "end": None if r is None else r.ended,
        "wall_time": round(step.wall, 6),
        "bytes_written": step.bytes_written,
    }
    if step.vertex.meta.stage:
        entry["stage"] = step.vertex.meta.stage
    if step.source is not None:
        entry["cache_source"] = step.source
    return entry


def metadata(engine: Engine, result: BuildResult) -> dict[str, Any]:
    """The --metadata-file document."""
    out: dict[str, Any] = {}
    image = result.image
    if image is not None:
        out["containerimage.digest"] = image.manifest_digest
        out["containerimage.config.digest"] = image.config_digest
        out["containerimage.descriptor"] = {
            "mediaType": MEDIA_MANIFEST,
            "digest": image.manifest_digest,
            "size": engine.content.size(image.manifest_digest),
        }
        if result.names:
            # buildx writes the names fully qualified, as containerd stores them.
            out["image.name"] = ",".join(_qualified(n) for n in result.names)
    out.update(step_report(engine, result.solve))
    return out


def step_report(engine: Engine | None, solved: SolveResult) -> dict[str, Any]:
    """The ``buildpy.*`` keys of the metadata: the steps, the critical path,
    the cache's hits and misses. Without ``engine``, no step's bytes are
    counted (that walks each new snapshot: the build history does without)."""
    all_steps = steps(engine, solved)
    by_digest = {s.vertex.digest: s for s in all_steps}
    assert solved.graph is not None
    path = critical_path(solved.graph, by_digest)
    return {
        "buildpy.steps": [step_entry(s) for s in all_steps],
        "buildpy.critical_path": {
            "wall_time": round(sum(s.wall for s in path), 6),
            "steps": [_name(s.vertex) for s in path],
        },
        "buildpy.cache": {
            "hits": sum(s.status == "cached" for s in all_steps),
            "misses": sum(s.status in ("ran", "would run") for s in all_steps),
        },
    }


def graph_document(solved: SolveResult, fmt: str) -> str:
    """The solved graph as DOT or JSON, each vertex with its cache status and
    wall time; edges point from an input to the step that reads it."""
    all_steps = steps(None, solved)
    if fmt == "json":
        nodes = [
            {**step_entry(s), "inputs": [i.digest for i in s.vertex.inputs]}
            for s in all_steps
        ]
        return json.dumps({"vertices": nodes}, indent=2) + "\n"
    colours = {"cached": "lightblue", "ran": "orange", "would run": "orange"}
    lines = ["digraph build {", "  rankdir=TB;", "  node [shape=box, style=filled];"]
    for s in all_steps:
        label = f"{_name(s.vertex)}\\n{s.status}"
        if s.wall:
            label += f" {s.wall:.2f}s"
        colour = colours.get(s.status, "white")
        lines.append(
            f'  "{s.vertex.digest}" [label={_dot_string(label)}, fillcolor={colour}];'
        )
    for s in all_steps:
        for inp in s.vertex.inputs:
            lines.append(f'  "{inp.digest}" -> "{s.vertex.digest}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_string(text: str) -> str:
    # DOT quoted strings escape only the double quote; "\n" is kept as written.
    return '"' + text.replace('"', '\\"') + '"'


def dry_run_listing(solved: SolveResult) -> tuple[str, int]:
    """The --dry-run listing (one line per step the build needs) and how many
    steps would run."""
    lines = []
    misses = 0
    for s in steps(None, solved):
        if s.status == "unused" or s.record is None:
            continue
        if s.status == "cached":
            lines.append(f"CACHED  {_name(s.vertex)}")
        elif s.record.miss_reason is not None:
            misses += 1
            lines.append(f"RUN     {_name(s.vertex)}  ({s.record.miss_reason})")
    lines.append(f"{len(lines) - misses} cached, {misses} would run")
    return "\n".join(lines) + "\n", misses


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def after_build(engine: Engine, args: Any, result: BuildResult) -> None:
    """Write what the flags of ``buildpy build`` ask for once a build ended."""
    if getattr(args, "iidfile", None) and result.image is not None:
        # The config digest, with no newline, as docker writes it.
        write_atomically(Path(args.iidfile), result.image.config_digest)
    if getattr(args, "metadata_file", None):
        text = json.dumps(metadata(engine, result), indent=2) + "\n"
        write_atomically(Path(args.metadata_file), text)
    if getattr(args, "graph", None):
        path = Path(args.graph)
        write_atomically(path, graph_document(result.solve, graph_format(path)))
