"""The ``buildpy`` command line: flags named and meaning as in ``docker buildx``.

Every failure ends here as one line on stderr (a Dockerfile error also shows the
lines it points at) and the exit code DESIGN.md fixes; no traceback reaches a user
unless BUILDPY_DEBUG is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from buildpy import errors
from buildpy.errors import BuildpyError, UsageError

PROGRESS_MODES = ("auto", "plain", "tty", "quiet", "rawjson")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(errors.EXIT_USAGE, f"buildpy: error: {message}\n")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if not sep:
        # docker: --build-arg NAME takes the value from the environment.
        value = os.environ.get(key, "")
    return key, value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root",
        type=Path,
        default=argparse.SUPPRESS,
        help="state root (default: $BUILDPY_ROOT, else /var/lib/buildpy as root)",
    )
    parser = _Parser(
        prog="buildpy",
        description="Build container images from Dockerfiles, as docker buildx does.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    build = sub.add_parser("build", parents=[common], help="build an image")
    build.add_argument("context", type=Path, help="the build context directory")
    build.add_argument("-t", "--tag", action="append", default=[], help="name:tag")
    build.add_argument("-f", "--file", type=Path, help="the Dockerfile")
    build.add_argument("--target", help="the stage to build")
    build.add_argument(
        "--build-arg",
        action="append",
        default=[],
        type=_key_value,
        metavar="KEY=VALUE",
    )
    build.add_argument("--no-cache", action="store_true", help="run every step")
    build.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default=None,
        help="auto (default; or $BUILDKIT_PROGRESS), plain, tty, quiet, rawjson",
    )
    build.add_argument(
        "-o",
        "--output",
        action="append",
        default=[],
        metavar="type=oci|docker|local|tar|image,dest=PATH",
    )
    build.add_argument("--network", choices=("host", "none", "default"), default="host")
    build.add_argument("--jobs", type=_positive, help="steps run at once (no limit)")
    build.add_argument(
        "--oci-runtime", help="runc, crun, builtin or a path (default: runc if found)"
    )
    build.add_argument("-q", "--quiet", action="store_true", help="print only the ID")

    imp = sub.add_parser(
        "import", parents=[common], help="make a one-layer image from a root filesystem"
    )
    imp.add_argument("source", type=Path, help="a directory, or a tar (gzip, zstd)")
    imp.add_argument("name", help="NAME[:TAG]")
    imp.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        help="a Dockerfile instruction for the config: CMD, ENTRYPOINT, ENV, ...",
    )

    sub.add_parser("images", parents=[common], help="list the local store")

    inspect = sub.add_parser(
        "inspect", parents=[common], help="print an image's manifest and config"
    )
    inspect.add_argument("name")

    debug = sub.add_parser("debug", parents=[common], help="tools for developers")
    debug_sub = debug.add_subparsers(dest="debug_command", required=True)
    ast = debug_sub.add_parser("ast", help="the parse, in BuildKit's dump format")
    ast.add_argument("file", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("buildpy: interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except BuildpyError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code


def _dispatch(args: argparse.Namespace) -> int:
    root: Path | None = getattr(args, "root", None)
    if args.command == "build":
        from buildpy.commands import build

        return build(args, root)
    if args.command == "import":
        from buildpy.commands import import_image

        return import_image(args, root)
    if args.command == "images":
        from buildpy.commands import images

        return images(root)
    if args.command == "inspect":
        from buildpy.commands import inspect

        return inspect(args.name, root)
    if args.command == "debug":
        from frontend import DockerfileError, debug_ast

        try:
            sys.stdout.write(debug_ast(args.file))
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
        except DockerfileError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return errors.EXIT_DOCKERFILE
        return 0
    raise UsageError(f"unknown command {args.command}")


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
