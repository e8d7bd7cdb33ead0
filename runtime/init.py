"""buildpy's builtin container init: ``python -m runtime.init BUNDLE STATE_DIR``.

Theory of operation
-------------------
This runs the part of the OCI runtime spec that build steps need, from a
bundle's config.json, with ctypes on libc. Two processes take part:

* the *outer* process (this program) unshares the namespaces the config lists
  but the mount namespace, then forks. It writes the child's pid to
  ``STATE_DIR/pid``, forwards the signals it can catch (SIGTERM, SIGINT, ...)
  to the child, waits for it and exits with its exit code, or 128+N when
  signal N killed it.
* the *child* is pid 1 of the new pid namespace. It asks for SIGKILL when the
  outer process dies (PR_SET_PDEATHSIG), unshares the mount namespace (its
  own: pivot_root would move the outer process too), makes every mount
  private, binds the rootfs onto itself, mounts what "mounts" lists, adds
  the device nodes (bind mounts of the host's), pivots into the rootfs,
  applies masked and read-only paths, sets the hostname, groups, gid, uid
  and capabilities, changes to the working directory and execs the step.

Invariants that keep the host clean:
* every mount happens in the child's new, private mount namespace, so none
  is visible outside and all go away when the last process in it exits;
* the step is pid 1 of its pid namespace: when it exits, the kernel kills and
  reaps every process left in the namespace before the outer process can reap
  the step. So once the outer process has exited, no process of the step is left;
* the child dies with the outer process (PDEATHSIG; a pipe tells the child if
  the outer process died before it asked for that).

A failure before the exec (a mount, a missing command) is written by the child
to a close-on-exec pipe; the outer process stores it in ``STATE_DIR/error``
and exits 1, and the executor raises it as an ExecutorError.

The seccomp profile of the config (docker's default) is compiled with
libseccomp and loaded just before the capabilities drop (runtime.seccomp.load).

With "terminal" set, the child makes a pty of the container's devpts its
stdio and sends the master to the outer process, which copies between it and
its own stdio (runtime.console).

Not applied (the executor's docstring says so too): AppArmor/SELinux,
cgroups (no resource limits, and no device cgroup: the step's CAP_MKNOD nodes
are not restricted), ambient capabilities.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
from fcntl import ioctl
from pathlib import Path
from typing import Any, NoReturn

from runtime import _libc, console, seccomp
from runtime.spec import RLIM_INFINITY, secure_join

_NAMESPACES = {
    "pid": _libc.CLONE_NEWPID,
    "mount": _libc.CLONE_NEWNS,
    "uts": _libc.CLONE_NEWUTS,
    "ipc": _libc.CLONE_NEWIPC,
    "network": _libc.CLONE_NEWNET,
    "cgroup": _libc.CLONE_NEWCGROUP,
}

# Mount options that are flags; (flag, set?) as in mount(8).
_MOUNT_FLAGS = {
    "ro": (_libc.MS_RDONLY, True),
    "rw": (_libc.MS_RDONLY, False),
    "nosuid": (_libc.MS_NOSUID, True),
    "suid": (_libc.MS_NOSUID, False),
    "nodev": (_libc.MS_NODEV, True),
    "dev": (_libc.MS_NODEV, False),
    "noexec": (_libc.MS_NOEXEC, True),
    "exec": (_libc.MS_NOEXEC, False),
    "sync": (_libc.MS_SYNCHRONOUS, True),
    "async": (_libc.MS_SYNCHRONOUS, False),
    "dirsync": (_libc.MS_DIRSYNC, True),
    "mand": (_libc.MS_MANDLOCK, True),
    "nomand": (_libc.MS_MANDLOCK, False),
    "noatime": (_libc.MS_NOATIME, True),
    "atime": (_libc.MS_NOATIME, False),
    "nodiratime": (_libc.MS_NODIRATIME, True),
    "diratime": (_libc.MS_NODIRATIME, False),
    "relatime": (_libc.MS_RELATIME, True),
    "norelatime": (_libc.MS_RELATIME, False),
    "strictatime": (_libc.MS_STRICTATIME, True),
    "nostrictatime": (_libc.MS_STRICTATIME, False),
}
_PROPAGATION = {
    "private": _libc.MS_PRIVATE,
    "rprivate": _libc.MS_PRIVATE | _libc.MS_REC,
    "slave": _libc.MS_SLAVE,
    "rslave": _libc.MS_SLAVE | _libc.MS_REC,
    "shared": _libc.MS_SHARED,
    "rshared": _libc.MS_SHARED | _libc.MS_REC,
}
# statvfs flags a bind remount must keep (the kernel refuses to drop locked ones).
_STATVFS_KEEP = {
    os.ST_NOSUID: _libc.MS_NOSUID,
    os.ST_NODEV: _libc.MS_NODEV,
    os.ST_NOEXEC: _libc.MS_NOEXEC,
    os.ST_NOATIME: _libc.MS_NOATIME,
    os.ST_NODIRATIME: _libc.MS_NODIRATIME,
    os.ST_RELATIME: _libc.MS_RELATIME,
}
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_SYMLINKS = {
    "ptmx": "pts/ptmx",
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
_FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


class SetupError(Exception):
    """The container could not be set up; the message says which step failed."""


# -- mounts -----------------------------------------------------------------------


def _parse_options(options: list[str]) -> tuple[int, int, str, bool]:
    """(flags, propagation, data, recursive bind) for an OCI mount's options."""
    flags = propagation = 0
    data: list[str] = []
    recursive = False
    for opt in options:
        if opt in _MOUNT_FLAGS:
            flag, on = _MOUNT_FLAGS[opt]
            flags = flags | flag if on else flags & ~flag
        elif opt in _PROPAGATION:
            propagation = _PROPAGATION[opt]
        elif opt in ("bind", "rbind"):
            flags |= _libc.MS_BIND
            recursive = recursive or opt == "rbind"
        else:
            data.append(opt)
    return flags, propagation, ",".join(data), recursive


