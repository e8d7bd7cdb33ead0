"""The walkthrough's images built by buildpy and by buildah, file tree against file
tree (issue 7).

Both engines start from the same debootstrapped Debian root filesystem (imported
into each one's storage), build examples/python-base on it with the host's CA
bundle in the context, then examples/fastapi and examples/multistage. The final
images' root filesystems are compared path by path: type, mode, owner, symlink
target, device numbers and the sha256 of every file. Only the paths in ALLOWED
may differ, in the way it says, each for a reason: logs and caches that hold the
time of the build, and one mount point buildah leaves in its layers. The .pyc
files pip writes are compared without the source mtime they hold.

buildah runs with runc and OCI isolation (`--isolation oci`), the host network,
storage under a temporary directory and flags only (tests/buildpy/peers.py): no
file under /etc/containers is read for these settings or written."""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.buildpy.peers import BUILDAH, Buildah, Entry, buildah_storage, file_tree
from tests.conftest import REPO, Buildpy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BUILDAH is None, reason="buildah is not installed (.ci/run installs it)"
    ),
]

DEBIAN_ROOTFS = Path("/var/tmp/buildpy-debian-bookworm/rootfs")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Allowance(NamedTuple):
    pattern: str  # fnmatch, "*" also matches "/"
    differs: str  # "contents": same type, mode and owner on both sides, other bytes
    #               "only in buildah": an empty file that buildpy's image lacks
    reason: str


# The paths that may differ between the two engines' images, how, and why.
# Besides these, the .pyc files are compared without the source mtime they hold
# (file_tree(pyc_mtime=False)): pip writes the .py files of what it installs at
# build time and compiles them, so every .pyc it writes records that time; the
# magic, the source size and the code must still be the same.
ALLOWED: list[Allowance] = [
    Allowance(
        "/var/log/dpkg.log",
        "contents",
        "dpkg stamps every action of apt-get install with the time of the build",
    ),
    Allowance(
        "/var/log/apt/history.log",
        "contents",
        "apt records the start and end time of each apt-get run",
    ),
    Allowance(
        "/var/log/apt/term.log",
        "contents",
        "apt logs dpkg's output under a 'Log started: <time>' line",
    ),
    Allowance(
        "/var/cache/ldconfig/aux-cache",
        "contents",
        "ldconfig caches the inode number, mtime and ctime of every library it "
        "scanned, which no two builds share",
    ),
    Allowance(
        "/etc/hosts",
        "only in buildah",
        "buildah creates an empty /etc/hosts as the mount point of the hosts file it "
        "binds into RUN steps and keeps it in the layer; buildpy, like BuildKit, "
        "leaves no mount point behind and debootstrap makes no /etc/hosts",
    ),
]


@pytest.fixture(scope="module")
def buildah_images(
    python_base: Buildpy,  # it also makes DEBIAN_ROOTFS
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Buildah]:
    """A buildah storage holding debian:bookworm, python:3.11-slim and the two
    examples' final images, built as a docker user builds them."""
    workdir = tmp_path_factory.mktemp("buildah")
    with buildah_storage(workdir) as buildah:
        buildah.import_rootfs(
            DEBIAN_ROOTFS, "docker.io/library/debian:bookworm", "bash"
        )
        base = workdir / "python-base"
        base.mkdir()
        shutil.copy(REPO / "examples/python-base/Dockerfile", base)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", base)
        buildah.bud(base, "docker.io/library/python:3.11-slim")
        buildah.bud(REPO / "examples/fastapi", "localhost/fastapi-app:1")
        buildah.bud(REPO / "examples/multistage", "localhost/hello-static:1")
        yield buildah


def _unexplained(ours: dict[str, Entry], theirs: dict[str, Entry]) -> list[str]:
    """One line per path that differs in a way ALLOWED does not explain."""
    lines = []
    for path in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(path), theirs.get(path)
        if a == b or _allowed(path, a, b):
            continue
        left = a.describe() if a else "missing"
        right = b.describe() if b else "missing"
        lines.append(f"  {path}: buildpy {left} | buildah {right}")
    return lines


def _allowed(path: str, ours: Entry | None, theirs: Entry | None) -> bool:
    for allowance in ALLOWED:
        if not fnmatch.fnmatchcase(path, allowance.pattern):
            continue
        if allowance.differs == "contents" and ours and theirs:
            if replace(ours, content="") == replace(theirs, content=""):
                return True
        if allowance.differs == "only in buildah" and ours is None and theirs:
            if theirs.kind == "file" and theirs.content == EMPTY_SHA256:
                return True
    return False


@pytest.mark.parametrize(
    ("example", "image", "must_hold"),
    [
        (
            "fastapi",
            "localhost/fastapi-app:1",
            ["/app/server.py", "/usr/bin/python3.11"],
        ),
        ("multistage", "localhost/hello-static:1", ["/hello"]),
    ],
)
def test_same_file_tree_as_buildah(
    example: str,
    image: str,
    must_hold: list[str],
    python_base: Buildpy,
    buildah_images: Buildah,
    tmp_path: Path,
) -> None:
    out = tmp_path / "rootfs"
    try:
        python_base.run(
            "build", "-q", "-o", f"type=local,dest={out}", REPO / "examples" / example
        )
        ours = file_tree(out, pyc_mtime=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    with buildah_images.mounted(image) as mountpoint:
        theirs = file_tree(mountpoint, pyc_mtime=False)
    # A comparison of two empty trees would prove nothing.
    for path in must_hold:
        assert path in ours and path in theirs, path
    unexplained = _unexplained(ours, theirs)
    assert not unexplained, (
        f"{len(unexplained)} paths differ between buildpy's and buildah's "
        f"{example} image and are not in ALLOWED:\n" + "\n".join(unexplained)
    )
