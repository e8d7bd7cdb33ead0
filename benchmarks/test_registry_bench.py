"""Registry throughput and layer compression (issue 6).

    python3 -m pytest benchmarks/test_registry_bench.py --benchmark-only \
        --benchmark-columns=min,mean,max,rounds

The image: one layer of BENCH_IMAGE_MB (default 500) MB, half random bytes and
half text, so that compression has work to do and something to gain.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from snapshotter.compression import compress
from tests.buildpy.registry_server import Registry, running_registry
from tests.conftest import Buildpy, unmount_all

SIZE_MB = int(os.environ.get("BENCH_IMAGE_MB", "500"))
_round = count()


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buildpy]:
    work = tmp_path_factory.mktemp("bench-image")
    rootfs = work / "rootfs"
    rootfs.mkdir()
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    for i in range(SIZE_MB // 2):
        (rootfs / f"rand-{i}").write_bytes(os.urandom(1 << 20))
        (rootfs / f"text-{i}.txt").write_bytes(line * ((1 << 20) // len(line)))
    store = Buildpy(work / "state")
    try:
        store.run("import", rootfs, "big:1")
        shutil.rmtree(rootfs)
        yield store
    finally:
        unmount_all(store.root)
        shutil.rmtree(work, ignore_errors=True)


def test_push_throughput(benchmark, big_image: Buildpy, registry: Registry) -> None:
    def push() -> None:
        ref = f"{registry.host}/bench/push{next(_round)}:1"
        big_image.run("tag", "big:1", ref)
        big_image.run("push", ref)

    benchmark.extra_info["MB"] = SIZE_MB
    benchmark.pedantic(push, rounds=3, iterations=1)


def test_pull_throughput(
    benchmark, big_image: Buildpy, registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/bench/pull:1"
    big_image.run("tag", "big:1", ref)
    big_image.run("push", ref)

    def pull() -> None:
        store = Buildpy(tmp_path / f"clean-{next(_round)}")
        try:
            store.run("pull", ref)
        finally:
            unmount_all(store.root)
            shutil.rmtree(store.root, ignore_errors=True)

    benchmark.pedantic(pull, rounds=3, iterations=1)


def test_skopeo_copy_beside(
    benchmark, big_image: Buildpy, registry: Registry, tmp_path: Path
) -> None:
    """skopeo copy of the same image, from an OCI archive, to the registry."""
    archive = tmp_path / "big.tar"
    big_image.run("save", "-o", archive, "big:1")

    def copy() -> None:
        dest = f"docker://{registry.host}/bench/skopeo{next(_round)}:1"
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--dest-tls-verify=false",
                "--dest-compress",
                f"oci-archive:{archive}",
                dest,
            ],
            check=True,
            capture_output=True,
        )

    benchmark.pedantic(copy, rounds=3, iterations=1)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_layer_compression(benchmark, big_image: Buildpy, kind: str) -> None:
    """Compressing the image's layer, as an export with compression=KIND does."""
    manifest = json.loads(big_image.run("inspect", "big:1").stdout)[0]["Manifest"]
    digest = manifest["layers"][0]["digest"].removeprefix("sha256:")
    blob = big_image.root / "blobs/sha256" / digest
    out = big_image.root / f"compressed.{kind}"

    def run() -> None:
        with open(blob, "rb") as src, open(out, "wb") as dst:
            compress(src, dst, kind)  # type: ignore[arg-type]

    benchmark.pedantic(run, rounds=2, iterations=1)
    benchmark.extra_info["ratio"] = out.stat().st_size / blob.stat().st_size
    print(
        f"\n{kind}: {out.stat().st_size / 1e6:.1f} MB "
        f"of {blob.stat().st_size / 1e6:.1f} MB",
        file=sys.stderr,
    )
    out.unlink()


# --- beside other tools, and the export as a whole (issue 6, the rest) ----------


@pytest.fixture(scope="module")
def buildah_image(
    big_image: Buildpy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """The buildah command on a private store holding big:1, and the image's ID
    last: buildah pushes only from its own store, so it pulls the archive first
    (not timed)."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed")
    work = tmp_path_factory.mktemp("buildah")
    archive = work / "big.tar"
    big_image.run("save", "-o", archive, "big:1")
    # vfs: no mounts to leave behind; a push reads the layer's tar as pulled.
    cmd = ["buildah", "--root", str(work / "root"), "--runroot", str(work / "run")]
    cmd += ["--storage-driver", "vfs"]
    try:
        pulled = subprocess.run(
            [*cmd, "pull", "--quiet", f"oci-archive:{archive}"],
            check=True,
            capture_output=True,
            text=True,
        )
        archive.unlink()
        yield [*cmd, pulled.stdout.strip().splitlines()[-1]]
    finally:
        subprocess.run([*cmd, "rmi", "--all", "--force"], capture_output=True)
        unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)


def test_buildah_push_beside(
    benchmark, buildah_image: list[str], registry: Registry
) -> None:
    """buildah push of the same image to a new repository (gzip, as ours)."""
    *cmd, image_id = buildah_image

    def push() -> None:
        dest = f"docker://{registry.host}/bench/buildah{next(_round)}:1"
        subprocess.run(
            [*cmd, "push", "--tls-verify=false", image_id, dest],
            check=True,
            capture_output=True,
        )

    benchmark.pedantic(push, rounds=3, iterations=1)


def test_skopeo_pull_beside(
    benchmark, big_image: Buildpy, registry: Registry, tmp_path: Path
) -> None:
    """skopeo copy of the image from the registry into a new OCI layout: the
    fetch and digest checks of a pull, without unpacking."""
    ref = f"{registry.host}/bench/pull:1"
    big_image.run("tag", "big:1", ref)
    big_image.run("push", ref)

    def pull() -> None:
        dest = tmp_path / f"layout-{next(_round)}"
        try:
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "--src-tls-verify=false",
                    f"docker://{ref}",
                    f"oci:{dest}:x",
                ],
                check=True,
                capture_output=True,
            )
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    benchmark.pedantic(pull, rounds=3, iterations=1)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_export_archive(
    benchmark, big_image: Buildpy, kind: str, tmp_path: Path
) -> None:
    """``buildpy build -o type=oci,compression=KIND`` of an image of the ~500 MB
    layer: compression, archive writing and fsync. Each round starts with no
    compressed variant of the layer in the store (the setup forgets them, not
    timed), as the first export of a new layer does."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM big:1\n")
    dest = tmp_path / f"image-{kind}.tar"
    big_image.build(ctx, "-o", f"type=oci,dest={dest}")  # unpacks big:1 once

    def forget_variants() -> None:
        db = sqlite3.connect(big_image.root / "buildpy.db")
        try:
            with db:
                db.execute("DELETE FROM layer_variants")
        finally:
            db.close()

    def export() -> None:
        big_image.build(ctx, "-o", f"type=oci,dest={dest},compression={kind}")

    benchmark.pedantic(export, setup=forget_variants, rounds=2, iterations=1)
    benchmark.extra_info["archive_MB"] = dest.stat().st_size / 1e6
    print(
        f"\nexport {kind}: archive {dest.stat().st_size / 1e6:.1f} MB", file=sys.stderr
    )
    dest.unlink()
