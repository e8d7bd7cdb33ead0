"""Why a step missed the cache, in one line a person can act on.

Theory of operation
-------------------
``CacheStore.explain_miss`` finds the nearest earlier record of a vertex (see
there) and hands both ``KeyOrigin``s to ``describe``, which compares them part
by part, in the order of the cache key's fields, and says what differs:

- ``content``: the files the step reads. With the per-file detail of both
  records (``Worker.content_detail``): each file added, removed, changed
  (``file a.txt changed (xxh3 1a2b3c4d.. -> 3c4d5e6f..)``) or whose written mode
  changed; at most ``MAX_FILES`` of them, then a count.
- ``inputs``: an input whose key differs is the base image (named with its old
  and new digest), the context's settings (.dockerignore), or a parent step
  (named as progress shows it).
- ``op``: for a RUN, each variable of its environment that differs (a build
  arg when the build names it in ``build_args``, else ``env``), then any other
  field; for other ops the instruction, quoting the old text when it differs.

Phrases are joined with "; ". A part that cannot be detailed (a record from a
database without the detail columns) falls back to the short phrases below.
Nothing here touches the database: the store passes ``input_op`` to look up the
op of an older input key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from solver.cachekey import KeyOrigin
from solver.graph import Vertex

RESULT_GONE = "its earlier result no longer exists"
CONTENT = "content of the files it reads changed"
INPUT = "input step changed"
INSTRUCTION = "instruction changed"
NO_RECORD = "no earlier record"

MAX_FILES = 3
_MAX_VALUE = 40
_PREFIX = re.compile(r"^\[[^\]]*\] ")  # "[build 2/4] " of a progress name

InputOp = Callable[[str], "dict[str, Any] | None"]


def describe(
    vertex: Vertex,
    new: KeyOrigin,
    old: KeyOrigin,
    input_op: InputOp,
    build_args: Collection[str] = (),
) -> str:
    """What differs between the origin of ``vertex``'s key and an older one."""
    phrases: list[str] = []
    if new.content != old.content:
        phrases.extend(_content(old, new))
    if new.input_keys != old.input_keys:
        phrases.extend(_inputs(vertex, old.input_keys, new.input_keys, input_op))
    if new.op_digest != old.op_digest:
        phrases.extend(_op(old, new, build_args))
    return "; ".join(phrases) or NO_RECORD


# --- content --------------------------------------------------------------------


def _content(old: KeyOrigin, new: KeyOrigin) -> list[str]:
    if old.detail is None or new.detail is None:
        return [CONTENT]
    changes = file_changes(old.detail, new.detail)
    if not changes:
        return [CONTENT]
    if len(changes) > MAX_FILES:
        more = len(changes) - MAX_FILES
        changes = [*changes[:MAX_FILES], f"and {more} more file{'s' * (more > 1)}"]
    return changes


def file_changes(old: dict[str, list[str]], new: dict[str, list[str]]) -> list[str]:
    """One phrase per path whose entry differs, sorted by path.

    An entry is ``[kind, value, mode]``: kind ``file`` (value: xxh3-128 hex),
    ``dir``, ``symlink`` (value: the target) or another type; mode in octal.
    """
    out: list[str] = []
    for path in sorted(old.keys() | new.keys()):
        was, now = old.get(path), new.get(path)
        if was == now:
            continue
        path = path or "."  # the top of what the step copies
        if was is None:
            out.append(f"{_kind(now)} {path} added")
        elif now is None:
            out.append(f"{_kind(was)} {path} removed")
        elif was[0] != now[0]:
            out.append(f"{path} changed from {_kind(was)} to {_kind(now)}")
        elif was[1] != now[1] and now[0] == "file":
            out.append(f"file {path} changed (xxh3 {was[1][:8]}.. -> {now[1][:8]}..)")
        elif was[1] != now[1]:
            out.append(
                f"{now[0]} {path} changed ({_short(was[1])} -> {_short(now[1])})"
            )
        else:
            out.append(f"mode of {path} changed ({was[2]} -> {now[2]})")
    return out


def _kind(entry: list[str] | None) -> str:
    return entry[0] if entry else "file"


# --- inputs -----------------------------------------------------------------------


def _inputs(
    vertex: Vertex,
    old_keys: tuple[str, ...],
    new_keys: tuple[str, ...],
    input_op: InputOp,
) -> list[str]:
    if len(old_keys) != len(new_keys):
        return [INPUT]
    out: list[str] = []
    for inp, was, now in zip(vertex.inputs, old_keys, new_keys, strict=True):
        if was == now:
            continue
        op = inp.op.encode()
        if op["kind"] == "image":
            before = input_op(was)
            if before is not None and before.get("kind") == "image":
                out.append(
                    f"base image {op['ref']} changed ({_digest(before['digest'])}"
                    f" -> {_digest(op['digest'])})"
                )
            else:
                out.append(f"base image changed (now {op['ref']}@{op['digest']})")
        elif op["kind"] == "context":
            out.append("context settings (.dockerignore) changed")
        elif op["kind"] == "scratch":
            out.append("base changed to scratch")
        else:
            out.append(f'parent step "{inp.meta.name or op["kind"]}" changed')
    return out or [INPUT]


def _digest(digest: str) -> str:
    return digest[:19] + ".."


# --- the op -----------------------------------------------------------------------


def _op(old: KeyOrigin, new: KeyOrigin, build_args: Collection[str]) -> list[str]:
    if old.op is None or new.op is None:
        return [INSTRUCTION]
    out: list[str] = []
    fields = sorted(
        k for k in old.op.keys() | new.op.keys() if old.op.get(k) != new.op.get(k)
    )
    if (
        new.op.get("kind") == "exec"
        and old.op.get("kind") == "exec"
        and "env" in fields
    ):
        out.extend(env_changes(old.op["env"], new.op["env"], build_args))
        fields.remove("env")
    if fields:
        old_text, new_text = _text(old.name), _text(new.name)
        if old_text and old_text != new_text:
            out.append(f'{INSTRUCTION} (was "{_short(old_text, 60)}")')
        else:
            out.append(f"{INSTRUCTION} ({', '.join(fields)})")
    return out


def env_changes(
    old_env: list[str], new_env: list[str], build_args: Collection[str]
) -> list[str]:
    """One phrase per variable set, unset or changed, in name order."""
    was = dict(e.partition("=")[::2] for e in old_env)
    now = dict(e.partition("=")[::2] for e in new_env)
    out = []
    for name in sorted(was.keys() | now.keys()):
        if was.get(name) == now.get(name):
            continue
        what = f"build arg {name}" if name in build_args else f"env {name}"
        if name not in was:
            out.append(f"{what} set ({_short(now[name])})")
        elif name not in now:
            out.append(f"{what} unset (was {_short(was[name])})")
        else:
            out.append(f"{what} changed ({_short(was[name])} -> {_short(now[name])})")
    return out


def _text(name: str) -> str:
    return _PREFIX.sub("", name)


def _short(text: str, limit: int = _MAX_VALUE) -> str:
    return text if len(text) <= limit else text[: limit - 2] + ".."
