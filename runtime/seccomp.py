"""docker's default seccomp profile, as the OCI config's ``linux.seccomp``.

The profile lives in runtime/seccomp_default.json, written for buildpy from the
facts of docker's default profile (moby profiles/seccomp/default.json): which
syscalls a container with docker's default capability set may make. It is
already resolved for that set (CAP_SYS_CHROOT adds chroot; no CAP_SYS_ADMIN, so
no mount, unshare, setns, and clone only without namespace flags) and for
kernels >= 4.8 (ptrace allowed). Everything else fails with EPERM; clone3 fails
with ENOSYS so that libc falls back to clone, whose flags can be filtered.

runc and crun apply it; buildpy's builtin executor applies it with ``compile_profile``,
which compiles the profile to a BPF filter with libseccomp (through ctypes,
Debian's libseccomp2) and ``Filter.load`` loads it, as runc does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

PROFILE = Path(__file__).with_name("seccomp_default.json")


@cache
def _profile() -> dict[str, Any]:
    return json.loads(PROFILE.read_text())


def default_profile(machine: str | None = None) -> dict[str, Any] | None:
    """The profile for ``machine`` (default: this one) in the OCI config's form,
    or None for a machine the profile has no architectures for."""
    machine = machine or os.uname().machine
    profile = _profile()
    arches = profile["archMap"].get(machine)
    if arches is None:
        return None
    syscalls: list[dict[str, Any]] = []
    for rule in profile["syscalls"]:
        names = list(rule["names"])
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule:
            names += [n for n in profile["archSyscalls"].get(machine, [])]
        base: dict[str, Any] = {"names": names, "action": rule["action"]}
        if "errnoRet" in rule:
            base["errnoRet"] = rule["errnoRet"]
        if "args_any" in rule:
            # One rule per value: the args of one rule must all match.
            for value in rule["args_any"]:
                arg = {"index": 0, "value": value, "op": "SCMP_CMP_EQ"}
                syscalls.append({**base, "args": [arg]})
            continue
        if "args" in rule:
            base["args"] = rule["args"]
        syscalls.append(base)
    return {
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile["defaultErrnoRet"],
        "architectures": list(arches),
        "syscalls": syscalls,
    }


# -- loading a profile in the builtin executor ------------------------------------

# <seccomp.h>: actions and comparison operators of libseccomp's API.
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000
_FLTATR_CTL_NNP = 3
_OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_EPERM = 1


class SeccompError(Exception):
    """The profile could not be compiled or loaded; the message says why."""


def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ERRNO":
        return _ACT_ERRNO | ((_EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    fixed = {
        "SCMP_ACT_ALLOW": _ACT_ALLOW,
        "SCMP_ACT_KILL": _ACT_KILL_THREAD,
        "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
        "SCMP_ACT_TRAP": _ACT_TRAP,
        "SCMP_ACT_LOG": _ACT_LOG,
    }
    if name not in fixed:
        raise SeccompError(f"unsupported seccomp action {name}")
    return fixed[name]


class Filter:
    """A compiled filter, ready to load. Compile it while the host's files are
    in sight (libseccomp is loaded from them) and load it after pivot_root."""

    def __init__(self, lib: Any, ctx: int) -> None:
        self._lib, self._ctx = lib, ctx

    def load(self) -> None:
        """Load the filter into this thread (and the step it execs)."""
        try:
            rc = self._lib.seccomp_load(self._ctx)
            if rc != 0:
                raise SeccompError(
                    f"seccomp: cannot load the filter: {os.strerror(-rc)}"
                )
        finally:
            self._lib.seccomp_release(self._ctx)


def compile_profile(profile: dict[str, Any]) -> Filter:
    """Compile ``profile`` (the OCI config's ``linux.seccomp``) with libseccomp,
    as runc does; the builtin executor's init loads it just before it drops
    capabilities and execs the step.

    The filter is loaded without no_new_privs (the config leaves it off, so
    that setuid programs work), which needs CAP_SYS_ADMIN: the init still has
    it. Syscalls this libseccomp does not know are skipped, as runc skips them.
    """

    class ArgCmp(ctypes.Structure):
        _fields_ = [
            ("arg", ctypes.c_uint),
            ("op", ctypes.c_int),
            ("datum_a", ctypes.c_uint64),
            ("datum_b", ctypes.c_uint64),
        ]

    # The soname first: find_library runs ldconfig, a process per step.
    path = "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError:
        path = ctypes.util.find_library("seccomp") or ""
        try:
            lib = ctypes.CDLL(path or "libseccomp.so", use_errno=True)
        except OSError as exc:
            raise SeccompError(
                f"libseccomp not found ({exc}); install it: apt-get install libseccomp2"
            ) from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SeccompError("seccomp_init failed")
    try:
        if lib.seccomp_attr_set(ctx, _FLTATR_CTL_NNP, 0) != 0:
            raise SeccompError("seccomp: cannot leave no_new_privs off")
        for arch in profile.get("architectures", []):
            token = lib.seccomp_arch_resolve_name(
                arch.removeprefix("SCMP_ARCH_").lower().encode()
            )
            # -EEXIST: the native architecture is in every filter already.
            rc = lib.seccomp_arch_add(ctx, token) if token else 0
            if rc not in (0, -17):
                raise SeccompError(f"seccomp: architecture {arch}: {os.strerror(-rc)}")
        for rule in profile.get("syscalls", []):
            action = _action(rule["action"], rule.get("errnoRet"))
            if action == default:
                continue  # libseccomp refuses a rule that changes nothing
            args = rule.get("args") or []
            cmps = (ArgCmp * max(len(args), 1))()
            for i, arg in enumerate(args):
                cmps[i].arg = int(arg["index"])
                cmps[i].op = _OPS[arg["op"]]
                cmps[i].datum_a = int(arg["value"])
                cmps[i].datum_b = int(arg.get("valueTwo", 0))
            for syscall in rule["names"]:
                nr = lib.seccomp_syscall_resolve_name(syscall.encode())
                if nr < 0:
                    continue  # unknown to this libseccomp
                rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), cmps)
                if rc != 0:
                    raise SeccompError(
                        f"seccomp: rule for {syscall}: {os.strerror(-rc)}"
                    )
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return Filter(lib, ctx)
