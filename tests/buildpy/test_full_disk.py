"""A full disk, where a build writes: one line naming where, exit 4, no
traceback, and the store still builds once there is room again. The disks
are small tmpfs mounts made for the test and removed after it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Buildpy, unmount_all, write_context


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        unmount_all(where)
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_output_disk_is_one_line(
    busybox: Buildpy, small_disk: Path, tmp_path: Path
):
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nRUN head -c 30000000 /dev/urandom > /big\n"},
    )
    for output, name in [("oci", "image.tar"), ("tar", "rootfs.tar")]:
        dest = small_disk / name
        proc = busybox.build(context, "-o", f"type={output},dest={dest}", check=False)
        assert (proc.returncode, proc.stderr.splitlines()[-1]) == (
            4,
            f"ERROR: cannot write {dest}: No space left on device",
        ), proc.stderr
        assert "Traceback" not in proc.stderr
        assert not dest.exists() and list(small_disk.iterdir()) == []
    # A directory is written file by file: what fitted stays, as buildx leaves it.
    dest = small_disk / "rootfs"
    proc = busybox.build(context, "-o", f"type=local,dest={dest}", check=False)
    assert (proc.returncode, proc.stderr.splitlines()[-1]) == (
        4,
        f"ERROR: cannot extract into {dest}: [Errno 28] No space left on device",
    )
    # There is room elsewhere: the same build writes its archive.
    busybox.build(context, "-o", f"type=oci,dest={tmp_path / 'image.tar'}")


def test_a_full_store_keeps_its_images(
    busybox_rootfs: Path, small_disk: Path, tmp_path: Path
):
    store = Buildpy(small_disk / "state")
    try:
        store.run("import", busybox_rootfs, "busybox")
        context = write_context(
            tmp_path / "ctx",
            {"Dockerfile": "FROM busybox\nRUN head -c 12000000 /dev/urandom > /big\n"},
        )
        # The step's files fit; its layer, as many bytes again, does not.
        proc = store.build(context, "-t", "big", check=False)
        assert proc.returncode == 4, proc.stderr
        assert proc.stderr.splitlines()[-1] == (
            f"ERROR: cannot write the store {store.root}: No space left on device"
        )
        assert "Traceback" not in proc.stderr
        # The store is consistent: what it held, it holds; a smaller build works.
        assert "busybox" in store.run("images").stdout
        small = write_context(
            tmp_path / "small", {"Dockerfile": "FROM busybox\nRUN echo 1 > /1\n"}
        )
        store.run("prune", "--all")
        out = tmp_path / "out"
        store.build(small, "-o", f"type=local,dest={out}")
        assert (out / "1").read_text() == "1\n"
    finally:
        unmount_all(store.root)
