"""SOURCE_DATE_EPOCH: two builds on two clean stores give the same archive."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Buildpy, mounts_under, unmount_all, write_context

DOCKERFILE = """\
FROM busybox
COPY app.txt /app/
RUN echo made > /app/made && mkdir -p /var/log/app && touch /var/log/app/when
ENV MODE=prod
"""


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Buildpy, Buildpy]]:
    roots = [tmp_path / "store-a", tmp_path / "store-b"]
    try:
        yield Buildpy(roots[0]), Buildpy(roots[1])
        for root in roots:
            assert not mounts_under(root)
    finally:
        for root in roots:
            unmount_all(root)
            shutil.rmtree(root, ignore_errors=True)


def _same_base(stores: tuple[Buildpy, Buildpy], rootfs: Path, tmp: Path) -> None:
    """One busybox image in both stores (as a pull would give), not two imports
    that differ in their dates."""
    first, second = stores
    first.run("import", "-c", 'CMD ["sh"]', rootfs, "busybox")
    first.run("save", "-o", tmp / "base.tar", "busybox")
    second.run("load", "-i", tmp / "base.tar")


def test_two_clean_stores_give_byte_identical_oci_archives(
    stores: tuple[Buildpy, Buildpy], busybox_rootfs: Path, tmp_path: Path
):
    _same_base(stores, busybox_rootfs, tmp_path)
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "app.txt": "v1"})
    epoch = "1700000000"
    archives = []
    for i, store in enumerate(stores):
        dest = tmp_path / f"image-{i}.tar"
        store.run(
            "build",
            "--progress",
            "plain",
            "-o",
            f"type=oci,dest={dest}",
            ctx,
            env={"SOURCE_DATE_EPOCH": epoch},
        )
        archives.append(dest.read_bytes())
    assert archives[0] == archives[1]

    with tarfile.open(tmp_path / "image-0.tar") as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(
            tar.extractfile(  # type: ignore[arg-type]
                "blobs/sha256/" + index["manifests"][0]["digest"][7:]
            )
        )
        config = json.load(
            tar.extractfile(  # type: ignore[arg-type]
                "blobs/sha256/" + manifest["config"]["digest"][7:]
            )
        )
    assert config["created"] == "2023-11-14T22:13:20.000000Z"
    # The base's own history keeps its date: base layers are not rewritten.
    assert [h["created"] for h in config["history"][1:]] == [config["created"]] * 3
    assert config["history"][0]["created"] != config["created"]


def test_copy_only_builds_give_the_same_layers_without_epoch(
    stores: tuple[Buildpy, Buildpy], busybox_rootfs: Path, tmp_path: Path
):
    _same_base(stores, busybox_rootfs, tmp_path)
    ctx = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nCOPY . /src/\n", "a.txt": "a", "d/b.txt": "b"},
    )
    layers = []
    for store in stores:
        store.build(ctx, "-t", "copied")
        image = json.loads(store.run("inspect", "copied").stdout)[0]
        layers.append(image["Config"]["rootfs"]["diff_ids"])
    assert layers[0] == layers[1] and len(layers[0]) == 2
