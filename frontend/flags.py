"""Instruction flags: which ``--flags`` each instruction takes, and their values.

Theory of operation
-------------------
The parser keeps every leading ``--word`` of an instruction as text (BuildKit's
AST does the same, so ``debug ast`` can print them). This module gives them
meaning, after the parse and before the conversion, in two steps:

1. ``parse_flags`` checks the flag names against ``FLAGS`` (one table: the
   instruction, the flag, its kind) and groups the values: a ``str`` flag once,
   a ``bool`` flag with an optional ``=true|false``, a ``list`` flag repeatable.
   Unknown names get the nearest known one as a hint (``--chwon``).
2. Values with a grammar of their own are parsed into typed results here, so
   the converter never reads raw strings: ``parse_mount`` for ``RUN --mount``
   (BuildKit's CSV form ``type=cache,target=/x,ro``), ``check_choice`` for
   ``--network`` / ``--security``, ``parse_platform`` for ``FROM --platform``,
   ``check_checksum`` for ``ADD --checksum``.

Values are expanded (ARG/ENV) by the caller's ``expand`` function before they
are checked, as BuildKit expands mount options field by field. Every problem is
a ``FlagError`` (a message only); the converter turns it into a
``DockerfileError`` that points at the instruction.
"""

from __future__ import annotations

import csv
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from frontend.errors import suggest

# Per instruction: flag name -> kind ("str", "bool", or "list" for repeatable).
# From the Dockerfile reference (dockerfile 1.x, labs flags excluded but
# --device, which is parsed so that its error can name the labs syntax).
FLAGS: dict[str, dict[str, str]] = {
    "from": {"platform": "str"},
    "run": {"network": "str", "mount": "list", "security": "str", "device": "list"},
    "copy": {
        "from": "str",
        "chown": "str",
        "chmod": "str",
        "link": "bool",
        "exclude": "list",
        "parents": "bool",
    },
    "add": {
        "chown": "str",
        "chmod": "str",
        "link": "bool",
        "exclude": "list",
        "checksum": "str",
        "keep-git-dir": "bool",
        "unpack": "bool",
    },
    "healthcheck": {
        "interval": "str",
        "timeout": "str",
        "start-period": "str",
        "start-interval": "str",
        "retries": "str",
    },
}

NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")
MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")


