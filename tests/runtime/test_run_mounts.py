"""RUN --mount, every type, through `buildpy build` as a user runs it.

What the tests look at is what a user sees: a step's output, the exported image,
the state root after the build, the next build's cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import trio

from buildpy.mounts import SSHSource, _acquire, _agent, _proxy
from tests.conftest import Buildpy, write_context

SECRET = "hunter2-7f3a9c-not-in-any-layer"


def rootfs_names(buildpy: Buildpy, ctx: Path, tmp_path: Path) -> list[str]:
    """The paths of the image's root filesystem, through `-o type=tar`."""
    out = tmp_path / "rootfs.tar"
    buildpy.build(ctx, "-o", f"type=tar,dest={out}")
    with tarfile.open(out) as tar:
        return [n.rstrip("/") for n in tar.getnames()]


def logs(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def test_cache_mount_survives_builds_and_stays_out_of_the_layer(
    busybox: Buildpy, tmp_path: Path
) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            "RUN --mount=type=cache,target=/var/cache/new,uid=1000,gid=2000,mode=0750"
            " echo x >> /var/cache/new/runs"
            ' && echo "runs=$(wc -l < /var/cache/new/runs)"'
            " && stat -c 'owner=%u:%g mode=%a' /var/cache/new\n"
        },
    )
    first = busybox.build(ctx, "--no-cache")
    assert "runs=1" in logs(first)
    assert "owner=1000:2000 mode=750" in logs(first)
    second = busybox.build(ctx, "--no-cache")
    assert "runs=2" in logs(second)
    names = rootfs_names(busybox, ctx, tmp_path)
    assert "var/cache" not in names and "var/cache/new" not in names


def test_cache_mount_from_a_stage_is_seeded_and_keyed_by_id(
    busybox: Buildpy, tmp_path: Path
) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox AS seed\n"
            "RUN mkdir -p /s/sub && echo seeded > /s/sub/file\n"
            "FROM busybox\n"
            "RUN --mount=type=cache,id=one,target=/c,from=seed,source=/s/sub"
            " cat /c/file && echo more > /c/added\n"
            "RUN --mount=type=cache,id=two,target=/c echo two-has=$(ls /c | wc -l)\n"
        },
    )
    out = logs(busybox.build(ctx))
    assert "seeded" in out
    assert "two-has=0" in out  # another id, another cache


def test_cache_sharing_modes_lock_as_documented(tmp_path: Path) -> None:
    base = tmp_path / "cache"
    shared_fd, shared_path = _acquire(base, "shared")
    other_fd, other_path = _acquire(base, "shared")
    private_fd, private_path = _acquire(base, "private")
    try:
        assert shared_path == other_path == base / "0"
        # A private mount never shares an instance that someone uses.
        assert private_path == base / "1"
    finally:
        for fd in (shared_fd, other_fd, private_fd):
            os.close(fd)
    locked_fd, locked_path = _acquire(base, "locked")
    try:
        assert locked_path == base / "0"
        fd, path = _acquire(base, "private")
        os.close(fd)
        assert path == base / "1"
    finally:
        os.close(locked_fd)


def test_bind_mounts_from_context_and_stage(busybox: Buildpy, tmp_path: Path) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "data/in.txt": "from the context\n",
            "Dockerfile": "FROM busybox AS tools\n"
            "RUN echo from-stage > /made\n"
            "FROM busybox\n"
            "RUN --mount=type=bind,source=data,target=/src cat /src/in.txt"
            " && ! touch /src/new 2>/dev/null && echo read-only\n"
            "RUN --mount=type=bind,source=data,target=/src,rw"
            " echo changed > /src/in.txt && cat /src/in.txt\n"
            "RUN --mount=type=bind,from=tools,source=/made,target=/mnt/made"
            " cat /mnt/made\n",
        },
    )
    out = logs(busybox.build(ctx))
    assert "from the context" in out and "read-only" in out
    assert "changed" in out and "from-stage" in out
    # rw writes are thrown away: the context is as it was.
    assert (ctx / "data/in.txt").read_text() == "from the context\n"
    assert not (ctx / "data/new").exists()
    names = rootfs_names(busybox, ctx, tmp_path)
    assert "src" not in names and "mnt" not in names


def test_bound_context_content_enters_the_cache_key(
    busybox: Buildpy, tmp_path: Path
) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "in.txt": "first-content\n",
            "Dockerfile": "FROM busybox\n"
            "RUN --mount=type=bind,target=/src cat /src/in.txt\n",
        },
    )
    assert "first-content" in logs(busybox.build(ctx))
    assert "first-content" not in logs(busybox.build(ctx))  # cached: no output
    (ctx / "in.txt").write_text("second-content\n")
    again = logs(busybox.build(ctx))
    assert "second-content" in again  # the step ran again: its output is there


