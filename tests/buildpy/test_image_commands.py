"""`buildpy tag`, `rmi`, `history`, `save` and `load`, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import Buildpy, mounts_under, unmount_all, write_context


@pytest.fixture
def buildpy_second(tmp_path: Path):
    """A second, clean store."""
    import shutil

    root = tmp_path / "second-state"
    try:
        yield Buildpy(root)
        assert not mounts_under(root)
    finally:
        unmount_all(root)
        shutil.rmtree(root, ignore_errors=True)


def _image_id(bp: Buildpy, name: str) -> str:
    return json.loads(bp.run("inspect", name).stdout)[0]["Id"]


def _built(bp: Buildpy, tmp_path: Path) -> str:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\nENV A=1\nRUN echo hi > /hi\n"
            'CMD ["cat", "/hi"]\n'
        },
    )
    bp.build(ctx, "-t", "app:1")
    return _image_id(bp, "app:1")


def test_tag_and_rmi(busybox: Buildpy, tmp_path: Path):
    image = _built(busybox, tmp_path)
    busybox.run("tag", "app:1", "registry.example:5000/team/app:v2")
    assert _image_id(busybox, "registry.example:5000/team/app:v2") == image
    out = busybox.run("rmi", "app:1").stdout
    assert out == "Untagged: app:1\n"  # still named elsewhere: not deleted
    gone = busybox.run("inspect", "app:1", check=False)
    assert gone.returncode == 2
    last = busybox.run("rmi", "registry.example:5000/team/app:v2").stdout
    assert last.splitlines() == [
        "Untagged: registry.example:5000/team/app:v2",
        f"Deleted: {image}",
    ]
    missing = busybox.run("rmi", "nothing:here", check=False)
    assert missing.returncode == 2 and "No such image: nothing:here" in missing.stderr


def test_history_shows_steps_newest_first(busybox: Buildpy, tmp_path: Path):
    image = _built(busybox, tmp_path)
    lines = busybox.run("history", "app:1").stdout.splitlines()
    assert lines[0].split()[:3] == ["IMAGE", "CREATED", "CREATED"]
    assert lines[1].startswith(image.removeprefix("sha256:")[:12])
    assert 'CMD ["cat" "/hi"]' in lines[1]
    assert "0B" in lines[1]  # CMD makes no layer
    assert "RUN" in lines[2] and "0B" not in lines[2].split()
    assert "ENV A=1" in lines[3]
    assert lines[-1].startswith("<missing>") and "Imported from" in lines[-1]
    ids = busybox.run("history", "-q", "--no-trunc", "app:1").stdout.split()
    assert ids[0] == image.removeprefix("sha256:") and len(ids) == len(lines) - 1


def test_save_then_load_into_a_clean_store(
    busybox: Buildpy, tmp_path: Path, buildpy_second: Buildpy
):
    image = _built(busybox, tmp_path)
    archive = tmp_path / "images.tar"
    busybox.run("save", "-o", archive, "app:1", "busybox")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        docker = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
    assert [e["RepoTags"] for e in docker] == [["app:1"], ["busybox:latest"]]
    # OCI tools read it, as docker's loaders would.
    skopeo = subprocess.run(
        ["skopeo", "inspect", f"docker-archive:{archive}:app:1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(skopeo.stdout)["Architecture"]

    loaded = buildpy_second.run("load", "-i", archive).stdout.splitlines()
    assert loaded == ["Loaded image: app:1", "Loaded image: busybox:latest"]
    assert _image_id(buildpy_second, "app:1") == image
    ctx = write_context(tmp_path / "ctx2", {"Dockerfile": "FROM app:1\nRUN cat /hi\n"})
    buildpy_second.build(ctx)


def test_load_a_docker_archive_with_gzip_layers(
    busybox: Buildpy, tmp_path: Path, buildpy_second: Buildpy
):
    image = _built(busybox, tmp_path)
    archive = tmp_path / "docker.tar"
    busybox.run("save", "-o", tmp_path / "plain.tar", "app:1")
    # skopeo rewrites it as a docker archive with its own layout.
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-compress",
            f"docker-archive:{tmp_path / 'plain.tar'}:app:1",
            f"docker-archive:{archive}:other/app:2",
        ],
        check=True,
        capture_output=True,
    )
    out = buildpy_second.run("load", "-i", archive).stdout
    assert out == "Loaded image: other/app:2\n"
    assert _image_id(buildpy_second, "other/app:2") == image


def test_load_refuses_a_tampered_archive(
    busybox: Buildpy, tmp_path: Path, buildpy_second: Buildpy
):
    _built(busybox, tmp_path)
    archive = tmp_path / "images.tar"
    busybox.run("save", "-o", archive, "app:1")
    bad = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(bad, "w") as dst:
        docker = json.load(src.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer = docker[0]["Layers"][-1]
        for member in src.getmembers():
            f = src.extractfile(member) if member.isfile() else None
            if member.name == layer:
                import io

                data = bytearray(f.read())  # type: ignore[union-attr]
                data[600] ^= 1
                dst.addfile(member, io.BytesIO(bytes(data)))
            else:
                dst.addfile(member, f)
    failed = buildpy_second.run("load", "-i", bad, check=False)
    assert failed.returncode == 2 and "does not have the digest" in failed.stderr
    assert buildpy_second.run("images").stdout.count("\n") == 1  # header only
