"""Rootless buildpy: an unprivileged user builds and runs in a user namespace.

The fixture makes a real user (useradd, with a subordinate id range), lets it
reach this Python (bound read-only to a directory it may enter when the
interpreter lives under root's home) and the repo, and removes the user with
its home in the end, whatever happened. buildpy runs as that user through
``runuser``, exactly as the user would run it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildpy import rootless
from tests.conftest import REPO, Buildpy, write_context

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="making a user for the test needs root and runuser",
)

DOCKERFILE = """\
FROM busybox
RUN echo 'bob:x:1234:1234::/home/bob:/bin/sh' >> /etc/passwd \\
 && echo made > /made-by-root && mkdir -p /home/bob/data \\
 && echo x > /home/bob/data/f && chown -R bob:1234 /home/bob/data \\
 && rm /bin/vi && rm -r /home/app && mkdir /home/app
COPY --chown=1000:1000 a.txt /a.txt
USER bob
RUN echo mine > /home/bob/data/g && id -u
"""


@dataclass
class User:
    name: str
    home: Path
    python: str
    env: dict[str, str]

    def buildpy(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.python, "-m", "buildpy", *args]
        full_env = {**self.env, **(env or {})}
        proc = subprocess.run(
            ["runuser", "-u", self.name, "--", "env", "-i"]
            + [f"{k}={v}" for k, v in full_env.items()]
            + argv,
            capture_output=True,
            text=True,
            cwd=self.home,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"buildpy {' '.join(args)} as {self.name} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc


def _reachable(python: str, name: str, env: dict[str, str]) -> bool:
    done = subprocess.run(
        ["runuser", "-u", name, "--", "env", *(f"{k}={v}" for k, v in env.items())]
        + [python, "-c", "import trio, buildpy"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _make_user(subids: bool) -> tuple[str, Path]:
    name = "bpy" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
    home = Path(f"/home/{name}")
    has_range = rootless.subordinate_range(Path("/etc/subuid"), name, -1)
    if subids and has_range is None:
        subprocess.run(
            ["usermod", "--add-subuids", "300000-365535"]
            + ["--add-subgids", "300000-365535", name],
            check=True,
        )
    if not subids and has_range is not None:
        first, count = has_range
        span = f"{first}-{first + count - 1}"
        subprocess.run(
            ["usermod", "--del-subuids", span, "--del-subgids", span, name], check=True
        )
    return name, home


def _remove_user(name: str) -> None:
    # The user's processes are all ours (runuser children) and have exited.
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def python_dir() -> Iterator[tuple[str, dict[str, str]]]:
    """An interpreter path the test users may run, and the env it needs."""
    prefix = Path(sys.base_prefix)
    exe = Path(sys.executable).resolve()
    mount_dir = Path(tempfile.mkdtemp(prefix="buildpy-python-", dir="/tmp"))
    mounted = False
    try:
        os.chmod(mount_dir, 0o755)
        subprocess.run(
            ["mount", "--bind", "-o", "ro", str(prefix), str(mount_dir)], check=True
        )
        mounted = True
        python = str(mount_dir / exe.relative_to(prefix))
        env = {"LD_LIBRARY_PATH": str(mount_dir / "lib"), "PYTHONPATH": str(REPO)}
        yield python, env
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount_dir)], check=False)
        mount_dir.rmdir()


def _user(subids: bool, python_dir: tuple[str, dict[str, str]]) -> Iterator[User]:
    name, home = _make_user(subids)
    try:
        python, extra = python_dir
        env = {
            "HOME": str(home),
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "XDG_DATA_HOME": str(home / "data"),
            **extra,
        }
        if not _reachable(python, name, env):
            pytest.skip(f"user {name} cannot run {python} with trio")
        yield User(name, home, python, env)
    finally:
        _remove_user(name)


@pytest.fixture
def user(python_dir: tuple[str, dict[str, str]]) -> Iterator[User]:
    yield from _user(True, python_dir)


@pytest.fixture
def user_without_range(python_dir: tuple[str, dict[str, str]]) -> Iterator[User]:
    yield from _user(False, python_dir)


def _give(user: User, path: Path) -> None:
    subprocess.run(["chown", "-R", f"{user.name}:", str(path)], check=True)


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _busybox_tar(user: User, rootfs: Path, *, root_only: bool = False) -> Path:
    tar = user.home / "busybox.tar"
    with tarfile.open(tar, "w") as out:
        out.add(rootfs, arcname=".", filter=_as_root if root_only else None)
    _give(user, tar)
    return tar


def _layers(archive: Path) -> list[list[tarfile.TarInfo]]:
    """The entries of every layer of an OCI archive, base first."""
    with tarfile.open(archive) as oci:

        def blob(digest: str) -> bytes:
            f = oci.extractfile("blobs/sha256/" + digest.split(":")[1])
            assert f is not None
            return f.read()

        index = json.loads(oci.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        layers = []
        for layer in manifest["layers"]:
            path = archive.with_suffix(".layer")
            path.write_bytes(blob(layer["digest"]))
            with tarfile.open(path, "r:*") as lt:
                layers.append(lt.getmembers())
            path.unlink()
        return layers


def _host_mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["runc", "builtin"])
def test_unprivileged_user_builds_and_runs(
    user: User, busybox_rootfs: Path, executor: str
) -> None:
    tar = _busybox_tar(user, busybox_rootfs)
    user.buildpy("import", "-c", 'CMD ["sh"]', str(tar), "busybox")
    ctx = write_context(user.home / "ctx", {"Dockerfile": DOCKERFILE, "a.txt": "a\n"})
    _give(user, ctx)
    out = user.home / "image.tar"
    built = user.buildpy(
        "build",
        "--progress",
        "plain",
        "--oci-runtime",
        executor,
        "-t",
        "app:1",
        "-o",
        "type=image",
        "-o",
        f"type=oci,dest={out}",
        str(ctx),
    )
    assert "1234" in built.stderr  # `id -u` of the step run as bob

    # The state is under $XDG_DATA_HOME/buildpy, owned by the user.
    state = user.home / "data" / "buildpy"
    assert (state / "buildpy.db").is_file()
    assert state.stat().st_uid == int(
        subprocess.run(["id", "-u", user.name], capture_output=True, text=True).stdout
    )

    # Layers hold the namespace's ids, and whiteouts as the OCI spec says.
    run_layer, copy_layer, user_layer = _layers(out)[1:]
    owners = {m.name: (m.uid, m.gid) for m in run_layer}
    assert owners["made-by-root"] == (0, 0)
    assert owners["home/bob/data/f"] == (1234, 1234)
    assert "bin/.wh.vi" in owners
    assert "home/app/.wh..wh..opq" in owners
    assert all("xattr" not in k for m in run_layer for k in m.pax_headers)
    assert {m.name: (m.uid, m.gid) for m in copy_layer}["a.txt"] == (1000, 1000)
    assert {m.name: m.uid for m in user_layer}["home/bob/data/g"] == 1234

    ran = user.buildpy(
        "run",
        "--oci-runtime",
        executor,
        "app:1",
        "sh",
        "-c",
        "id -u; cat /home/bob/data/g; ls /bin/vi; ls -A /home/app; exit 7",
        check=False,
    )
    assert ran.returncode == 7, ran.stderr
    assert ran.stdout.split() == ["1234", "mine"]
    assert "/bin/vi" in ran.stderr  # deleted by the first RUN
    assert _host_mounts_under(user.home) == []


@pytest.mark.slow
def test_user_without_subordinate_ids_gets_root_only(
    user_without_range: User, busybox_rootfs: Path
) -> None:
    user = user_without_range
    # One id only: a layer with files of other users cannot be unpacked.
    tar = _busybox_tar(user, busybox_rootfs, root_only=True)
    imported = user.buildpy("import", str(tar), "busybox")
    assert "no subordinate id range in /etc/subuid" in imported.stderr
    assert "usermod --add-subuids" in imported.stderr
    ctx = write_context(
        user.home / "ctx", {"Dockerfile": "FROM busybox\nRUN echo ok > /f && id -u\n"}
    )
    _give(user, ctx)
    built = user.buildpy("build", "--progress", "plain", "-t", "x:1", str(ctx))
    assert re.search(r"^#\d+ [\d.]+ 0$", built.stderr, re.M), built.stderr
    assert _host_mounts_under(user.home) == []


@pytest.mark.slow
def test_root_build_is_unaffected(busybox: Buildpy, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "a.txt": "a\n"})
    out = tmp_path / "image.tar"
    busybox.build(ctx, "-o", f"type=oci,dest={out}")
    run_layer = _layers(out)[1]
    names = {m.name for m in run_layer}
    assert {"bin/.wh.vi", "home/app/.wh..wh..opq", "home/bob/data/f"} <= names


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("kernel.unprivileged_userns_clone", "0", "unprivileged_userns_clone=1"),
        ("user.max_user_namespaces", "0", "user.max_user_namespaces=15000"),
        (
            "kernel.apparmor_restrict_unprivileged_userns",
            "1",
            "apparmor_restrict_unprivileged_userns=0",
        ),
    ],
)
def test_refusal_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, setting: str, value: str, words: str
) -> None:
    monkeypatch.setattr(
        rootless, "_sysctl", lambda name: value if name == setting else None
    )
    message = rootless._refusal(1)
    assert setting in message and words in message
    assert "\n" not in message