class FlagError(Exception):
    """A bad flag or flag value; ``hint`` is a suggestion such as a near name."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def parse_flags(keyword: str, raw_flags: Iterable[str]) -> dict[str, Any]:
    """The flags of one instruction by name: str, bool, or list of str."""
    known = FLAGS.get(keyword, {})
    values: dict[str, Any] = {}
    for raw in raw_flags:
        name, has_value, value = raw[2:].partition("=")
        kind = known.get(name)
        if kind is None:
            hint = suggest("--" + name, ["--" + k for k in known])
            raise FlagError(f"unknown flag: --{name}", hint)
        if kind == "bool":
            if has_value and value.lower() not in ("true", "false"):
                raise FlagError(
                    f"expecting boolean value for flag --{name}, not: {value}"
                )
            values[name] = value.lower() != "false"
        elif not has_value:
            raise FlagError(f"missing a value on flag: --{name}")
        elif kind == "list":
            values.setdefault(name, []).append(value)
        elif name in values:
            raise FlagError(f"duplicate flag specified: --{name}")
        else:
            values[name] = value
    return values


def check_choice(flag: str, value: str, choices: Iterable[str]) -> str:
    """``value`` when it is one of ``choices``, else a FlagError naming them."""
    options = tuple(choices)
    if value not in options:
        raise FlagError(
            f"invalid value {value!r} for --{flag}: expected one of "
            + ", ".join(options),
            suggest(value, options),
        )
    return value


# --- FROM --platform -------------------------------------------------------------

# containerd's platforms.Normalize aliases for the architectures one meets.
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}


def parse_platform(value: str) -> tuple[str, str, str]:
    """``os/arch[/variant]`` as (os, arch, variant), arch aliases normalized."""
    parts = value.lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise FlagError(
            f"invalid platform {value!r}: expected os/arch[/variant], like linux/amd64"
        )
    os_, arch = parts[0], _ARCH_ALIASES.get(parts[1], parts[1])
    return os_, arch, parts[2] if len(parts) == 3 else ""


# --- ADD --checksum --------------------------------------------------------------

_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_COMMIT_RE = re.compile(r"[0-9a-f]{1,64}")


def check_checksum(value: str) -> str:
    """``sha256:<64 hex>`` (an HTTP source) or a hex commit prefix (a git one)."""
    if _SHA256_RE.fullmatch(value) or _COMMIT_RE.fullmatch(value):
        return value
    if value.startswith(("sha384:", "sha512:")):
        return value
    raise FlagError(
        f"invalid checksum {value!r}: expected sha256:<64 hex digits> or a git commit"
    )


# --- RUN --mount -----------------------------------------------------------------


@dataclass(frozen=True)
class MountSpec:
    """One ``RUN --mount`` as written, defaults filled in, variables expanded.

    ``from_`` names a stage, a stage index or an image (bind, cache); None for
    a bind mount means the build context. ``target`` may still be relative (to
    the WORKDIR) and, for ssh, empty: the converter finishes both. ``id`` is the
    cache id (default: the target), the secret id (default: the target's base
    name) or the ssh id (default ``default``).
    """

    type: str
    target: str
    source: str = ""
    from_: str | None = None
    readonly: bool = True
    id: str = ""
    sharing: str = ""
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    required: bool = False
    env: str | None = None


# Option name -> canonical name; each type accepts the canonical names listed.
_ALIASES = {
    "src": "source",
    "dst": "target",
    "destination": "target",
    "ro": "readonly",
    "rw": "readwrite",
}
_COMMON = {"type", "target", "readonly", "readwrite"}
_OPTIONS: dict[str, set[str]] = {
    "bind": _COMMON | {"source", "from"},
    "cache": _COMMON | {"source", "from", "id", "sharing", "mode", "uid", "gid"},
    "tmpfs": _COMMON | {"size"},
    "secret": _COMMON | {"id", "source", "mode", "uid", "gid", "required", "env"},
    "ssh": _COMMON | {"id", "mode", "uid", "gid", "required"},
}
_BOOL_OPTIONS = ("readonly", "readwrite", "required")
_ALL_OPTIONS = sorted(set().union(*_OPTIONS.values()) | set(_ALIASES))

_TRUE = ("1", "t", "true", "T", "TRUE", "True")
_FALSE = ("0", "f", "false", "F", "FALSE", "False")


def _go_bool(key: str, value: str) -> bool:
    """Go's strconv.ParseBool, which BuildKit uses for mount options."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise FlagError(
        f"invalid value {value!r} for mount option {key}: expected a boolean"
    )


def _uint(key: str, value: str, base: int) -> int:
    try:
        number = int(value, base)
    except ValueError:
        number = -1
    if not 0 <= number < 2**32 or value.startswith(("+", "-")):
        what = "an octal mode like 0755" if base == 8 else "a whole number"
        raise FlagError(
            f"invalid value {value!r} for mount option {key}: expected {what}"
        )
    return number


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)*) ?([kmgtp])?i?b?", re.IGNORECASE)


def parse_size(value: str) -> int:
    """docker's units.RAMInBytes: ``64m``, ``1g``, ``512k``, ``100`` (bytes)."""
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise FlagError(
            f"invalid size {value!r} for mount option size: expected bytes or a "
            "number with k, m, g, t or p"
        )
    scale = 1024 ** ("kmgtp".index(match.group(2).lower()) + 1) if match.group(2) else 1
    return int(float(match.group(1)) * scale)


def _fields(value: str) -> list[str]:
    """The comma-separated fields of a flag value; a field may be quoted."""
    try:
        return next(csv.reader([value], strict=True), [])
    except csv.Error as exc:
        raise FlagError(f"invalid --mount value {value!r}: {exc}") from None


