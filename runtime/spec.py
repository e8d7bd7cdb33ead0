"""OCI runtime bundles for build steps: config.json, hosts, resolv.conf.

Theory of operation
-------------------
``make_bundle`` writes a bundle directory that any OCI runtime (runc, crun,
buildpy's builtin executor) can run::

    bundle_dir/config.json   the OCI runtime spec config (runtime-spec 1.0)
    bundle_dir/hosts         bind-mounted read-only on /etc/hosts
    bundle_dir/resolv.conf   bind-mounted read-only on /etc/resolv.conf
    bundle_dir/stubs.json    rootfs paths that did not exist before the run

The config follows what docker gives a build step (BuildKit's executor/oci):
the default mounts, masked and read-only paths and capability set of runc's
default spec; pid, mount, uts and ipc namespaces, plus a network namespace only
for network "none"; rlimits only those ``--ulimit`` asks for (the others are
the builder's own; a hard limit above the builder's needs CAP_SYS_RESOURCE) and
no cgroup resource limits; /dev/shm of 64 MiB unless ``--shm-size`` says;
docker's default seccomp profile (runtime.seccomp), which runc and crun apply.

Mount-point stubs: a runtime creates the destination of every mount that is
missing in the rootfs (an empty /proc, /etc/hosts, ...). Those must not land in
a layer, so ``make_bundle`` records, before the run, every path component of a
mount destination that does not exist yet, and ``remove_stubs`` (called by the
executors after the run) removes those that are still an empty directory or an
empty file. A stub the step filled is kept: it is the step's output.

All paths inside the rootfs are resolved with ``secure_join``: a symlink in the
rootfs is followed as the container would see it, never out onto the host.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import StepSpecError, UserNotFound
from runtime.seccomp import default_profile

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOSTNAME = "buildkitsandbox"
STUBS_FILE = "stubs.json"

# Docker's default capability set (moby oci/caps/defaults.go, containerd's
# default spec; BUILDKIT-STUDY 5.4).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# runc's default spec (`runc spec`): paths hidden from, or read-only to, the step.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# Symlink loops in a rootfs must end; Linux's own limit is 40 per lookup.
_MAX_SYMLINKS = 255


@dataclass(frozen=True)
class Mount:
    """An extra mount in the container, as in the OCI config's "mounts"."""

    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessSpec:
    """What a build step runs and how its container is set up."""

    args: Sequence[str]
    env: Sequence[str]  # KEY=VALUE; docker's default PATH is added when absent
    cwd: str = "/"  # created in the rootfs when missing
    user: str = ""  # "", "name", "uid", "name:group", "uid:gid"
    network: str = "host"  # "host": no net namespace; "none": a new empty one
    hostname: str = DEFAULT_HOSTNAME
    mounts: Sequence[Mount] = ()
    terminal: bool = False
    seccomp: bool = True  # docker's default profile (runtime.seccomp)
    extra_hosts: Sequence[tuple[str, str]] = ()  # (name, address) for /etc/hosts
    shm_size: int = 0  # /dev/shm's size in bytes; 0: docker's 64 MiB
    ulimits: Sequence[tuple[str, int, int]] = ()  # (name, soft, hard); -1: unlimited
    privileged: bool = False  # RUN --security=insecure, allowed by the build


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]


# -- paths inside the rootfs ------------------------------------------------------


