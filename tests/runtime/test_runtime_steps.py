"""What a build step sees and gets, under every executor (conftest.executor)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from runtime import (
    Executor,
    ExecutorError,
    Mount,
    ProcessSpec,
    RuncExecutor,
    make_bundle,
)
from runtime.spec import DEFAULT_PATH, MASKED_PATHS

if TYPE_CHECKING:
    from conftest import Runner

DOCKER_DEFAULT_CAPS = "00000000a80425fb"


def test_exit_codes_pass_through(runner: Runner) -> None:
    assert runner.sh("exit 0").code == 0
    assert runner.sh("exit 3").code == 3
    assert runner.run("false").code == 1


def test_stdout_and_stderr_arrive_separately_in_order(runner: Runner) -> None:
    result = runner.sh("echo out1; echo err1 >&2; echo out2; echo err2 >&2")
    assert result.stdout == "out1\nout2\n"
    assert result.stderr == "err1\nerr2\n"


def test_large_output_is_streamed_in_chunks(runner: Runner) -> None:
    result = runner.run("head", "-c", "1000000", "/dev/zero")
    assert result.stream(1) == b"\0" * 1_000_000
    assert len([fd for fd, _ in result.chunks if fd == 1]) > 1


def test_env_and_default_path(runner: Runner) -> None:
    out = runner.run("env", env=["FOO=bar baz"]).stdout.splitlines()
    assert "FOO=bar baz" in out
    assert f"PATH={DEFAULT_PATH}" in out


def test_a_given_path_is_kept(runner: Runner) -> None:
    out = runner.run("/bin/env", env=["PATH=/bin"]).stdout.splitlines()
    assert [line for line in out if line.startswith("PATH=")] == ["PATH=/bin"]


def test_cwd_is_created(runner: Runner) -> None:
    assert runner.run("pwd", cwd="/work/deep").stdout == "/work/deep\n"
    assert (runner.rootfs / "work" / "deep").is_dir()


def test_user_by_name_gets_its_groups(runner: Runner) -> None:
    out = runner.run("id", user="app").stdout
    assert out.startswith("uid=1000(app) gid=1000(app)")
    assert "2000(extra)" in out.split("groups=")[1]


def test_user_by_uid_and_gid(runner: Runner) -> None:
    assert runner.run("id", user="1000:2000").stdout.startswith(
        "uid=1000(app) gid=2000(extra)"
    )
    assert runner.run("id", user="nobody").stdout.startswith("uid=65534(nobody)")
    assert runner.run("id").stdout.startswith("uid=0(root) gid=0(root)")


def test_capabilities_are_dockers_default_set(runner: Runner) -> None:
    root = runner.sh("grep -E 'CapEff|CapBnd' /proc/self/status").stdout
    assert root.split() == [
        "CapEff:",
        DOCKER_DEFAULT_CAPS,
        "CapBnd:",
        DOCKER_DEFAULT_CAPS,
    ]
    app = runner.sh("grep -E 'CapEff|CapBnd' /proc/self/status", user="app").stdout
    assert app.split() == ["CapEff:", "0" * 16, "CapBnd:", DOCKER_DEFAULT_CAPS]


def test_hostname(runner: Runner) -> None:
    assert runner.run("hostname").stdout == "buildkitsandbox\n"
    assert runner.run("hostname", hostname="builder").stdout == "builder\n"


def test_step_is_pid_1(runner: Runner) -> None:
    assert runner.run("cat", "/proc/1/cmdline").stdout == "cat\0/proc/1/cmdline\0"


def test_network_none_has_only_loopback(runner: Runner) -> None:
    result = runner.sh(
        "ls /sys/class/net; cat /sys/class/net/lo/operstate", network="none"
    )
    names = result.stdout.split()
    assert names[:-1] == ["lo"]
    assert names[-1] == "unknown"  # up: a down loopback reads "down"


def test_host_network_sees_the_hosts_interfaces(runner: Runner) -> None:
    names = runner.run("ls", "/sys/class/net").stdout.split()
    assert sorted(names) == sorted(os.listdir("/sys/class/net"))


def test_etc_hosts_and_resolv_conf(runner: Runner) -> None:
    result = runner.sh("cat /etc/hosts; echo ---; cat /etc/resolv.conf")
    hosts, resolv = result.stdout.split("---\n")
    assert "127.0.0.1\tlocalhost buildkitsandbox" in hosts.splitlines()
    assert resolv == Path("/etc/resolv.conf").read_text()
    denied = runner.sh("echo x >> /etc/hosts")
    assert denied.code != 0


def test_dev_proc_and_sys(runner: Runner) -> None:
    listing = runner.run("ls", "/dev").stdout.split()
    for name in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm"):
        assert name in listing
    assert (
        runner.sh("echo hi > /dev/null && head -c 4 /dev/urandom | wc -c").stdout
        == "4\n"
    )
    assert runner.sh("touch /sys/x").code != 0  # sysfs is read-only


def test_masked_and_readonly_paths(runner: Runner) -> None:
    # Which masked paths exist depends on the kernel: check those the host has.
    present = [p for p in MASKED_PATHS if os.path.exists(p)]
    if not present:
        pytest.skip("none of runc's masked paths exists on this kernel")
    for path in present:
        command = f"ls -A {path} | wc -l" if os.path.isdir(path) else f"wc -c < {path}"
        assert runner.sh(command).stdout.strip() == "0", path
    assert runner.sh("echo changed > /proc/sys/kernel/hostname").code != 0
    assert runner.run("hostname").stdout == "buildkitsandbox\n"


def _tree(root: Path) -> set[str]:
    paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            paths.add(os.path.relpath(os.path.join(dirpath, name), root))
    return paths


def test_no_mount_point_stub_is_left(runner: Runner) -> None:
    before = _tree(runner.rootfs)
    assert runner.sh("ls /proc/self /dev/pts /etc/hosts > /dev/null").code == 0
    assert _tree(runner.rootfs) == before


def test_a_stub_the_step_filled_is_kept(runner: Runner) -> None:
    # The mount on /a/b needs stubs /a and /a/b; the step writes into /a.
    tmpfs = Mount(destination="/a/b", type="tmpfs", source="tmpfs")
    result = runner.sh("echo x > /a/c && echo y > /a/b/d", mounts=[tmpfs])
    assert result.code == 0, result.stderr
    assert (runner.rootfs / "a" / "c").read_text() == "x\n"
    assert not (runner.rootfs / "a" / "b").exists()


def test_a_missing_command_is_an_executor_error(runner: Runner) -> None:
    with pytest.raises(ExecutorError, match="no-such-command"):
        runner.run("no-such-command")


def _step_processes(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:  # exited while we looked
            continue
        if marker.encode() in cmdline.split(b"\0"):
            pids.append(int(entry))
    return pids


def test_cancellation_kills_the_step_and_leaves_nothing(
    executor: Executor, rootfs: Path, tmp_path: Path
) -> None:
    marker = "987654"  # a sleep this long is ours
    bundle = tmp_path / "bundle"
    spec = ProcessSpec(args=["sh", "-c", f"exec sleep {marker}"], env=[])
    make_bundle(bundle, rootfs, spec)
    seen: list[list[int]] = []

    async def sink(fd: int, chunk: bytes) -> None:
        pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, bundle, "cancelled", sink)
            # Wait (bounded) until the step's process exists, then cancel.
            with trio.fail_after(10):
                while not _step_processes(marker):
                    await trio.sleep(0.01)
            seen.append(_step_processes(marker))
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen and seen[0], "the step never started"
    assert _step_processes(marker) == []
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert str(rootfs) not in mountinfo
    assert not (rootfs / "proc").exists()
    if isinstance(executor, RuncExecutor):
        listed = subprocess.run(
            [executor.binary, "--root", str(executor.state_dir), "list", "-q"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert listed.stdout == ""


def test_no_file_descriptor_leaks(runner: Runner) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    assert runner.sh("exit 5").code == 5
    with pytest.raises(ExecutorError):
        runner.run("no-such-command")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_seccomp_default_profile_blocks_new_namespaces(runner: Runner) -> None:
    """docker's default profile: no unshare without CAP_SYS_ADMIN, keyctl
    family blocked; ordinary syscalls pass, under every executor."""
    result = runner.sh("unshare -U true; echo rc=$?; uname -s")
    assert "rc=1" in result.stdout and "Linux" in result.stdout
    assert "Operation not permitted" in result.stderr
    unconfined = runner.sh("unshare -U true && echo allowed", seccomp=False)
    assert "allowed" in unconfined.stdout