def parse_mount(
    value: str,
    expand: Callable[[str], str] | None = None,
    expand_from: Callable[[str], str] | None = None,
) -> MountSpec:
    """Parse one ``--mount`` value (without the ``--mount=``).

    Fields are ``key=value`` or, for readonly/ro, readwrite/rw and required, a
    bare ``key``. ``expand`` is applied to every value before it is read but
    ``from``'s, which ``expand_from`` expands: a stage's dependencies are known
    before any stage runs, so ``from`` sees the global ARGs only.
    """
    fields = [f for f in _fields(value) if f]
    # Step 1: the type first, because which options are allowed depends on it.
    kind = "bind"
    for field in fields:
        key, _, val = field.partition("=")
        if key.lower() == "type":
            val = expand(val) if expand else val
            if val not in MOUNT_TYPES:
                raise FlagError(
                    f"unsupported mount type {val!r}: expected one of "
                    + ", ".join(MOUNT_TYPES),
                    suggest(val, MOUNT_TYPES),
                )
            kind = val
    # Step 2: every other option, checked against the type.
    opts: dict[str, str] = {}
    for field in fields:
        raw_key, has_value, val = field.partition("=")
        key = _ALIASES.get(raw_key.lower(), raw_key.lower())
        if key not in _ALL_OPTIONS:
            raise FlagError(
                f"unexpected key {raw_key!r} in {field!r}",
                suggest(raw_key.lower(), _ALL_OPTIONS),
            )
        if key not in _OPTIONS[kind]:
            raise FlagError(f"unexpected key {raw_key!r} for mount type {kind!r}")
        if not has_value:
            if key not in _BOOL_OPTIONS:
                raise FlagError(f"invalid field {field!r}: must be a key=value pair")
            val = "true"
        elif key == "from":
            val = expand_from(val) if expand_from else val
        elif expand is not None and key != "type":
            val = expand(val)
        if key in ("readonly", "readwrite"):
            if "readonly" in opts:
                raise FlagError(f"mount option {raw_key} given twice in {value!r}")
            readonly = _go_bool(raw_key, val)
            opts["readonly"] = str(readonly if key == "readonly" else not readonly)
        else:
            opts[key] = val
    return _mount_spec(kind, opts)


def _mount_spec(kind: str, opts: dict[str, str]) -> MountSpec:
    """Step 3: typed values and the defaults of each type (Dockerfile reference)."""
    target = opts.get("target", "")
    readonly = opts.get("readonly")
    ident = opts.get("id", "")
    source = opts.get("source", "")
    mode = _uint("mode", opts["mode"], 8) if "mode" in opts else None
    if kind in ("bind", "cache", "tmpfs") and not target:
        raise FlagError(f"mount type {kind!r} needs a target: add target=/path")
    if kind == "cache":
        ident = ident or target
        mode = 0o755 if mode is None else mode
    elif kind == "secret":
        if source and ident:
            raise FlagError("secret mount: both source and id are set, give one")
        ident = ident or source or posixpath.basename(target.rstrip("/"))
        if not ident:
            raise FlagError("secret mount needs an id or a target: add id=NAME")
        source = ""
        if not target and "env" not in opts:
            target = "/run/secrets/" + ident
        mode = 0o400 if mode is None else mode
    elif kind == "ssh":
        ident = ident or "default"
        mode = 0o600 if mode is None else mode
    if kind == "cache":
        sharing = opts.get("sharing", "shared")
        if sharing not in SHARING_MODES:
            raise FlagError(
                f"unsupported sharing value {sharing!r}: expected one of "
                + ", ".join(SHARING_MODES),
                suggest(sharing, SHARING_MODES),
            )
    else:
        sharing = ""
    return MountSpec(
        type=kind,
        target=target,
        source=source,
        from_=opts.get("from") or None,
        # Read-only by default, but for cache and tmpfs mounts (reference).
        readonly=(readonly == "True") if readonly else kind not in ("cache", "tmpfs"),
        id=ident,
        sharing=sharing,
        mode=mode,
        uid=_uint("uid", opts["uid"], 10) if "uid" in opts else None,
        gid=_uint("gid", opts["gid"], 10) if "gid" in opts else None,
        size=parse_size(opts["size"]) if "size" in opts else None,
        required=_go_bool("required", opts["required"])
        if "required" in opts
        else False,
        env=opts.get("env"),
    )