def test_tmpfs_mount_has_its_size(busybox: Buildpy, tmp_path: Path) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            "RUN --mount=type=tmpfs,target=/scratch,size=2m"
            " df -k /scratch | tail -1 && echo x > /scratch/f\n"
        },
    )
    out = logs(busybox.build(ctx))
    assert "tmpfs" in out and " 2048 " in out
    assert "scratch" not in rootfs_names(busybox, ctx, tmp_path)


def _grep_tree(root: Path, needle: bytes) -> list[str]:
    """Files under ``root`` that contain ``needle``, read in chunks."""
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            tail = b""
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    if needle in tail + chunk:
                        found.append(path)
                        break
                    tail = chunk[-len(needle) :]
    return found


def test_secret_reaches_the_step_and_nothing_else(
    busybox: Buildpy, tmp_path: Path
) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text(SECRET)
    digest = hashlib.md5(SECRET.encode()).hexdigest()
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            "RUN --mount=type=secret,id=tok"
            f' test "$(md5sum < /run/secrets/tok | cut -d" " -f1)" = {digest}'
            " && stat -c 'file %a %u' /run/secrets/tok && echo ok > /done\n"
            "RUN --mount=type=secret,id=tok,target=/etc/tok,mode=0440,uid=1000"
            " stat -c 'file %a %u' /etc/tok\n"
            "RUN --mount=type=secret,id=envtok,env=TOKEN"
            f' test "$(printf %s "$TOKEN" | md5sum | cut -d" " -f1)" = {digest}'
            " && echo env-ok\n",
        },
    )
    archive = tmp_path / "image.tar"
    proc = busybox.run(
        "build",
        "--progress=plain",
        "--secret",
        f"id=tok,src={secret_file}",
        "--secret",
        "id=envtok,env=BUILD_TOKEN",
        "-o",
        f"type=oci,dest={archive},compression=uncompressed",
        "-t",
        "secret:1",
        ctx,
        env={"BUILD_TOKEN": SECRET},
    )
    out = logs(proc)
    assert "env-ok" in out
    assert "file 400 0" in out and "file 440 1000" in out
    needle = SECRET.encode()
    assert needle not in out.encode()
    assert needle not in archive.read_bytes()
    assert not _grep_tree(busybox.root, needle)
    names = rootfs_names(busybox, ctx, tmp_path)
    assert "done" in names and "run" not in names and "etc/tok" not in names


def test_required_secret_missing_fails_with_one_line(
    busybox: Buildpy, tmp_path: Path
) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            "RUN --mount=type=secret,id=absent,required=true true\n"
            "RUN --mount=type=secret,id=optional test ! -e /run/secrets/optional\n",
        },
    )
    failed = busybox.build(ctx, check=False)
    assert failed.returncode == 1
    assert "secret absent is required but was not given" in failed.stderr
    ctx.joinpath("Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=secret,id=optional test ! -e /run/secrets/optional\n"
    )
    busybox.build(ctx)


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    if not shutil.which("ssh-keygen") or not shutil.which("ssh-agent"):
        pytest.skip("openssh-client (ssh-keygen, ssh-agent) is not installed")
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "buildpy-test", "-f"]
        + [str(key)],
        check=True,
    )
    return key


def test_ssh_mount_forwards_an_agent_socket(
    busybox: Buildpy, tmp_path: Path, ssh_key: Path
) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            "RUN --mount=type=ssh test -S $SSH_AUTH_SOCK"
            " && stat -c 'sock %a %u' $SSH_AUTH_SOCK && echo $SSH_AUTH_SOCK\n"
            "RUN --mount=type=ssh,id=absent true\n",
        },
    )
    out = logs(busybox.build(ctx, "--ssh", f"default={ssh_key}"))
    assert "sock 600 0" in out and "/run/buildkit/ssh_agent.0" in out
    assert "run" not in rootfs_names(busybox, ctx, tmp_path)


def test_ssh_proxy_reaches_the_agent(tmp_path: Path, ssh_key: Path) -> None:
    """The proxy a step's socket is bound to answers as the agent does."""
    listed: list[bytes] = []

    async def main() -> None:
        async with _agent(SSHSource("default", (ssh_key,))) as agent:
            sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            path = tmp_path / "proxy.sock"
            await sock.bind(str(path))
            sock.listen(4)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_proxy, trio.SocketListener(sock), agent)
                done = await trio.run_process(
                    ["ssh-add", "-l"],
                    env={**os.environ, "SSH_AUTH_SOCK": str(path)},
                    capture_stdout=True,
                )
                listed.append(done.stdout)
                nursery.cancel_scope.cancel("listed")

    trio.run(main)
    assert b"buildpy-test" in listed[0]


def test_network_none_per_run(busybox: Buildpy, tmp_path: Path) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            "RUN --network=none echo none=$(tail -n +3 /proc/net/dev | wc -l)\n"
            "RUN echo host=$(tail -n +3 /proc/net/dev | wc -l)\n"
        },
    )
    out = logs(busybox.build(ctx))
    assert "none=1" in out  # lo alone
    assert "host=1" not in out
