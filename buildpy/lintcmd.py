"""``buildpy lint`` and ``buildpy build --check``: the Dockerfile build checks
(frontend.lint), printed as text or JSON, without building anything.

Exit codes: 0 when no finding is an error, 3 (EXIT_DOCKERFILE) when a file does
not parse or ``# check=error=true`` turns its findings into errors, 2 when a
file cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from buildpy import errors
from buildpy.engine import host_platform
from buildpy.errors import UsageError
from buildpy.ignorefile import ignore_file
from frontend import DockerfileError, is_git_source, read_dockerignore
from frontend.lint import LintResult, lint


def _ignore_patterns(dockerfile: Path, context: Path) -> list[str]:
    """The rules of the ignore file the build would read (buildpy.ignorefile)."""
    found = ignore_file(context, dockerfile)
    return read_dockerignore(found.read_text()) if found is not None else []


def build_dockerfile(args: argparse.Namespace) -> Path:
    """The Dockerfile of a ``build`` command line that builds nothing
    (``--check``, ``--call``)."""
    if "-" in (args.context, str(args.file)) or is_git_source(args.context):
        # TODO: --check and --call of a Dockerfile from stdin or of a git
        # context; a directory covers the pre-commit and CI uses they serve.
        raise UsageError("--check and --call read a Dockerfile of a directory context")
    return args.file or Path(args.context) / "Dockerfile"


def _targets(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(Dockerfile, context) pairs to check."""
    if args.command == "build":
        return [(build_dockerfile(args), Path(args.context))]
    files = [*args.file, *args.files] or [Path("Dockerfile")]
    return [(f, f.parent) for f in files]


def lint_command(args: argparse.Namespace) -> int:
    build_args = dict(args.build_arg)
    platform = "/".join(host_platform())
    reports: list[dict[str, Any]] = []
    status = errors.EXIT_OK
    for dockerfile, context in _targets(args):
        try:
            text = dockerfile.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read Dockerfile {dockerfile}: {exc}") from None
        try:
            result = lint(
                text,
                filename=str(dockerfile),
                build_args=build_args,
                dockerignore=_ignore_patterns(dockerfile, context),
                platform=platform,
            )
        except DockerfileError as exc:
            status = errors.EXIT_DOCKERFILE
            reports.append({"file": str(dockerfile), "error": str(exc)})
            if getattr(args, "format", "text") == "text":
                print(f"ERROR: {exc}", file=sys.stderr)
                if exc.line:
                    print(exc.frame(text), file=sys.stderr)
            continue
        if result.failed:
            status = errors.EXIT_DOCKERFILE
        reports.append(_report(dockerfile, result))
        if getattr(args, "format", "text") == "text":
            _print_text(dockerfile, text, result)
    if getattr(args, "format", "text") == "json":
        json.dump(reports, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return status


def _report(dockerfile: Path, result: LintResult) -> dict[str, Any]:
    return {
        "file": str(dockerfile),
        "error": None,
        "failed": result.failed,
        "warnings": [f.to_json() for f in result.findings],
    }


def _print_text(dockerfile: Path, text: str, result: LintResult) -> None:
    """BuildKit's lint text: per finding ``WARNING: Rule - URL``, the message
    and the marked lines (frontend.lint.LintResult.text)."""
    sys.stdout.write(result.text(text, str(dockerfile)))
