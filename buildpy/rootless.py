"""Rootless buildpy: an unprivileged user's commands run in a user namespace.

Theory of operation
-------------------
Overlay mounts, bind mounts, chown to other users and the containers of RUN
steps all need privileges an unprivileged user lacks on the host, but has
inside a user namespace of its own (overlay since Linux 5.11, with the mount
option ``userxattr``). So a command that touches the store, run by a user who
is not root, first moves the whole buildpy process into a new user and mount
namespace and then executes itself again, where it is root and everything
else works as for root:

1. ``enter`` forks a helper, then unshares CLONE_NEWUSER | CLONE_NEWNS itself.
2. The helper, still in the host's namespaces, maps the process's user and
   group to root with newuidmap/newgidmap: the user's own id becomes 0 and its
   subordinate range from /etc/subuid and /etc/subgid becomes 1..N, so that
   apt, adduser and chown inside a RUN step can use other ids (what rootless
   podman and BuildKit do). Without a range, or without newuidmap, the process
   maps only its own id to 0 (a warning says what is lost: any id but root).
3. The process makes its mounts private and executes ``python -m buildpy``
   again with the same arguments, the same pid (signals and the exit code
   reach the caller unchanged) and ``$BUILDPY_ROOT`` set to the user's state
   root ($XDG_DATA_HOME/buildpy), chosen before the namespace hides who the
   user is.

Inside, ids are the namespace's: a file a step creates as root is uid 0 in the
layer, one of uid 1000 is 1000; on the host they belong to the user and to its
subordinate ids. Every mount lives in the process's own mount namespace and
goes away with it. Overlay keeps its bookkeeping in ``user.overlay.*`` xattrs
there (snapshotter.overlay and snapshotter.diff choose by
``in_user_namespace``); runc sees the namespace and runs in its rootless mode,
and the builtin executor binds /sys when it may not mount a sysfs.

Where the kernel or the system forbids a user namespace, ``enter`` raises
RootlessError with one line naming the setting and how to change it.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from buildpy.errors import InfraError
from buildpy.state import default_root

# Set in the namespace, so that the command does not enter one again.
MARKER = "BUILDPY_ROOTLESS"
# Commands that touch no store, and need no namespace.
_NO_STORE = ("lint", "debug")
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000


class RootlessError(InfraError):
    """The system does not let this user make a user namespace: the message
    names the setting that stops it and how to change it."""


def in_user_namespace() -> bool:
    """True in a user namespace other than the host's (whose uid_map maps all
    ids to themselves)."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            lines = f.read().split()
    except OSError:
        return False
    return lines != ["0", "0", "4294967295"]


def subordinate_range(path: Path, name: str, ident: int) -> tuple[int, int] | None:
    """(first id, count) of the first range /etc/subuid or /etc/subgid gives
    the user ``name`` (or its number ``ident``), or None."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) != 3 or fields[0] not in (name, str(ident)):
                    continue
                if fields[1].isdigit() and fields[2].isdigit() and int(fields[2]):
                    return int(fields[1]), int(fields[2])
    except FileNotFoundError:
        return None
    return None


def needs_namespace(args: argparse.Namespace) -> bool:
    if os.geteuid() == 0 or os.environ.get(MARKER):
        return False
    if args.command in _NO_STORE or (args.command == "build" and args.check):
        return False
    return True


def enter(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Run this command again in a user namespace when the user is not root
    and the command uses the store; returns only when no namespace is needed."""
    if not needs_namespace(args):
        return
    env = dict(os.environ)
    env[MARKER] = "1"
    if getattr(args, "root", None) is None and not env.get("BUILDPY_ROOT"):
        env["BUILDPY_ROOT"] = str(default_root())
    _unshare_and_map()
    _exec(argv, env)


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def _refusal(err: int) -> str:
    """One line: which setting keeps this user from a user namespace."""
    if _sysctl("kernel.unprivileged_userns_clone") == "0":
        return (
            "user namespaces are disabled for unprivileged users by "
            "kernel.unprivileged_userns_clone=0; enable them as root with "
            "`sysctl -w kernel.unprivileged_userns_clone=1`"
        )
    if _sysctl("user.max_user_namespaces") == "0":
        return (
            "user namespaces are disabled by user.max_user_namespaces=0; enable "
            "them as root with `sysctl -w user.max_user_namespaces=15000`"
        )
    if _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
        return (
            "AppArmor forbids unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1); allow them as root "
            "with `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`"
        )
    return (
        f"cannot create a user namespace: {os.strerror(err)}; rootless buildpy "
        "needs unprivileged user namespaces (Linux >= 5.11), or run it as root"
    )


