"""--cache-to / --cache-from (issue 6): a cache exported by one store and imported
by another, clean one, through a directory, a registry, or an image's config."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildpy.cacheio import CACHE_CONFIG_MEDIA, INLINE_FIELD
from tests.buildpy.registry_server import Registry
from tests.conftest import Buildpy, unmount_all, write_context

DOCKERFILE = """\
FROM busybox AS builder
RUN echo builder-stuff > /b && echo more > /c
FROM busybox
COPY a.txt /a.txt
COPY --from=builder /b /b
RUN echo built > /built.txt
RUN cat /a.txt > /copy.txt
"""


@pytest.fixture
def other(busybox: Buildpy, tmp_path: Path) -> Iterator[Buildpy]:
    """A second, clean store holding the same busybox image (same digest), as a
    second CI runner that pulled the same base would."""
    store = Buildpy(tmp_path / "other-state")
    try:
        archive = tmp_path / "busybox.tar"
        busybox.run("save", "-o", archive, "busybox")
        store.run("load", "-i", archive)
        yield store
    finally:
        unmount_all(store.root)
        shutil.rmtree(store.root, ignore_errors=True)


def _context(tmp_path: Path, a: str = "one\n") -> Path:
    return write_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "a.txt": a})


def _steps(store: Buildpy, ctx: Path, *args: str, name: str = "m") -> dict[str, str]:
    """Build; each step's name -> its status (cached, ran)."""
    meta = ctx.parent / f"{name}.json"
    store.build(ctx, "--metadata-file", meta, *args)
    doc = json.loads(meta.read_text())
    return {
        s["name"]: s["status"]
        for s in doc["buildpy.steps"]
        if s["status"] != "unused" and not s["name"].startswith("[internal]")
    }


def _inspect(store: Buildpy, name: str) -> dict[str, Any]:
    return json.loads(store.run("inspect", name).stdout)


def _image(store: Buildpy, name: str) -> tuple[str, list[str]]:
    """(image ID, layer digests) of ``name`` in the store."""
    doc = _inspect(store, name)[0]
    return doc["Id"], [layer["digest"] for layer in doc["Manifest"]["layers"]]


def _description(cache_dir: Path) -> dict[str, Any]:
    index = json.loads((cache_dir / "index.json").read_text())
    blobs = cache_dir / "blobs" / "sha256"
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((blobs / digest).read_text())
    assert manifest["config"]["mediaType"] == CACHE_CONFIG_MEDIA
    config = manifest["config"]["digest"].removeprefix("sha256:")
    return json.loads((blobs / config).read_text())


def _blobs(store: Buildpy) -> set[str]:
    return {"sha256:" + p.name for p in (store.root / "blobs" / "sha256").iterdir()}