def _kept_flags(path: str) -> int:
    current = os.statvfs(path).f_flag
    return sum(ms for st, ms in _STATVFS_KEEP.items() if current & st)


def _make_mountpoint(dest: Path, as_file: bool) -> None:
    if os.path.lexists(dest):
        return
    if as_file:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.touch()
    else:
        dest.mkdir(parents=True, exist_ok=True)


def _mount_one(rootfs: Path, mount: dict[str, Any]) -> None:
    options = list(mount.get("options", []))
    if mount.get("type") == "bind" and not ({"bind", "rbind"} & set(options)):
        options.append("rbind")
    flags, propagation, data, recursive = _parse_options(options)
    dest = secure_join(rootfs, mount["destination"])
    source = mount.get("source", "none")
    is_bind = bool(flags & _libc.MS_BIND)
    _make_mountpoint(dest, is_bind and not os.path.isdir(source))
    target = str(dest)
    if is_bind:
        _libc.mount(source, target, None, _libc.MS_BIND | (_libc.MS_REC * recursive))
        extra = flags & ~_libc.MS_BIND
        if extra:
            # A bind mount takes its flags only from a remount of itself.
            remount = _libc.MS_BIND | _libc.MS_REMOUNT | extra | _kept_flags(target)
            _libc.mount(None, target, None, remount)
    else:
        _libc.mount(source, target, mount.get("type"), flags, data)
    if propagation:
        _libc.mount(None, target, None, propagation)


def _add_devices(rootfs: Path) -> None:
    """The standard nodes, bound from the host's /dev (BUILDKIT-STUDY 5.4)."""
    dev = secure_join(rootfs, "/dev")
    for name in _DEVICES:
        node = dev / name
        if not os.path.exists(f"/dev/{name}"):
            continue
        _make_mountpoint(node, as_file=True)
        _libc.mount(f"/dev/{name}", str(node), None, _libc.MS_BIND)
    for name, target in _DEV_SYMLINKS.items():
        if not os.path.lexists(dev / name):
            os.symlink(target, dev / name)


def _add_listed_devices(rootfs: Path, devices: list[dict[str, Any]]) -> None:
    """``linux.devices`` (a privileged step's host devices), each bound from
    the host's node of the same path, as runc does in a user namespace."""
    for device in devices:
        path = device["path"]
        node = secure_join(rootfs, path)
        if not os.path.exists(path) or os.path.lexists(node):
            continue
        node.parent.mkdir(parents=True, exist_ok=True)
        _make_mountpoint(node, as_file=True)
        _libc.mount(path, str(node), None, _libc.MS_BIND)


