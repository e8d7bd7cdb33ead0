"""Cache keys: every field of KEY_FIELDS counts, VertexMeta never does."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

import solver.cachekey
from solver.cachekey import (
    CACHE_SCHEMA_VERSION,
    KEY_FIELDS,
    NOT_IN_KEY,
    cache_key,
    key_material,
)
from solver.graph import (
    Action,
    ContextSource,
    CopyAction,
    ExecOp,
    FileOp,
    GraphError,
    ImageSource,
    MkdirAction,
    MkfileAction,
    Op,
    ScratchSource,
    Vertex,
    VertexMeta,
)

KEY = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64

# One op of each kind, every optional field set to something, so that each field
# can be changed on its own.
SAMPLE_OPS: list[Op] = [
    ImageSource(ref="docker.io/library/busybox:latest", digest="sha256:" + "a" * 64),
    ContextSource(name="context", excludes=("*.log",)),
    ExecOp(args=("sh", "-c", "make"), env=("PATH=/bin",), cwd="/src", user="1000"),
    FileOp(
        actions=(
            CopyAction(sources=("src/",), dest="/app/", chown="app", chmod="0644"),
            MkdirAction(path="/app/data", owner="app"),
            MkfileAction(path="/app/x", data="hello\n"),
        )
    ),
]


def changed(value: Any) -> Any:
    """A different value of the same shape."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return "x"
    if isinstance(value, tuple):
        return (*value, "x")
    raise AssertionError(f"no variation for {value!r}")


def variations(obj: Op | Action) -> Iterator[tuple[str, Any]]:
    """(field path, obj with that one field changed), for every field, actions
    of a FileOp included."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, tuple) and value and isinstance(value[0], Action):
            for i, action in enumerate(value):
                for path, new in variations(action):
                    actions = (*value[:i], new, *value[i + 1 :])
                    yield (
                        f"{f.name}[{i}].{path}",
                        dataclasses.replace(obj, actions=actions),
                    )  # type: ignore[call-arg]
            continue
        yield f.name, dataclasses.replace(obj, **{f.name: changed(value)})  # type: ignore[arg-type]


def key_of(op: Op, content: str | None = None, inputs: int = 1) -> str:
    vertex = Vertex(op, tuple(Vertex(ScratchSource()) for _ in range(inputs)))
    return cache_key(vertex, [KEY] * inputs, content)


def test_material_has_exactly_the_declared_fields() -> None:
    vertex = Vertex(ExecOp(args=("true",)), (Vertex(ScratchSource()),))
    material = key_material(vertex, [KEY], "xxh3:1")
    assert list(material) == [f.name for f in KEY_FIELDS]
    assert material == {
        "schema": CACHE_SCHEMA_VERSION,
        "op": vertex.op.encode(),
        "inputs": [KEY],
        "content": "xxh3:1",
    }


def test_every_declared_field_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    op = ExecOp(args=("true",))
    base = key_of(op)

    def other_schema() -> str:
        monkeypatch.setattr(
            solver.cachekey, "CACHE_SCHEMA_VERSION", CACHE_SCHEMA_VERSION + 1
        )
        try:
            return key_of(op)
        finally:
            monkeypatch.undo()

    vary = {
        "schema": other_schema,
        "op": lambda: key_of(ExecOp(args=("false",))),
        "inputs": lambda: cache_key(
            Vertex(op, (Vertex(ScratchSource()),)), [OTHER], None
        ),
        "content": lambda: key_of(op, content="xxh3:2"),
    }
    # Adding a field to KEY_FIELDS fails here until it gets a variation.
    assert set(vary) == {f.name for f in KEY_FIELDS}
    for name, key in vary.items():
        assert key() != base, f"changing {name} left the cache key unchanged"


@pytest.mark.parametrize("op", SAMPLE_OPS, ids=lambda op: op.kind)
def test_every_field_of_every_op_changes_the_key(op: Op) -> None:
    base = key_of(op)
    seen = [path for path, new in variations(op)]
    assert seen, "the sample op has no fields"
    for path, new in variations(op):
        assert key_of(new) != base, f"{op.kind}.{path} does not change the cache key"


def test_the_kind_of_op_changes_the_key() -> None:
    assert key_of(ScratchSource(), inputs=0) != key_of(ContextSource(), inputs=0)


def test_input_order_and_count_matter() -> None:
    op = ExecOp(args=("true",))
    two = Vertex(op, (Vertex(ScratchSource()), Vertex(ContextSource())))
    assert cache_key(two, [KEY, OTHER], None) != cache_key(two, [OTHER, KEY], None)
    with pytest.raises(GraphError, match="got 1 input keys, expected one per input"):
        cache_key(two, [KEY], None)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(VertexMeta)])
def test_vertex_meta_never_changes_the_key(field: str) -> None:
    meta = VertexMeta(name="[build 2/4] RUN make", stage="build", lines=(3, 4))
    value = getattr(meta, field)
    other = (9, 9) if field == "lines" else changed(value)
    op = ExecOp(args=("make",))
    before = Vertex(op, (Vertex(ScratchSource()),), meta)
    after = Vertex(
        op, (Vertex(ScratchSource()),), dataclasses.replace(meta, **{field: other})
    )
    assert cache_key(before, [KEY], None) == cache_key(after, [KEY], None)


def test_the_docstring_names_every_field_and_every_exclusion() -> None:
    doc = solver.cachekey.__doc__ or ""
    for name in [f"``{f.name}``" for f in KEY_FIELDS] + [f"``{n}" for n in NOT_IN_KEY]:
        assert name in doc, f"the module docstring does not mention {name}"


def test_the_encoding_is_pinned() -> None:
    """A failure here means the key encoding changed: bump CACHE_SCHEMA_VERSION,
    then update the expected text."""
    vertex = Vertex(ExecOp(args=("true",)), (Vertex(ScratchSource()),))
    expected = (
        '{"content":"xxh3:1","inputs":["' + KEY + '"],'
        '"op":{"args":["true"],"cwd":"/","env":[],"kind":"exec","mounts":[],'
        '"network":"host","security":"sandbox","user":""},"schema":3}'
    )
    digest = "sha256:" + hashlib.sha256(expected.encode()).hexdigest()
    assert cache_key(vertex, [KEY], "xxh3:1") == digest
