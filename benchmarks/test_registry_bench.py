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