def _readonly_path(path: str) -> None:
    if not os.path.exists(path):
        return
    _libc.mount(path, path, None, _libc.MS_BIND | _libc.MS_REC)
    flags = _libc.MS_BIND | _libc.MS_REMOUNT | _libc.MS_RDONLY | _libc.MS_REC
    _libc.mount(None, path, None, flags | _kept_flags(path))


def _mask_path(path: str) -> None:
    if not os.path.exists(path):
        return
    if os.path.isdir(path):
        _libc.mount("tmpfs", path, "tmpfs", _libc.MS_RDONLY)
    else:
        _libc.mount("/dev/null", path, None, _libc.MS_BIND)


def _pivot(rootfs: Path) -> None:
    # pivot_root(".", ".") stacks the old root on the new one; detaching it
    # then leaves only the rootfs (the trick runc uses, see pivot_root(2)).
    os.chdir(rootfs)
    _libc.pivot_root(".", ".")
    _libc.mount(None, ".", None, _libc.MS_SLAVE | _libc.MS_REC)
    _libc.umount2(".", _libc.MNT_DETACH)
    os.chdir("/")


def _loopback_up() -> None:
    """A new network namespace starts with lo down; runc brings it up too."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", ioctl(sock, siocgifflags, req))[1]
        ioctl(sock, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


# -- identity ---------------------------------------------------------------------


def _cap_mask(names: list[str]) -> int:
    mask = 0
    for name in names:
        if name not in _libc.CAPABILITIES:
            raise SetupError(f"unknown capability {name}")
        mask |= 1 << _libc.CAPABILITIES[name]
    return mask


def _set_identity(process: dict[str, Any], last_cap: int) -> None:
    caps = process.get("capabilities", {})
    bounding = _cap_mask(caps.get("bounding", []))
    for cap in range(last_cap + 1):
        if not bounding & (1 << cap):
            _libc.prctl(_libc.PR_CAPBSET_DROP, cap)
    user = process.get("user", {})
    # Keep the permitted set across setuid so that capset below can choose the
    # final sets for a non-root user too (runc does the same).
    _libc.prctl(_libc.PR_SET_KEEPCAPS, 1)
    os.setgroups(list(user.get("additionalGids", [])))
    os.setgid(int(user.get("gid", 0)))
    os.setuid(int(user.get("uid", 0)))
    _libc.capset(
        _cap_mask(caps.get("effective", [])),
        _cap_mask(caps.get("permitted", [])),
        _cap_mask(caps.get("inheritable", [])),
    )


def _set_rlimits(limits: list[dict[str, Any]]) -> None:
    for entry in limits:
        kind = entry["type"]
        which = getattr(resource, kind, None)
        if not isinstance(which, int):
            raise SetupError(f"rlimit {kind}: not a resource of this system")
        soft, hard = (
            resource.RLIM_INFINITY if v >= RLIM_INFINITY else v
            for v in (entry["soft"], entry["hard"])
        )
        try:
            resource.setrlimit(which, (soft, hard))
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SetupError(f"setting rlimit {kind}: {reason}") from exc


# -- the two processes ------------------------------------------------------------


def _exec(process: dict[str, Any]) -> NoReturn:
    args = list(process["args"])
    env = dict(item.split("=", 1) for item in process.get("env", []) if "=" in item)
    try:
        os.execvpe(args[0], args, env)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise SetupError(
                f'exec: "{args[0]}": executable file not found in $PATH'
            ) from exc
        raise SetupError(f'exec: "{args[0]}": {exc.strerror}') from exc


def _outer_alive(errw: int) -> bool:
    poller = select.poll()
    poller.register(errw, select.POLLOUT)
    return not any(ev & select.POLLERR for _, ev in poller.poll(0))


def _container(
    bundle: Path,
    config: dict[str, Any],
    errw: int,
    mount_ns: int,
    console_sock: socket.socket | None = None,
) -> NoReturn:
    _libc.prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if not _outer_alive(errw):
        os._exit(1)
    if not mount_ns:
        raise SetupError("the builtin executor needs a mount namespace")
    _libc.unshare(mount_ns)
    root = Path(config["root"]["path"])
    rootfs = root if root.is_absolute() else bundle / root
    namespaces = {ns["type"] for ns in config.get("linux", {}).get("namespaces", [])}
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())

    _libc.mount(None, "/", None, _libc.MS_REC | _libc.MS_PRIVATE)
    _libc.mount(str(rootfs), str(rootfs), None, _libc.MS_BIND | _libc.MS_REC)
    for mount in config.get("mounts", []):
        try:
            _mount_one(rootfs, mount)
        except OSError as exc:
            raise SetupError(f"mount {mount['destination']}: {exc}") from exc
    if any(m["destination"] == "/dev" for m in config.get("mounts", [])):
        _add_devices(rootfs)
    _add_listed_devices(rootfs, config.get("linux", {}).get("devices", []))
    if "network" in namespaces:
        _loopback_up()
    linux = config.get("linux", {})
    # Compiled while libseccomp is in sight, loaded after the pivot.
    profile = linux.get("seccomp")
    filter_ = seccomp.compile_profile(profile) if profile else None
    _pivot(rootfs)
    for path in linux.get("readonlyPaths", []):
        _readonly_path(path)
    for path in linux.get("maskedPaths", []):
        _mask_path(path)
    if "uts" in namespaces and config.get("hostname"):
        _libc.sethostname(config["hostname"])

    process = config["process"]
    if console_sock is not None:
        # The pty of the container's own devpts (runtime.console explains).
        master, slave = console.open_pty()
        console.copy_winsize(0, master)  # before the step can ask for it
        console.send_fd(console_sock, master)
        os.close(master)
        console_sock.close()
        console.become_terminal_owner(slave)
    if filter_ is not None:
        # Before capabilities drop: a filter without no_new_privs needs
        # CAP_SYS_ADMIN. The syscalls left until the exec are all allowed.
        filter_.load()
    _set_rlimits(process.get("rlimits", []))  # while still privileged
    _set_identity(process, last_cap)
    try:
        os.chdir(process.get("cwd", "/"))
    except OSError as exc:
        raise SetupError(f"chdir to {process.get('cwd')}: {exc.strerror}") from exc
    _exec(process)


def _forward_signals(pid: int) -> None:
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)


def _attach(sock: socket.socket) -> None:
    """Copy between our stdio (the caller's terminal) and the step's pty until
    the step is gone; the window size follows ours."""
    master = console.receive_fd(sock)
    try:
        console.copy_winsize(0, master)
        signal.signal(signal.SIGWINCH, lambda _s, _f: console.copy_winsize(0, master))
        with console.raw_terminal(0):
            console.relay(master, 0, 1)
    finally:
        os.close(master)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m runtime.init BUNDLE STATE_DIR", file=sys.stderr)
        return 2
    bundle, state = Path(argv[1]), Path(argv[2])
    config = json.loads((bundle / "config.json").read_text())
    flags = 0
    for ns in config.get("linux", {}).get("namespaces", []):
        if ns.get("path"):
            raise SetupError(f"joining namespace {ns['path']} is not supported")
        flags |= _NAMESPACES[ns["type"]]
    # The mount namespace is the child's alone: pivot_root moves the root of
    # every process in the namespace, and the outer process must keep the
    # host's view (it writes to STATE_DIR).
    _libc.unshare(flags & ~_libc.CLONE_NEWNS)
    errr, errw = os.pipe()  # close-on-exec: EOF on the exec of the step
    terminal = bool(config["process"].get("terminal"))
    ours, theirs = socket.socketpair() if terminal else (None, None)
    pid = os.fork()
    if pid == 0:
        os.close(errr)
        try:
            if ours is not None:
                ours.close()
            _container(bundle, config, errw, flags & _libc.CLONE_NEWNS, theirs)
        except BaseException as exc:  # noqa: B036 - the child must never return
            os.write(errw, str(exc).encode(errors="replace")[:4096])
        os._exit(1)
    os.close(errw)
    _forward_signals(pid)
    _write_atomic(state / "pid", str(pid))
    message = b""
    while chunk := os.read(errr, 4096):
        message += chunk
    os.close(errr)
    if ours is not None and theirs is not None:
        theirs.close()
        if not message:
            _attach(ours)
        ours.close()
    _, status = os.waitpid(pid, 0)
    if message:
        _write_atomic(state / "error", message.decode(errors="replace"))
        return 1
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, SetupError, KeyError, ValueError) as exc:
        # Before the fork: nothing runs yet, the executor reports this.
        if len(sys.argv) == 3:
            _write_atomic(Path(sys.argv[2]) / "error", f"builtin init: {exc}")
        print(f"buildpy-init: {exc}", file=sys.stderr)
        sys.exit(1)
