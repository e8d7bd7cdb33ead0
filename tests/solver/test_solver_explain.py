"""Every miss explained: what explain_miss says for each part of a key that
changed, as plain progress and the report show it."""

from __future__ import annotations

from solver.cachekey import cache_key, key_origin
from solver.cachestore import CacheStore
from solver.explain import MAX_FILES, env_changes, file_changes
from solver.graph import (
    ContextSource,
    CopyAction,
    ExecOp,
    FileOp,
    ImageSource,
    Vertex,
    VertexMeta,
)

OLD_IMAGE = "sha256:" + "a" * 64
NEW_IMAGE = "sha256:" + "b" * 64


def put(
    store: CacheStore, vertex: Vertex, inputs: list[str], content=None, detail=None
):
    key = cache_key(vertex, inputs, content)
    store.put(key, "snap", key_origin(vertex, inputs, content, detail))
    return key


def test_a_changed_file_is_named_with_both_checksums() -> None:
    old = {"a.txt": ["file", "1a2b3c4d5e6f", "644"], "b.txt": ["file", "99", "644"]}
    new = {"a.txt": ["file", "3c4d5e6f7a8b", "644"], "b.txt": ["file", "99", "644"]}
    assert file_changes(old, new) == [
        "file a.txt changed (xxh3 1a2b3c4d.. -> 3c4d5e6f..)"
    ]


def test_added_removed_mode_and_type_changes() -> None:
    old = {
        "gone": ["file", "1", "644"],
        "run.sh": ["file", "2", "644"],
        "lib": ["dir", "", "755"],
        "cur": ["symlink", "v1", "777"],
    }
    new = {
        "new": ["file", "3", "644"],
        "run.sh": ["file", "2", "755"],
        "lib": ["symlink", "lib64", "777"],
        "cur": ["symlink", "v2", "777"],
    }
    assert file_changes(old, new) == [
        "symlink cur changed (v1 -> v2)",
        "file gone removed",
        "lib changed from dir to symlink",
        "file new added",
        "mode of run.sh changed (644 -> 755)",
    ]


def test_the_top_of_a_copied_directory_is_named_dot() -> None:
    old = {"a.txt": ["file", "1", "644"]}
    new = {"": ["dir", "", "755"], "a.txt": ["file", "1", "644"]}
    assert file_changes(old, new) == ["dir . added"]
    assert file_changes(new, {**new, "": ["dir", "", "700"]}) == [
        "mode of . changed (755 -> 700)"
    ]


def test_build_args_and_env_are_named_with_old_and_new_values() -> None:
    old = ["PATH=/bin", "VERSION=1.0", "DEBUG=1"]
    new = ["PATH=/usr/bin", "VERSION=2.0", "EXTRA=x"]
    assert env_changes(old, new, build_args={"VERSION", "EXTRA", "DEBUG"}) == [
        "build arg DEBUG unset (was 1)",
        "build arg EXTRA set (x)",
        "env PATH changed (/bin -> /usr/bin)",
        "build arg VERSION changed (1.0 -> 2.0)",
    ]


def copy_vertex() -> Vertex:
    base = Vertex(ImageSource("busybox:latest", OLD_IMAGE))
    context = Vertex(ContextSource())
    op = FileOp((CopyAction(("a.txt",), "/app/"),))
    return Vertex(op, (base, context), VertexMeta(name="[2/2] COPY a.txt /app/"))


def test_store_names_the_file_that_changed(store: CacheStore) -> None:
    vertex = copy_vertex()
    inputs = ["sha256:base", "sha256:ctx"]
    files = {f"f{i}": ["file", f"{i:08x}", "644"] for i in range(MAX_FILES + 2)}
    put(store, vertex, inputs, "sha256:c1", files)
    changed = {k: ["file", "ffffffff", "644"] for k in files}
    reason = store.explain_miss(vertex, inputs, "sha256:c2", changed)
    assert reason == (
        "file f0 changed (xxh3 00000000.. -> ffffffff..); "
        "file f1 changed (xxh3 00000001.. -> ffffffff..); "
        "file f2 changed (xxh3 00000002.. -> ffffffff..); and 2 more files"
    )


def test_store_names_the_base_image_digests(store: CacheStore) -> None:
    old_base = Vertex(ImageSource("busybox:latest", OLD_IMAGE))
    new_base = Vertex(ImageSource("busybox:latest", NEW_IMAGE))
    old_key = put(store, old_base, [])
    new_key = cache_key(new_base, [], None)
    meta = VertexMeta(name="[2/2] RUN make")
    old_run = Vertex(ExecOp(("make",)), (old_base,), meta)
    new_run = Vertex(ExecOp(("make",)), (new_base,), meta)
    put(store, old_run, [old_key])
    assert store.explain_miss(new_run, [new_key], None) == (
        "base image busybox:latest changed"
        " (sha256:aaaaaaaaaaaa.. -> sha256:bbbbbbbbbbbb..)"
    )


def test_a_build_arg_and_a_parent_both_named(store: CacheStore) -> None:
    parent = Vertex(ExecOp(("p",)), meta=VertexMeta(name="[1/2] RUN p"))
    meta = VertexMeta(name="[2/2] RUN make")
    old = Vertex(ExecOp(("make",), env=("V=1",)), (parent,), meta)
    new = Vertex(ExecOp(("make",), env=("V=2",)), (parent,), meta)
    put(store, old, ["sha256:p1"])
    assert (
        store.explain_miss(new, ["sha256:p2"], None, build_args={"V"})
        == 'parent step "[1/2] RUN p" changed; build arg V changed (1 -> 2)'
    )
    assert (
        store.explain_miss(new, ["sha256:p1"], None, build_args={"V"})
        == "build arg V changed (1 -> 2)"
    )
