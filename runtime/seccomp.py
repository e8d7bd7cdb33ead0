"""docker's default seccomp profile, as the OCI config's ``linux.seccomp``.

The profile lives in runtime/seccomp_default.json, written for buildpy from the
facts of docker's default profile (moby profiles/seccomp/default.json): which
syscalls a container with docker's default capability set may make. It is
already resolved for that set (CAP_SYS_CHROOT adds chroot; no CAP_SYS_ADMIN, so
no mount, unshare, setns, and clone only without namespace flags) and for
kernels >= 4.8 (ptrace allowed). Everything else fails with EPERM; clone3 fails
with ENOSYS so that libc falls back to clone, whose flags can be filtered.

runc and crun apply it. buildpy's builtin executor cannot (it would need a BPF
program loaded with prctl(PR_SET_SECCOMP)); its steps are limited by the
capability bounding set only, and its docstring says so.
"""

from __future__ import annotations

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