def secure_join(root: Path, path: str) -> Path:
    """``root/path`` with every symlink resolved as if ``root`` were "/".

    ".." and absolute symlink targets stop at ``root``, so the result is always
    inside it. Missing components are kept as they are written.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_SYMLINKS:
                raise StepSpecError(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def missing_components(root: Path, path: str) -> list[str]:
    """The rootfs-relative paths a runtime would create to mount on ``path``,
    outermost first (empty when ``path`` already exists)."""
    target = secure_join(root, path)
    rel = target.relative_to(root).parts
    missing: list[str] = []
    for i in range(1, len(rel) + 1):
        if missing or not os.path.lexists(root.joinpath(*rel[:i])):
            missing.append("/".join(rel[:i]))
    return missing


def remove_stubs(bundle_dir: Path) -> None:
    """Remove the mount-point stubs recorded by ``make_bundle`` that are still
    empty. Deepest first, so an emptied parent goes too. Best effort: a stub
    that cannot be removed stays, as it would under BuildKit."""
    record = bundle_dir / STUBS_FILE
    try:
        data = json.loads(record.read_text())
    except FileNotFoundError:
        return
    root = Path(data["rootfs"])
    for rel in sorted(data["paths"], key=lambda p: p.count("/"), reverse=True):
        path = root / rel
        try:
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                if not any(path.iterdir()):
                    path.rmdir()
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                path.unlink()
        except OSError:
            continue
    record.unlink()


# -- users ------------------------------------------------------------------------


def _entries(root: Path, name: str) -> Iterator[list[str]]:
    """The colon-split lines of rootfs /etc/passwd or /etc/group, if any."""
    path = secure_join(root, f"/etc/{name}")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line.split(":")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return


def _parse_id(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def resolve_user(root: Path, user: str) -> ResolvedUser:
    """Resolve USER the way docker does (moby/sys/user GetExecUser).

    "" is root; "uid:gid" in numbers is taken as is; a name must be in the
    rootfs's /etc/passwd, a numeric uid need not be. Without an explicit group
    the user's groups in /etc/group become the additional gids.
    """
    if not user:
        return ResolvedUser(0, 0, ())
    user_arg, _, group_arg = user.partition(":")
    uid_num, gid_num = _parse_id(user_arg), _parse_id(group_arg)
    if uid_num is not None and gid_num is not None:
        return ResolvedUser(uid_num, gid_num, ())

    uid, gid, name = uid_num, 0, ""
    for fields in _entries(root, "passwd"):
        if len(fields) < 4:
            continue
        if fields[0] == user_arg or (uid_num is not None and fields[2] == user_arg):
            uid, gid, name = int(fields[2]), int(fields[3]), fields[0]
            break
    if uid is None:
        raise UserNotFound(
            f"unable to find user {user_arg}: no matching entries in passwd file"
        )

    groups = [f for f in _entries(root, "group") if len(f) >= 3]
    if group_arg:
        for fields in groups:
            if group_arg in (fields[0], fields[2]):
                return ResolvedUser(uid, int(fields[2]), ())
        if gid_num is None:
            raise UserNotFound(
                f"unable to find group {group_arg}: no matching entries in group file"
            )
        return ResolvedUser(uid, gid_num, ())
    extra: list[int] = []
    if name:
        for fields in groups:
            members = fields[3].split(",") if len(fields) > 3 else []
            if name in members and int(fields[2]) not in extra:
                extra.append(int(fields[2]))
    return ResolvedUser(uid, gid, tuple(extra))


# -- the config -------------------------------------------------------------------


def all_capabilities() -> list[str]:
    """Every capability the builder itself holds, for a privileged step: all
    that the kernel knows, unless the builder runs in a container that took
    some away (CAP_SYS_RESOURCE here: MACHINE-NOTES.md), and a step cannot be
    given more than its builder has."""
    from runtime._libc import CAPABILITIES

    held = (1 << (max(CAPABILITIES.values()) + 1)) - 1  # unreadable: all
    for field in ("CapPrm", "CapBnd"):
        mask = _own_capabilities(field)
        held &= held if mask is None else mask
    return [name for name, bit in CAPABILITIES.items() if held >> bit & 1]


def _own_capabilities(field: str) -> int | None:
    """A capability set of this process (``CapEff``, ``CapPrm``, ``CapBnd``)
    from /proc/self/status, as a mask; None when it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


# Under /dev, what is not a device of the host's: each container has its own.
_NOT_HOST_DEVICES = ("pts", "shm", "mqueue", "fd", "console")


def host_devices() -> list[dict[str, Any]]:
    """The host's device nodes as OCI ``linux.devices``, for a privileged step
    (containerd's WithHostDevices)."""
    devices = []
    for top, dirs, files in os.walk("/dev"):
        if top == "/dev":
            dirs[:] = [d for d in dirs if d not in _NOT_HOST_DEVICES]
        for name in files:
            path = os.path.join(top, name)
            if top == "/dev" and name in _NOT_HOST_DEVICES:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            devices.append(
                {
                    "path": path,
                    "type": kind,
                    "major": os.major(st.st_rdev),
                    "minor": os.minor(st.st_rdev),
                    "fileMode": stat.S_IMODE(st.st_mode),
                    "uid": st.st_uid,
                    "gid": st.st_gid,
                }
            )
    return sorted(devices, key=lambda d: d["path"])


