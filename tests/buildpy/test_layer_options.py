"""Layers of a build, exactly: a sparse file made by a RUN step, and the export
options compression, compression-level and force-compression."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buildpy, write_context

MiB = 1 << 20
SPARSE_SIZE = 256 * MiB
# A file of SPARSE_SIZE with "data" written at 4 MiB: a hole before, a hole after.
SPARSE_RUN = (
    f"RUN truncate -s {SPARSE_SIZE} /big "
    "&& printf data | dd of=/big bs=4096 seek=1024 conv=notrunc"
)
DENSE_RUN = (
    f"RUN dd if=/dev/zero of=/big bs=1048576 count={SPARSE_SIZE // MiB} "
    "&& printf data | dd of=/big bs=4096 seek=1024 conv=notrunc"
)


def _archive(path: Path) -> tuple[dict[str, Any], dict[str, Any], tarfile.TarFile]:
    tar = tarfile.open(path)
    index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.load(tar.extractfile(f"blobs/sha256/{digest}"))  # type: ignore[arg-type]
    config_digest = manifest["config"]["digest"].removeprefix("sha256:")
    config = json.load(tar.extractfile(f"blobs/sha256/{config_digest}"))  # type: ignore[arg-type]
    return manifest, config, tar


def _blob_head(tar: tarfile.TarFile, digest: str) -> bytes:
    f = tar.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
    assert f is not None
    return f.read(4)


def _umoci_unpack(archive: Path, tag: str, work: Path) -> Path:
    """The rootfs umoci unpacks from an OCI archive of ours."""
    layout = work / "layout"
    layout.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    bundle = work / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
    )
    return bundle / "rootfs"


# --- sparse files -----------------------------------------------------------------


@pytest.mark.slow
def test_a_sparse_file_of_a_run_step_is_a_plain_layer_applied_sparse(
    busybox: Buildpy, tmp_path: Path
) -> None:
    sparse_ctx = write_context(
        tmp_path / "sparse", {"Dockerfile": f"FROM busybox\n{SPARSE_RUN}\n"}
    )
    dense_ctx = write_context(
        tmp_path / "dense", {"Dockerfile": f"FROM busybox\n{DENSE_RUN}\n"}
    )
    epoch = ("--build-arg", "SOURCE_DATE_EPOCH=0")  # the same mtimes in both
    sparse_tar, dense_tar = tmp_path / "sparse.tar", tmp_path / "dense.tar"
    busybox.build(
        sparse_ctx,
        *epoch,
        "-t",
        "sparse:1",
        "-o",
        "type=image",
        "-o",
        f"type=oci,dest={sparse_tar},name=sparse:1",
    )
    busybox.build(dense_ctx, *epoch, "-o", f"type=oci,dest={dense_tar}")
    _, sparse_config, t1 = _archive(sparse_tar)
    _, dense_config, t2 = _archive(dense_tar)
    t1.close()
    t2.close()
    # The layer is the file's plain bytes: how it lay on disk changes nothing.
    assert sparse_config["rootfs"]["diff_ids"] == dense_config["rootfs"]["diff_ids"]

    # Applied back (a build FROM the image unpacks its layers), the holes stay.
    from_ctx = write_context(
        tmp_path / "from", {"Dockerfile": "FROM sparse:1\nRUN echo x > /other\n"}
    )
    out = tmp_path / "rootfs"
    busybox.build(from_ctx, "-o", f"type=local,dest={out}")
    big = out / "big"
    assert big.stat().st_size == SPARSE_SIZE
    assert big.stat().st_blocks * 512 < MiB
    with open(big, "rb") as f:
        f.seek(4 * MiB)
        assert f.read(4) == b"data"

    # Other tools read the layer: umoci unpacks the archive to the same file.
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    rootfs = _umoci_unpack(sparse_tar, "1", tmp_path / "umoci")
    assert (rootfs / "big").stat().st_size == SPARSE_SIZE
    with open(rootfs / "big", "rb") as f:
        f.seek(4 * MiB)
        assert f.read(4) == b"data"


# --- compression options ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ("compression=gzip,compression-level=10", "out of range for gzip (0-9)"),
        ("compression=zstd,compression-level=23", "out of range for zstd (0-22)"),
        ("compression=zstd,compression-level=-1", "out of range for zstd (0-22)"),
        ("compression-level=high", "must be a whole number"),
        ("compression=uncompressed,compression-level=3", "needs compression=gzip"),
        ("compression=lz4", "compression must be one of"),
        ("force-compression=yes", "force-compression must be true or false"),
    ],
)
def test_bad_compression_options_are_one_line_and_exit_2(
    buildpy: Buildpy, tmp_path: Path, fields: str, says: str
) -> None:
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n"})
    out = buildpy.build(
        ctx, "-o", f"type=oci,dest={tmp_path / 'x.tar'},{fields}", check=False
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], out.stderr
    assert not (tmp_path / "x.tar").exists()


TEXT = "".join(
    f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(40000)
)


@pytest.fixture
def built(busybox: Buildpy, tmp_path: Path) -> tuple[Buildpy, Path]:
    """busybox with a base layer that has a gzip blob made by another tool
    (skopeo, loaded as a pull would leave it), and a context adding a
    compressible file on it."""
    busybox.run("save", "-o", tmp_path / "plain.tar", "busybox")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-compress",
            f"oci-archive:{tmp_path / 'plain.tar'}",
            f"oci-archive:{tmp_path / 'busybox.tar'}:busybox:latest",
        ],
        check=True,
        capture_output=True,
    )
    busybox.run("load", "-i", tmp_path / "busybox.tar")
    ctx = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nCOPY text.txt /\n", "text.txt": TEXT},
    )
    return busybox, ctx


def test_compression_levels_make_other_blobs(
    built: tuple[Buildpy, Path], tmp_path: Path
) -> None:
    store, ctx = built
    sizes: dict[str, tuple[str, int]] = {}
    for fields in (
        "compression=gzip,compression-level=1",
        "compression=gzip,compression-level=9",
        "compression=zstd,compression-level=1",
        "compression=zstd,compression-level=19",
    ):
        dest = tmp_path / (fields.replace(",", "_") + ".tar")
        store.build(ctx, "-t", "levels:1", "-o", f"type=oci,dest={dest},{fields}")
        manifest, _, tar = _archive(dest)
        with tar:
            own = manifest["layers"][-1]
            sizes[fields] = (own["digest"], own["size"])
            kind = "gzip" if "gzip" in fields else "zstd"
            assert own["mediaType"] == f"application/vnd.oci.image.layer.v1.tar+{kind}"
            magic = b"\x1f\x8b" if kind == "gzip" else b"\x28\xb5\x2f\xfd"
            assert _blob_head(tar, own["digest"]).startswith(magic)
    g1, g9 = (
        sizes["compression=gzip,compression-level=1"],
        sizes["compression=gzip,compression-level=9"],
    )
    z1, z19 = (
        sizes["compression=zstd,compression-level=1"],
        sizes["compression=zstd,compression-level=19"],
    )
    assert g1[0] != g9[0] and g9[1] < g1[1]
    assert z1[0] != z19[0] and z19[1] < z1[1]
    if shutil.which("umoci") is not None:
        dest = tmp_path / "compression=gzip_compression-level=9.tar"
        rootfs = _umoci_unpack(dest, "1", tmp_path / "umoci")
        assert (rootfs / "text.txt").read_text() == TEXT


def test_base_layers_keep_their_blob_unless_compression_is_forced(
    built: tuple[Buildpy, Path], tmp_path: Path
) -> None:
    store, ctx = built
    saved, _, tar = _archive(tmp_path / "busybox.tar")
    tar.close()
    base_blob = saved["layers"][0]["digest"]

    kept = tmp_path / "kept.tar"
    store.build(ctx, "-o", f"type=oci,dest={kept},compression=zstd")
    manifest, _, tar = _archive(kept)
    with tar:
        base, own = manifest["layers"]
        assert base["digest"] == base_blob  # reused as it is, never rewritten
        assert base["mediaType"].endswith("+gzip")
        assert _blob_head(tar, base["digest"]).startswith(b"\x1f\x8b")
        assert own["mediaType"].endswith("+zstd")

    forced = tmp_path / "forced.tar"
    store.build(
        ctx, "-o", f"type=oci,dest={forced},compression=zstd,force-compression=true"
    )
    manifest, _, tar = _archive(forced)
    with tar:
        base, own = manifest["layers"]
        assert base["digest"] != base_blob
        assert base["mediaType"].endswith("+zstd")
        assert _blob_head(tar, base["digest"]).startswith(b"\x28\xb5\x2f\xfd")
        assert own["mediaType"].endswith("+zstd")

    # Other tools accept both: skopeo reads them, and decompresses every layer
    # (gzip and zstd) to its diff ID. (umoci 0.4.7 has no zstd: see the levels.)
    for archive in (kept, forced):
        inspect = subprocess.run(
            ["skopeo", "inspect", f"oci-archive:{archive}"],
            check=True,
            capture_output=True,
            text=True,
        )
        assert len(json.loads(inspect.stdout)["Layers"]) == 2
        copy = tmp_path / f"copy-{archive.stem}"
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--dest-decompress",
                f"oci-archive:{archive}",
                f"dir:{copy}",
            ],
            check=True,
            capture_output=True,
        )
        _, config, tar = _archive(archive)
        tar.close()
        for diff_id in config["rootfs"]["diff_ids"]:
            assert (copy / diff_id.removeprefix("sha256:")).is_file()


SQUASHED = (
    "FROM busybox\n"
    "RUN echo a > /a && mkdir -p /d/e && echo 1 > /d/e/f && mkdir /keep "
    "&& echo k > /keep/k && ln /keep/k /keep/hard\n"
    "RUN rm /bin/ls /a && echo b > /b && chmod 700 /keep && chown 5:6 /keep/k\n"
    "RUN rm -rf /d && mkdir /d && echo 2 > /d/2 && ln -s /b /lnk && rm /etc/passwd\n"
    "ENV X=1\n"
    "RUN touch /etc/x\n"
)


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: type, mode, owner, and content or target."""
    out: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what: object = path.readlink()
        elif path.is_file():
            what = path.read_bytes()
        else:
            what = None
        rel = str(path.relative_to(root))
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, what)
    return out


