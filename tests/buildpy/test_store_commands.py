"""`buildpy import`, `images` and `inspect`, as a user runs them."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest
import pyzstd

from tests.conftest import Buildpy, write_context


def _rootfs_tar(busybox_rootfs, path, compression: str) -> None:
    if compression == "zstd":
        plain = path.with_suffix(".plain")
        with tarfile.open(plain, "w") as tar:
            tar.add(busybox_rootfs, arcname=".")
        with open(plain, "rb") as src, pyzstd.ZstdFile(path, "w") as dst:
            shutil.copyfileobj(src, dst)
        plain.unlink()
    else:
        mode = {"plain": "w", "gzip": "w:gz"}[compression]
        with tarfile.open(path, mode) as tar:
            tar.add(busybox_rootfs, arcname=".")


@pytest.mark.parametrize("compression", ["plain", "gzip", "zstd"])
def test_import_tarball_then_build_from_it(
    buildpy: Buildpy, busybox_rootfs, tmp_path, compression
):
    archive = tmp_path / f"rootfs.tar.{compression}"
    _rootfs_tar(busybox_rootfs, archive, compression)
    out = buildpy.run("import", "-c", "ENV FROM_IMPORT=1", archive, "base:v1")
    assert out.stdout.strip().startswith("sha256:")

    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM base:v1\nRUN echo $FROM_IMPORT > /seen\n"},
    )
    rootfs = tmp_path / "out"
    buildpy.build(context, "-o", f"type=local,dest={rootfs}")
    assert (rootfs / "seen").read_text() == "1\n"
    assert (rootfs / "bin/busybox").stat().st_size > 0


def test_import_directory_lists_and_inspects_like_docker(
    buildpy: Buildpy, busybox_rootfs
):
    buildpy.run("import", "--change", 'CMD ["sh"]', busybox_rootfs, "mybase")
    listing = buildpy.run("images").stdout.splitlines()
    assert listing[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert listing[1].split()[:2] == ["mybase", "latest"]

    image = json.loads(buildpy.run("inspect", "mybase").stdout)[0]
    assert image["RepoTags"] == ["mybase:latest"]
    assert image["Config"]["config"]["Cmd"] == ["sh"]
    assert image["Config"]["os"] == "linux"
    assert len(image["Manifest"]["layers"]) == 1
    assert image["Config"]["rootfs"]["diff_ids"] == [
        image["Manifest"]["layers"][0]["digest"]
    ]
    # The short image ID from `images` is the config digest, as docker shows it.
    assert listing[1].split()[2] == image["Id"].removeprefix("sha256:")[:12]


def test_import_rejects_a_corrupt_or_escaping_archive(buildpy: Buildpy, tmp_path):
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage that is not gzip")
    proc = buildpy.run("import", corrupt, "bad", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(corrupt.name) in proc.stderr

    escaping = tmp_path / "escape.tar"
    with tarfile.open(escaping, "w") as tar:
        info = tarfile.TarInfo("../outside")
        tar.addfile(info)
    proc = buildpy.run("import", escaping, "bad", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "outside" in proc.stderr
    assert not (tmp_path / "outside").exists()
    # Nothing was named: the store holds no "bad" image.
    assert "bad" not in buildpy.run("images").stdout


def test_inspect_unknown_image_is_one_line(buildpy: Buildpy):
    proc = buildpy.run("inspect", "nothing:here", check=False)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "ERROR: image 'nothing:here' not found in the local store"
    )


def test_debug_ast_prints_buildkits_dump(buildpy: Buildpy, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        'FROM busybox AS b\nCOPY --chown=1:1 a /b\nCMD ["sh", "-c"]\n'
    )
    out = buildpy.run("debug", "ast", dockerfile).stdout
    assert out == (
        '(from "busybox" "AS" "b")\n(copy ["--chown=1:1"] "a" "/b")\n(cmd "sh" "-c")\n'
    )
    missing = buildpy.run("debug", "ast", tmp_path / "nope", check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_images_on_an_empty_store(buildpy: Buildpy):
    assert buildpy.run("images").stdout.split() == [
        "REPOSITORY",
        "TAG",
        "IMAGE",
        "ID",
        "CREATED",
        "SIZE",
    ]
