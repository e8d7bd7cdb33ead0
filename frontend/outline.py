"""``build --call targets`` and ``--call outline``: what a Dockerfile offers,
read without building anything.

The stages and what the target needs are the converter's own (its steps 1 and
2: split, link, order), so the answer is the build's; no base image is looked
up. Descriptions are the comment lines right above an instruction, as BuildKit
reads them: ``# base is the stage everything starts from`` above ``FROM ... AS
base`` describes ``base``, its own name dropped from the front; the same for an
``ARG``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from frontend.convert import _Converter, _StageDef
from frontend.parser import Instruction, parse

_REFERENCE = r"\$\{?{name}\b"
_DIRECTIVE = re.compile(r"(syntax|escape|check)\s*=", re.IGNORECASE)  # not prose


@dataclass(frozen=True)
class Target:
    name: str  # the stage's name, or its index
    description: str
    default: bool  # the stage a build without --target builds


@dataclass(frozen=True)
class BuildArg:
    name: str
    value: str | None  # the default, or the --build-arg given; None: none
    description: str


@dataclass(frozen=True)
class Outline:
    target: Target
    args: list[BuildArg]
    secrets: list[tuple[str, bool]]  # (id, required)
    ssh: list[tuple[str, bool]]  # (id, required)


def targets(text: str, *, filename: str = "Dockerfile") -> list[Target]:
    """Every stage, in the order written."""
    converter = _converter(text, filename, {}, None)
    lines = text.splitlines()
    last = converter.stage_defs[-1].index
    return [_target(define, lines, last) for define in converter.stage_defs]


def outline(
    text: str,
    *,
    filename: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
) -> Outline:
    """The target stage, and the build args, secrets and ssh sockets it and
    the stages it needs read."""
    given = dict(build_args or {})
    converter = _converter(text, filename, given, target)
    lines = text.splitlines()
    chosen = converter.target_stage()
    stages = converter.dispatch_order(chosen)
    args: dict[str, BuildArg] = {}
    meta = [n for n in converter.ast.instructions if n.keyword == "arg"]
    meta = meta[: _before_first_from(converter.ast.instructions)]
    used = [d.from_node.original for d in stages] + [
        n.original for d in stages for n in d.nodes
    ]
    for node in meta:
        for name, value in _pairs(node):
            pattern = re.compile(_REFERENCE.replace("{name}", re.escape(name)))
            if any(pattern.search(line) for line in used):
                args[name] = BuildArg(
                    name, given.get(name, value), _described(lines, node, name)
                )
    secrets: dict[str, bool] = {}
    ssh: dict[str, bool] = {}
    for define in stages:
        for node in define.nodes:
            if node.keyword == "arg":
                for name, value in _pairs(node):
                    # ARG NAME in a stage takes the global one's default.
                    earlier = args.get(name, BuildArg(name, None, ""))
                    default = value if value is not None else earlier.value
                    about = _described(lines, node, name) or earlier.description
                    args[name] = BuildArg(name, given.get(name, default), about)
            elif node.keyword == "run":
                for spec in converter.mount_specs(node, None):
                    if spec.type == "secret":
                        secrets[spec.id] = secrets.get(spec.id, False) or spec.required
                    elif spec.type == "ssh":
                        ssh[spec.id] = ssh.get(spec.id, False) or spec.required
    last = converter.stage_defs[-1].index
    return Outline(
        _target(chosen, lines, last),
        list(args.values()),
        sorted(secrets.items()),
        sorted(ssh.items()),
    )


def _converter(
    text: str, filename: str, build_args: Mapping[str, str], target: str | None
) -> _Converter:
    def no_images(name: str) -> object:  # never called: nothing is dispatched
        raise LookupError(name)

    converter = _Converter(
        parse(text, filename=filename),
        build_args=build_args,
        target=target,
        resolve_image=no_images,  # type: ignore[arg-type]
        dockerignore=(),
        network="host",
        no_cache=False,
        platform=("linux", "amd64"),
    )
    converter.split_stages()
    converter.link_stages()
    return converter


def _before_first_from(nodes: list[Instruction]) -> int:
    for index, node in enumerate(nodes):
        if node.keyword == "from":
            return index
    return len(nodes)


def _pairs(node: Instruction) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for word in node.args:
        if isinstance(word, str):
            name, has_value, value = word.partition("=")
            out.append((name, value if has_value else None))
    return out


def _target(define: _StageDef, lines: list[str], last: int) -> Target:
    return Target(
        define.label,
        _described(lines, define.from_node, define.name or ""),
        define.index == last,
    )


def _described(lines: list[str], node: Instruction, name: str) -> str:
    """The comment block right above ``node`` (1-based start_line), as one
    line; ``name`` dropped from its front."""
    index = node.start_line - 2
    block: list[str] = []
    while index >= 0 and lines[index].lstrip().startswith("#"):
        text = lines[index].lstrip()[1:].strip()
        if not _DIRECTIVE.match(text):
            block.insert(0, text)
        index -= 1
    words = " ".join(block).split()
    if name and words and words[0].lower() == name.lower():
        words = words[1:]
    return " ".join(words)


__all__ = ["BuildArg", "Outline", "Target", "outline", "targets"]