def _default_mounts(
    bundle_dir: Path, shm_size: int = 0, *, writable_sys: bool = False
) -> list[dict[str, Any]]:
    nosuid_noexec_nodev = ["nosuid", "noexec", "nodev"]
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": nosuid_noexec_nodev,
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": [
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": nosuid_noexec_nodev
            + ["mode=1777", f"size={shm_size}" if shm_size else "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": nosuid_noexec_nodev,
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": nosuid_noexec_nodev + ([] if writable_sys else ["ro"]),
        },
        {
            "destination": "/etc/hosts",
            "type": "bind",
            "source": str(bundle_dir / "hosts"),
            "options": ["rbind", "ro"],
        },
        {
            "destination": "/etc/resolv.conf",
            "type": "bind",
            "source": str(bundle_dir / "resolv.conf"),
            "options": ["rbind", "ro"],
        },
    ]


def in_user_namespace() -> bool:
    """True in a user namespace other than the host's (rootless buildpy)."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def _gid_mapped(gid: int) -> bool:
    try:
        with open("/proc/self/gid_map", encoding="ascii") as f:
            for line in f:
                inside, _, count = (int(x) for x in line.split())
                if inside <= gid < inside + count:
                    return True
    except OSError:
        return True
    return False


def _rootless_mounts(
    mounts: list[dict[str, Any]], network: str
) -> list[dict[str, Any]]:
    """The default mounts as a user namespace allows them (runc's rootless spec):
    a sysfs needs a network namespace of our own, so with the host's network
    /sys is the host's, bound read-only; devpts's gid=5 only when gid 5 exists."""
    if not in_user_namespace():
        return mounts
    out = []
    for mount in mounts:
        if mount["type"] == "sysfs" and network != "none":
            options = ["rbind", "nosuid", "noexec", "nodev", "ro"]
            mount = {**mount, "type": "bind", "source": "/sys", "options": options}
        elif mount["type"] == "devpts" and not _gid_mapped(5):
            options = [o for o in mount["options"] if o != "gid=5"]
            mount = {**mount, "options": options}
        out.append(mount)
    return out


def _env_with_path(env: Sequence[str]) -> list[str]:
    out = list(env)
    if not any(item.startswith("PATH=") for item in out):
        out.append(f"PATH={DEFAULT_PATH}")
    return out


def build_config(
    bundle_dir: Path, rootfs: Path, spec: ProcessSpec, user: ResolvedUser
) -> dict[str, Any]:
    """The OCI config for ``spec``; pure, writes nothing."""
    if spec.network not in ("host", "none"):
        raise StepSpecError(
            f"unsupported network mode {spec.network!r}: expected 'host' or 'none'"
        )
    if not spec.args:
        raise StepSpecError("the step has no command: args is empty")
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if spec.network == "none":
        namespaces.append({"type": "network"})
    caps = all_capabilities() if spec.privileged else list(DEFAULT_CAPABILITIES)
    # As docker does, a non-root step starts with no effective capabilities;
    # the bounding and permitted sets are the default set either way.
    effective = caps if user.uid == 0 else []
    extra_mounts = [
        {
            "destination": m.destination,
            "type": m.type,
            "source": m.source,
            "options": list(m.options),
        }
        for m in spec.mounts
    ]
    linux: dict[str, Any] = {
        # Device access is a security setting, not a resource limit: deny
        # all but the default nodes, as containerd's default spec does.
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if spec.privileged:
        # BuildKit's insecure mode, docker's --privileged: every capability and
        # host device, nothing masked or read-only, no seccomp filter.
        linux.update(
            resources={"devices": [{"allow": True, "access": "rwm"}]},
            devices=host_devices(),
            maskedPaths=[],
            readonlyPaths=[],
        )
    profile = default_profile() if spec.seccomp and not spec.privileged else None
    if profile is not None:
        linux["seccomp"] = profile
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": spec.terminal,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                "additionalGids": list(user.additional_gids),
            },
            "args": list(spec.args),
            "env": _env_with_path(spec.env),
            "cwd": spec.cwd or "/",
            "capabilities": {
                "bounding": caps,
                "effective": effective,
                "permitted": caps,
            },
            "noNewPrivileges": False,  # BuildKit lets setuid binaries (sudo) work
            **({"rlimits": rlimits(spec.ulimits)} if spec.ulimits else {}),
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": spec.hostname,
        "mounts": _rootless_mounts(
            _default_mounts(bundle_dir, spec.shm_size, writable_sys=spec.privileged),
            spec.network,
        )
        + extra_mounts,
        "linux": linux,
    }


# The names ``--ulimit`` takes, as docker's (its go-units table): each is the
# RLIMIT_ constant of the same name, upper-cased.
ULIMIT_NAMES = (
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
    "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
RLIM_INFINITY = 2**64 - 1  # the spec's rlimits are uint64; -1 is unlimited


def rlimits(ulimits: Sequence[tuple[str, int, int]]) -> list[dict[str, Any]]:
    """The OCI ``process.rlimits`` of ``--ulimit`` values (name, soft, hard)."""

    def limit(value: int) -> int:
        return RLIM_INFINITY if value < 0 else value

    return [
        {"type": f"RLIMIT_{name.upper()}", "soft": limit(soft), "hard": limit(hard)}
        for name, soft, hard in ulimits
    ]


def ulimit_beyond_reach(ulimits: Sequence[tuple[str, int, int]]) -> str | None:
    """Why one of ``ulimits`` cannot be set for a step, or None: a hard limit
    above this process's own needs CAP_SYS_RESOURCE, which a builder in a
    container often lacks (MACHINE-NOTES.md)."""
    import resource

    from runtime._libc import CAPABILITIES

    effective = _own_capabilities("CapEff")
    if effective is None or effective >> CAPABILITIES["CAP_SYS_RESOURCE"] & 1:
        return None  # held, or cannot tell: the runtime will say
    for name, _soft, hard in ulimits:
        current = resource.getrlimit(getattr(resource, f"RLIMIT_{name.upper()}"))[1]
        if current == resource.RLIM_INFINITY:
            continue
        if hard < 0 or hard > current:
            shown = "unlimited" if hard < 0 else str(hard)
            return (
                f"--ulimit {name}: the hard limit {shown} is above this builder's "
                f"({current}), and raising it needs CAP_SYS_RESOURCE"
            )
    return None


def _write_etc_files(
    bundle_dir: Path, hostname: str, extra_hosts: Sequence[tuple[str, str]]
) -> None:
    lines = [
        f"127.0.0.1\tlocalhost {hostname}",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        *(f"{address}\t{name}" for name, address in extra_hosts),
    ]
    (bundle_dir / "hosts").write_text("\n".join(lines) + "\n")
    resolv = bundle_dir / "resolv.conf"
    try:
        shutil.copyfile("/etc/resolv.conf", resolv)
    except FileNotFoundError:
        resolv.write_text("")


def make_bundle(bundle_dir: Path, rootfs: Path, spec: ProcessSpec) -> dict[str, Any]:
    """Write the bundle for ``spec`` on ``rootfs`` into ``bundle_dir`` and return
    its config. Creates the working directory in the rootfs when missing and
    records the mount-point stubs the run will create (see the module doc).

    Raises UserNotFound for a user or group the rootfs does not know and
    StepSpecError for other impossible specs.
    """
    rootfs = Path(os.path.abspath(rootfs))
    bundle_dir = Path(os.path.abspath(bundle_dir))
    user = resolve_user(rootfs, spec.user)
    config = build_config(bundle_dir, rootfs, spec, user)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    _write_etc_files(bundle_dir, spec.hostname, spec.extra_hosts)

    # The working directory belongs to the step's output (docker keeps a
    # WORKDIR it created), so it is made before the stubs are recorded.
    cwd = secure_join(rootfs, config["process"]["cwd"])
    cwd.mkdir(parents=True, exist_ok=True, mode=0o755)

    stubs: list[str] = []
    for mount in config["mounts"]:
        for rel in missing_components(rootfs, mount["destination"]):
            if rel not in stubs:
                stubs.append(rel)
    (bundle_dir / STUBS_FILE).write_text(
        json.dumps({"rootfs": str(rootfs), "paths": stubs})
    )
    (bundle_dir / "config.json").write_text(json.dumps(config, indent=2))
    return config