def _plan() -> tuple[list[list[str]], str | None]:
    """The newuidmap/newgidmap commands for a full mapping of this user (with
    {pid} to fill in), or none and the warning that says why not."""
    uid, gid = os.getuid(), os.getgid()
    name = pwd.getpwuid(uid).pw_name
    uids = subordinate_range(Path("/etc/subuid"), name, uid)
    gids = subordinate_range(Path("/etc/subgid"), name, gid)
    newuidmap, newgidmap = shutil.which("newuidmap"), shutil.which("newgidmap")
    if uids is None or gids is None:
        which = "/etc/subuid" if uids is None else "/etc/subgid"
        return [], (
            f"warning: {name} has no subordinate id range in {which}: only root "
            f"exists in builds (add one as root: `usermod --add-subuids "
            f"100000-165535 --add-subgids 100000-165535 {name}`)"
        )
    if newuidmap is None or newgidmap is None:
        return [], (
            "warning: newuidmap/newgidmap not found: only root exists in builds "
            "(install them as root: `apt-get install uidmap`)"
        )
    return [
        [newuidmap, "{pid}", "0", str(uid), "1", "1", str(uids[0]), str(uids[1])],
        [newgidmap, "{pid}", "0", str(gid), "1", "1", str(gids[0]), str(gids[1])],
    ], None


def _unshare_and_map() -> None:
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    commands, warning = _plan()
    uid, gid = os.getuid(), os.getgid()
    pid = os.getpid()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    helper = os.fork() if commands else 0
    if commands and helper == 0:
        # The helper: waits until the parent has its namespace, maps it, and
        # reports the first failure (or nothing) on the pipe.
        os.close(go_w)
        os.close(done_r)
        code = 1
        try:
            if os.read(go_r, 1) == b"1":
                message = b""
                for command in commands:
                    argv = [a.replace("{pid}", str(pid)) for a in command]
                    done = subprocess.run(argv, capture_output=True, check=False)
                    if done.returncode != 0:
                        reason = done.stderr.decode(errors="replace").strip()
                        message = f"{' '.join(argv)}: {reason}".encode()
                        break
                os.write(done_w, message)
                code = 0
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(done_w)
    try:
        if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
            err = ctypes.get_errno()
            if commands:
                os.write(go_w, b"0")
                os.waitpid(helper, 0)
            raise RootlessError(_refusal(err))
        if commands:
            os.write(go_w, b"1")
            os.close(go_w)
            failure = b""
            while chunk := os.read(done_r, 4096):
                failure += chunk
            os.waitpid(helper, 0)
            if failure:
                raise RootlessError(
                    f"cannot map ids into the user namespace: "
                    f"{failure.decode(errors='replace')} (check /etc/subuid, "
                    f"/etc/subgid and that newuidmap is setuid root)"
                )
        else:
            print(warning, file=sys.stderr)
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
            Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    finally:
        for fd in (go_w, done_r):
            try:
                os.close(fd)
            except OSError:
                pass
    # Our mounts must not reach the host's namespace, nor the host's ours.
    ms_rec, ms_private = 0x4000, 1 << 18
    if libc.mount(b"none", b"/", None, ms_rec | ms_private, None) != 0:
        err = ctypes.get_errno()
        raise RootlessError(f"cannot make mounts private: {os.strerror(err)}")


def _exec(argv: Sequence[str], env: dict[str, str]) -> NoReturn:
    # Root of the namespace now: the credentials follow the exec.
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    os.execve(sys.executable, [sys.executable, "-m", "buildpy", *argv], env)


__all__ = [
    "MARKER",
    "RootlessError",
    "enter",
    "in_user_namespace",
    "needs_namespace",
    "subordinate_range",
]
