"""``buildpy build --call targets|outline``: what a Dockerfile offers, as
docker buildx build --call shows it, without building (frontend.outline).

``--call check`` is ``--check`` (buildpy/lintcmd.py) and ``--call build``
the build itself. ``,format=json`` after the name prints JSON instead of the
table. Exit codes: 0, 3 for a Dockerfile that does not parse, 2 for one that
cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from buildpy import errors
from buildpy.errors import UsageError
from buildpy.humanize import print_table
from buildpy.lintcmd import build_dockerfile
from frontend import DockerfileError
from frontend.outline import Outline, Target, outline, targets

CALLS = ("build", "check", "outline", "targets")


def parse_call(text: str) -> tuple[str, str]:
    """--call NAME[,format=text|json]: (name, format)."""
    name, _, rest = text.partition(",")
    fmt = "text"
    for option in filter(None, rest.split(",")):
        key, _, value = option.partition("=")
        if key != "format" or value not in ("text", "json"):
            raise argparse.ArgumentTypeError(
                f"invalid --call {text!r}: the only option is format=text|json"
            )
        fmt = value
    if name not in CALLS:
        raise argparse.ArgumentTypeError(
            f"invalid --call {text!r}: expected one of {', '.join(CALLS)}"
        )
    return name, fmt


def call_command(args: argparse.Namespace) -> int:
    name, fmt = args.call
    dockerfile = build_dockerfile(args)
    try:
        text = dockerfile.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read Dockerfile {dockerfile}: {exc}") from None
    try:
        if name == "targets":
            found: Any = targets(text, filename=dockerfile.name)
        else:
            found = outline(
                text,
                filename=dockerfile.name,
                build_args=dict(args.build_arg),
                target=args.target,
            )
    except DockerfileError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        if exc.line:
            print(exc.frame(text), file=sys.stderr)
        return errors.EXIT_DOCKERFILE
    if fmt == "json":
        data = [asdict(t) for t in found] if name == "targets" else asdict(found)
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif name == "targets":
        print_table(
            ["TARGET", "DESCRIPTION"], [[_label(t), t.description] for t in found]
        )
    else:
        _print_outline(found)
    return errors.EXIT_OK


def _label(target: Target) -> str:
    return f"{target.name} (default)" if target.default else target.name


def _print_outline(found: Outline) -> None:
    print(f"TARGET:      {found.target.name}")
    if found.target.description:
        print(f"DESCRIPTION: {found.target.description}")
    if found.args:
        print()
        rows = [[a.name, a.value or "", a.description] for a in found.args]
        print_table(["BUILD ARG", "VALUE", "DESCRIPTION"], rows)
    for title, uses in (("SECRET", found.secrets), ("SSH", found.ssh)):
        if uses:
            print()
            print_table([title, "REQUIRED"], [[i, str(r).lower()] for i, r in uses])


__all__ = ["CALLS", "call_command", "parse_call"]