def test_squash_makes_one_layer_of_the_same_files(busybox: Buildpy, tmp_path: Path):
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": SQUASHED})
    trees = {}
    for kind, flags in (("plain", ()), ("squash", ("--squash",))):
        archive = tmp_path / f"{kind}.tar"
        busybox.build(
            ctx, *flags, "-t", f"app:{kind}", "-o", f"type=oci,dest={archive}",
            "-o", "type=image",
        )  # fmt: skip
        manifest, config, _ = _archive(archive)
        trees[kind] = _tree(_umoci_unpack(archive, kind, tmp_path / kind))
        if kind == "squash":
            # The base's layer and one more; every step still in the history.
            assert len(manifest["layers"]) == 2
            layered = [h for h in config["history"] if not h.get("empty_layer")]
            assert layered[-1]["created_by"].startswith("RUN /bin/sh -c touch")
            assert len(config["history"]) == 6
    # Deletions of base files (whiteouts), a directory replaced whole (opaque),
    # modes, owners and hard links: the same root filesystem either way.
    assert trees["squash"] == trees["plain"]
    assert "bin/ls" not in trees["squash"] and "d/e" not in trees["squash"]

    # A stage FROM the squashed image reads its files.
    ctx2 = write_context(tmp_path / "ctx2", {"Dockerfile": "FROM app:squash\n"})
    out = tmp_path / "out"
    busybox.build(ctx2, "-o", f"type=local,dest={out}")
    assert (out / "d/2").read_text() == "2\n" and not (out / "etc/passwd").exists()

    # After its image and the cache are pruned, a squashed build is whole again.
    busybox.run("rmi", "app:squash")
    busybox.run("prune", "--all")
    again = tmp_path / "again.tar"
    busybox.build(ctx, "--squash", "-t", "app:again", "-o", f"type=oci,dest={again}")
    assert _tree(_umoci_unpack(again, "again", tmp_path / "again")) == trees["plain"]


def test_an_oci_layout_as_a_directory(busybox: Buildpy, tmp_path: Path):
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    ctx = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo 1 > /1\n"}
    )
    layout = tmp_path / "layout"
    busybox.build(ctx, "-t", "app:1", "-o", f"type=oci,dest={layout},tar=false")
    assert (layout / "oci-layout").is_file() and (layout / "index.json").is_file()
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:1"], capture_output=True, text=True
    )
    assert inspected.returncode == 0, inspected.stderr
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:1", str(bundle)],
        check=True,
        capture_output=True,
    )
    assert (bundle / "rootfs/1").read_text() == "1\n"
    # The same build again: the blobs there are kept, the index written anew.
    blobs = {p: p.stat().st_mtime_ns for p in (layout / "blobs/sha256").iterdir()}
    busybox.build(ctx, "-t", "app:1", "-o", f"type=oci,dest={layout},tar=false")
    assert {p: p.stat().st_mtime_ns for p in blobs} == blobs

    for bad, says in [
        (f"type=local,dest={tmp_path / 'x'},tar=false", "tar=false is for type=oci"),
        ("type=oci,dest=-,tar=false", "a directory is not stdout"),
    ]:
        proc = busybox.build(ctx, "-o", bad, check=False)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