def test_local_export_import_runs_nothing_and_gives_the_same_image(
    busybox: Buildpy, other: Buildpy, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    cache = tmp_path / "cache"
    first = _steps(busybox, ctx, "-t", "app", "--cache-to", f"type=local,dest={cache}")
    assert "ran" in first.values()
    assert (cache / "oci-layout").is_file() and (cache / "index.json").is_file()

    second = _steps(
        other, ctx, "-t", "app", "--cache-from", f"type=local,src={cache}", name="m2"
    )
    assert set(second.values()) == {"cached"}, second
    # Same image ID and layers as the first store's.
    assert _image(other, "app") == _image(busybox, "app")
    # The metadata names the cache each hit came from.
    doc = json.loads((ctx.parent / "m2.json").read_text())
    sources = {
        s.get("cache_source")
        for s in doc["buildpy.steps"]
        if s["status"] == "cached" and not s["name"].startswith("[internal]")
    }
    assert sources == {f"type=local,src={cache}"}


def test_only_needed_layers_are_fetched(
    busybox: Buildpy, other: Buildpy, tmp_path: Path
) -> None:
    """mode=max carries the builder stage's layer, but a build whose final steps
    are all hits never reads that stage's result, so it fetches none of it."""
    ctx = _context(tmp_path)
    cache = tmp_path / "cache"
    busybox.build(ctx, "--cache-to", f"type=local,dest={cache},mode=max")
    description = _description(cache)
    builder = [
        r
        for r in description["records"].values()
        if "[builder 2/2]" in r["origin"]["name"]
    ]
    assert len(builder) == 1
    builder_layer = builder[0]["chain"][-1]["diffID"]
    builder_blob = description["layers"][builder_layer]["digest"]
    before = _blobs(other)

    steps = _steps(other, ctx, "-t", "app", "--cache-from", f"type=local,src={cache}")
    assert set(steps.values()) == {"cached"}, steps
    fetched = _blobs(other) - before
    assert builder_blob not in fetched and builder_layer not in fetched
    # What was fetched is the image's own new layers (gzip and unpacked), plus
    # the image's config and manifest: nothing else.
    # (the base image's layer was there before).
    wanted = set(_image(other, "app")[1]) - before
    gz = {description["layers"][d]["digest"] for d in wanted}
    assert gz <= fetched
    assert len(fetched - gz - wanted) == 2  # config and manifest


def test_mode_min_leaves_out_the_builder_stage_and_max_has_it(
    busybox: Buildpy, other: Buildpy, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    small, full = tmp_path / "min", tmp_path / "max"
    busybox.build(
        ctx,
        "--cache-to",
        f"type=local,dest={small}",
        "--cache-to",
        f"type=local,dest={full},mode=max",
    )
    names = lambda d: {r["origin"]["name"] for r in _description(d)["records"].values()}  # noqa: E731
    # (the FROM busybox both stages share is named after the first stage)
    assert not any("[builder 2/2]" in n for n in names(small))
    assert any("[builder 2/2]" in n for n in names(full))

    with_min = _steps(
        other, ctx, "--target", "builder", "--cache-from", f"type=local,src={small}"
    )
    assert "ran" in with_min.values()
    third = Buildpy(tmp_path / "third")
    try:
        third.run("load", "-i", tmp_path / "busybox.tar")
        with_max = _steps(
            third,
            ctx,
            "--target",
            "builder",
            "--cache-from",
            f"type=local,src={full}",
            name="m3",
        )
        assert set(with_max.values()) == {"cached"}, with_max
    finally:
        unmount_all(third.root)
        shutil.rmtree(third.root, ignore_errors=True)


def test_a_changed_file_makes_exactly_its_dependent_steps_miss(
    busybox: Buildpy, other: Buildpy, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    cache = tmp_path / "cache"
    busybox.build(ctx, "--cache-to", f"type=local,dest={cache},mode=max")
    (ctx / "a.txt").write_text("two\n")
    steps = _steps(other, ctx, "--cache-from", f"type=local,src={cache}")
    ran = {n for n, s in steps.items() if s == "ran"}
    assert ran == {
        "[stage-1 2/5] COPY a.txt /a.txt",
        "[stage-1 3/5] COPY --from=builder /b /b",
        "[stage-1 4/5] RUN echo built > /built.txt",
        "[stage-1 5/5] RUN cat /a.txt > /copy.txt",
    }, steps
    # The builder stage is read (COPY --from) and comes from the cache.
    assert steps["[builder 2/2] RUN echo builder-stuff > /b && echo more > /c"] == (
        "cached"
    )
    out = tmp_path / "out"
    other.build(ctx, "--cache-from", f"type=local,src={cache}", "-o", out)
    assert (out / "copy.txt").read_text() == "two\n"
    assert (out / "b").read_text() == "builder-stuff\n"


def test_bad_flags_exit_2(busybox: Buildpy, tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    for flag, value in [
        ("--cache-to", "type=gha"),
        ("--cache-to", "type=local"),
        ("--cache-to", "type=inline,mode=max"),
        ("--cache-to", "type=local,dest=x,mode=all"),
        ("--cache-from", "type=local,dest=x"),
    ]:
        proc = busybox.build(ctx, flag, value, check=False)
        assert proc.returncode == 2, (value, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert flag in lines[-1] and value in lines[-1], proc.stderr


def test_an_unreadable_cache_is_a_warning(busybox: Buildpy, tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text("{not json")
    missing = tmp_path / "missing"
    proc = busybox.build(
        ctx,
        "--cache-from",
        f"type=local,src={missing}",
        "--cache-from",
        f"type=local,src={broken}",
    )
    output = proc.stdout + proc.stderr
    warnings = [ln for ln in output.splitlines() if ln.startswith("WARN:")]
    assert any(f"src={missing}" in w and "does not exist" in w for w in warnings)
    assert any(f"src={broken}" in w and "cannot be read" in w for w in warnings)
    assert "ERROR" not in output and "RUN cat /a.txt > /copy.txt\n#" in output


def test_no_secret_in_the_cache(busybox: Buildpy, tmp_path: Path) -> None:
    value = "s3cr3t-value-0d1f9"
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            "RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /len\n"
            "RUN --mount=type=cache,target=/cache wc -c < /len > /cache/n\n",
            "secret.txt": value,
        },
    )
    # The context holds the secret's file too, but no step copies it.
    (ctx / ".dockerignore").write_text("secret.txt\n")
    cache = tmp_path / "cache"
    busybox.build(
        ctx,
        "--secret",
        f"id=tok,src={ctx / 'secret.txt'}",
        "--cache-to",
        f"type=local,dest={cache},mode=max,cache-mounts=true",
    )
    blobs = list((cache / "blobs" / "sha256").iterdir())
    assert len(blobs) >= 4
    for blob in blobs:
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        assert value.encode() not in data, blob


def test_cache_mounts_travel_with_the_cache(
    busybox: Buildpy, other: Buildpy, tmp_path: Path
) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\nCOPY a.txt /a.txt\n"
            "RUN --mount=type=cache,target=/cache "
            "sh -c 'ls /cache > /seen.txt; cp /a.txt /cache/from-$(cat /a.txt)'\n",
            "a.txt": "one",
        },
    )
    cache = tmp_path / "cache"
    busybox.build(ctx, "--cache-to", f"type=local,dest={cache},cache-mounts=true")
    (ctx / "a.txt").write_text("two")
    out = tmp_path / "out"
    other.build(
        ctx, "--cache-from", f"type=local,src={cache},cache-mounts=true", "-o", out
    )
    assert (out / "seen.txt").read_text().split() == ["from-one"]
    # Without the option the cache mount starts empty.
    bare = tmp_path / "bare"
    (ctx / "a.txt").write_text("three")
    third = Buildpy(tmp_path / "third")
    try:
        third.run("load", "-i", tmp_path / "busybox.tar")
        third.build(ctx, "--cache-from", f"type=local,src={cache}", "-o", bare)
        assert (bare / "seen.txt").read_text() == ""
    finally:
        unmount_all(third.root)
        shutil.rmtree(third.root, ignore_errors=True)


def _skopeo_raw(ref: str) -> dict[str, Any]:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is installed by .ci/run")
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def test_registry_export_import(
    busybox: Buildpy, other: Buildpy, registry: Registry, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    ref = f"{registry.host}/share/cache:{tmp_path.name[-12:].lower()}"
    busybox.build(ctx, "-t", "app", "--cache-to", f"type=registry,ref={ref},mode=max")
    manifest = _skopeo_raw(ref)
    assert manifest["config"]["mediaType"] == CACHE_CONFIG_MEDIA
    assert manifest["layers"]

    steps = _steps(other, ctx, "-t", "app", "--cache-from", f"type=registry,ref={ref}")
    assert set(steps.values()) == {"cached"}, steps
    assert _image(other, "app") == _image(busybox, "app")


@pytest.mark.parametrize(
    "asked",
    [
        ("--cache-to", "type=inline"),
        ("--build-arg", "BUILDKIT_INLINE_CACHE=1"),  # BuildKit's older spelling
    ],
)
def test_inline_cache_in_a_pushed_image(
    busybox: Buildpy,
    other: Buildpy,
    registry: Registry,
    tmp_path: Path,
    asked: tuple[str, str],
) -> None:
    ctx = _context(tmp_path)
    ref = f"{registry.host}/share/app:{tmp_path.name[-12:].lower()}"
    pushed = busybox.build(ctx, "-t", ref, *asked, "--push").stderr
    assert "was not used" not in pushed  # the builder's arg, not the Dockerfile's
    config = _inspect(busybox, ref)
    assert INLINE_FIELD in json.dumps(config)

    # A bare --cache-from REF means type=registry,ref=REF, as in buildx.
    steps = _steps(other, ctx, "-t", "app", "--cache-from", ref)
    assert set(steps.values()) == {"cached"}, steps
    assert _image(other, "app")[1] == _image(busybox, ref)[1]
