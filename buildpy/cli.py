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
    # Boolean flags taken and dropped before parsing: ``--rm``, ``--rm=false``
    # (as Go's flag package reads them: never the next word as their value).
    ignored_flags: tuple[str, ...] = ()

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(errors.EXIT_USAGE, f"buildpy: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.ignored_flags and args is not None:
            args = [a for a in args if not self._ignored(a)]
        return super().parse_known_args(args, namespace)

    def _ignored(self, token: str) -> bool:
        flag, sep, value = token.partition("=")
        if flag not in self.ignored_flags:
            return False
        if sep and value.lower() not in ("true", "false", "1", "0"):
            self.error(f"argument {flag}: {value!r} is not true or false")
        return True


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if not sep:
        # docker: --build-arg NAME takes the value from the environment.
        value = os.environ.get(key, "")
    return key, value


def _label(text: str) -> tuple[str, str]:
    """--label KEY=VALUE; a bare KEY is an empty label, as docker's."""
    key, _, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _build_context(text: str) -> tuple[str, str]:
    """--build-context NAME=VALUE: VALUE a directory, docker-image://REF or
    oci-layout://PATH[:TAG]; the other sources buildx takes are refused by
    name."""
    name, sep, value = text.partition("=")
    name = name.strip().lower()
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(
            f"expected NAME=DIR or NAME=docker-image://REF, got {text!r}"
        )
    if name == "context":
        raise argparse.ArgumentTypeError(f"{text}: 'context' is the main context")
    other = ("target:", "http://", "https://", "git@")
    if value.startswith(other) or value.endswith(".git"):
        raise argparse.ArgumentTypeError(
            f"{text}: only a directory, docker-image://REF or oci-layout://PATH "
            "is supported yet"
        )
    return name, value


def _extra_host(text: str) -> tuple[str, str]:
    """--add-host NAME:ADDRESS or NAME=ADDRESS (an IPv6 address maybe in
    brackets), as docker takes it; (name, address)."""
    import ipaddress

    sep = "=" if "=" in text else ":"
    name, _, address = text.partition(sep)
    address = address.removeprefix("[").removesuffix("]")
    if address == "host-gateway":
        raise argparse.ArgumentTypeError(
            f"{text}: host-gateway is not supported (RUN uses the host's network)"
        )
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid host {text!r}: expected NAME:ADDRESS, like db:10.0.0.5"
        ) from None
    if not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"invalid host name in {text!r}")
    return name, address


_ANNOTATION_TYPES = ("index", "index-descriptor", "manifest-descriptor")


def _annotation(text: str) -> tuple[str, str]:
    """--annotation [manifest[PLATFORM]:]KEY=VALUE, as buildx takes it; the
    image's manifest is the only place buildpy puts one."""
    key, sep, value = text.partition("=")
    kind, colon, name = key.partition(":")
    if colon and "." not in kind and "/" not in kind.partition("[")[0]:
        kind, _, platform = kind.partition("[")
        if kind in _ANNOTATION_TYPES:
            raise argparse.ArgumentTypeError(
                f"{text}: only manifest annotations are supported (a built image "
                "is one manifest, with no index of its own)"
            )
        if kind != "manifest":
            raise argparse.ArgumentTypeError(
                f"invalid annotation {text!r}: the type is manifest, index, "
                "manifest-descriptor or index-descriptor"
            )
        if platform:
            _host_platform(platform.removesuffix("]"))
        key = name
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"invalid annotation {text!r}: expected [manifest:]KEY=VALUE"
        )
    return key, value


def _call(text: str) -> tuple[str, str]:
    from buildpy.callcmd import parse_call

    return parse_call(text)


def _shm_size(text: str) -> int:
    """--shm-size: bytes, or a number with a unit (128m: 1024-based, as docker)."""
    from buildpy.cachecmds import parse_size

    size = parse_size(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"invalid --shm-size {text!r}: not above 0")
    return size


def _ulimit(text: str) -> tuple[str, int, int]:
    """--ulimit NAME=SOFT[:HARD], as docker takes it; -1 is unlimited."""
    from runtime.spec import ULIMIT_NAMES

    name, sep, values = text.partition("=")
    if not sep or name not in ULIMIT_NAMES:
        raise argparse.ArgumentTypeError(
            f"invalid ulimit {text!r}: expected NAME=SOFT[:HARD], NAME one of "
            + ", ".join(ULIMIT_NAMES)
        )
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid ulimit {text!r}: limits are whole numbers (-1: unlimited)"
        ) from None
    unlimited = (soft < 0) + (hard < 0)
    if (
        soft < -1
        or hard < -1
        or (unlimited == 1 and hard >= 0)
        or (not unlimited and soft > hard)
    ):
        raise argparse.ArgumentTypeError(
            f"invalid ulimit {text!r}: the soft limit is above the hard one"
        )
    return name, soft, hard


def _no_attestation(kind: str) -> Any:
    """--provenance / --sbom: buildx's ways of saying none (false, 0,
    disabled=true) are taken; anything asking for one is refused, not ignored."""

    def check(text: str) -> bool:
        value = text.strip().lower()
        if value in ("false", "0") or "disabled=true" in value.split(","):
            return False
        raise argparse.ArgumentTypeError(
            f"{text}: buildpy does not make {kind} attestations yet; "
            f"--{kind}=false says so"
        )

    return check


def _host_platform(text: str) -> str:
    """--platform: one or more os/arch[/variant], all naming the host's platform,
    the only one buildpy builds for (as docker buildx with no emulation)."""
    from buildpy.engine import host_platform
    from frontend.flags import FlagError, parse_platform

    host = host_platform()
    for item in text.split(","):
        try:
            os_, arch, _ = parse_platform(item.strip())
        except FlagError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
        if (os_, arch) != host:
            raise argparse.ArgumentTypeError(
                f"{item.strip()}: buildpy builds for the host's platform only "
                f"({'/'.join(host)})"
            )
    return "/".join(host)


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
    common.add_argument(  # the daemon (issue 8): buildpy/client.py reads it first
        "--addr",
        default=argparse.SUPPRESS,
        help="the daemon, unix:///PATH or tcp://HOST:PORT (default: $BUILDPY_HOST)",
    )
    for flag in ("--tlscacert", "--tlscert", "--tlskey"):  # tcp:// (buildpy/tlsaddr.py)
        common.add_argument(flag, default=argparse.SUPPRESS, help="a PEM file")
    parser = _Parser(
        prog="buildpy",
        description="Build container images from Dockerfiles, as docker buildx does.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    build = sub.add_parser("build", parents=[common], help="build an image")
    build.add_argument(
        "context",
        help="the build context: a directory, a git URL (URL#REF:SUBDIR), or - (stdin)",
    )
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
    build.add_argument(
        "--label",
        action="append",
        default=[],
        type=_label,
        metavar="KEY=VALUE",
        help="set an image label, over the Dockerfile's (repeatable)",
    )
    build.add_argument(
        "--load",
        action="store_true",
        help="into the local store (-o type=image), beside any other -o",
    )
    build.add_argument(
        "--build-context",
        action="append",
        default=[],
        type=_build_context,
        metavar="NAME=DIR|docker-image://REF",
        help="a context for FROM NAME, COPY --from=NAME (repeatable)",
    )
    build.add_argument(
        "--add-host",
        action="append",
        default=[],
        type=_extra_host,
        metavar="NAME:ADDRESS",
        help="a line for RUN steps' /etc/hosts (repeatable)",
    )
    build.add_argument(
        "--allow",
        action="append",
        default=[],
        choices=("security.insecure", "network.host"),
        metavar="ENTITLEMENT",
        help="security.insecure: let RUN --security=insecure run privileged; "
        "network.host (RUN steps use the host's network already)",
    )
    # The classic builder's flags that docker build still takes and BuildKit
    # ignores; CI scripts pass them. Taken here as well, and ignored: no
    # intermediate containers remain, and images are not signed.
    build.ignored_flags = ("--rm", "--force-rm", "--disable-content-trust")
    build.add_argument(
        "--squash",
        action="store_true",
        help="the build's own layers as one, above the base image's (as buildah)",
    )
    build.add_argument(
        "--annotation",
        action="append",
        default=[],
        type=_annotation,
        metavar="[manifest:]KEY=VALUE",
        help="an annotation on the image's manifest (repeatable)",
    )
    build.add_argument(
        "--shm-size",
        type=_shm_size,
        metavar="SIZE",
        help="the size of RUN steps' /dev/shm (default 64m)",
    )
    build.add_argument(
        "--ulimit",
        action="append",
        default=[],
        type=_ulimit,
        metavar="NAME=SOFT[:HARD]",
        help="a resource limit of RUN steps, e.g. nofile=1024:2048 (repeatable)",
    )
    for kind in ("provenance", "sbom"):
        build.add_argument(
            f"--{kind}",
            type=_no_attestation(kind),
            metavar="false",
            help=f"accepted as false: buildpy attaches no {kind} attestation",
        )
    build.add_argument(
        "--pull",
        action="store_true",
        help="pull the FROM images from their registries even when stored",
    )
    build.add_argument(
        "--platform",
        type=_host_platform,
        metavar="OS/ARCH",
        help="the target platform: the host's only (e.g. linux/amd64)",
    )
    build.add_argument(
        "--check", action="store_true", help="run the build checks only, build nothing"
    )
    build.add_argument(
        "--call",
        type=_call,
        default=("build", "text"),
        metavar="build|check|outline|targets[,format=json]",
        help="targets: list the stages; outline: the target's build args, "
        "secrets and ssh; check: as --check",
    )
    from buildpy import cachecmds  # the cache flags and commands (issue 4)

    cachecmds.add_build_flags(build)
    from buildpy import cacheio  # --cache-to / --cache-from (issue 6)

    cacheio.add_build_flags(build)
    build.add_argument(
        "--push",
        action="store_true",
        help="push the -t names (-o type=image,push=true)",
    )
    build.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="id=NAME,src=FILE|env=VAR",
        help="a secret for RUN --mount=type=secret (repeatable)",
    )
    build.add_argument(
        "--ssh",
        action="append",
        default=[],
        metavar="ID[=SOCKET|KEY,...]",
        help="an ssh agent for RUN --mount=type=ssh, e.g. default=$SSH_AUTH_SOCK",
    )

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
    from buildpy import buildhistory

    buildhistory.add_parser(sub, common)
    serve = sub.add_parser(
        "serve", parents=[common], help="run the daemon (buildpy/daemon.py)"
    )
    serve.add_argument(
        "--allow-insecure-entitlement",
        action="append",
        default=[],
        choices=("security.insecure",),
        metavar="ENTITLEMENT",
        help="security.insecure: builds may ask for --allow security.insecure",
    )
    cachecmds.add_parsers(sub, common)

    from buildpy.run import add_arguments as add_run_arguments

    add_run_arguments(sub.add_parser("run", parents=[common], help="run an image"))

    from buildpy import imageargs

    imageargs.add_parsers(sub, common)

    inspect = sub.add_parser(
        "inspect", parents=[common], help="print an image's manifest and config"
    )
    inspect.add_argument("name")

    lint = sub.add_parser("lint", parents=[common], help="run the Dockerfile checks")
    lint.add_argument("-f", "--file", type=Path, action="append", default=[])
    lint.add_argument("files", type=Path, nargs="*", help="Dockerfiles to check")
    lint.add_argument("--format", choices=("text", "json"), default="text")
    lint.add_argument("--build-arg", action="append", default=[], type=_key_value)

    debug = sub.add_parser("debug", parents=[common], help="tools for developers")
    debug_sub = debug.add_subparsers(dest="debug_command", required=True)
    ast = debug_sub.add_parser("ast", help="the parse, in BuildKit's dump format")
    ast.add_argument("file", type=Path)
    return parser


_PARSER: list[argparse.ArgumentParser] = []


def parser() -> argparse.ArgumentParser:
    """make_parser(), once per process: building it costs more than a no-op
    build's lookups, and the daemon's children inherit the zygote's."""
    if not _PARSER:
        _PARSER.append(make_parser())
    return _PARSER[0]


def main(argv: Sequence[str] | None = None, *, forwarded: bool = False) -> int:
    """The CLI; ``forwarded``: buildpy.entry tried the daemon already."""
    from buildpy import client  # the thin client: standard library only

    target = (
        None
        if forwarded
        else client.forward_target(sys.argv[1:] if argv is None else argv)
    )
    if target is not None:
        code = client.run_cli(target[0], target[1], explicit=target[2])
        if code is not None:
            return code
    args = parser().parse_args(argv)
    try:
        if os.geteuid() != 0:  # rootless: the command runs again in a user namespace
            from buildpy import rootless

            rootless.enter(args, sys.argv[1:] if argv is None else argv)
        return _dispatch(args)
    except KeyboardInterrupt:
        print("buildpy: interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except BuildpyError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader of our stdout left (`buildpy builds | head`): nothing to
        # say to it, and the interpreter must not try to flush to it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE's, as a shell reports a command it stopped


def _dispatch(args: argparse.Namespace) -> int:
    root: Path | None = getattr(args, "root", None)
    if args.command == "build" and args.call[0] in ("outline", "targets"):
        from buildpy.callcmd import call_command

        return call_command(args)
    if args.command == "build" and args.call[0] == "check":
        args.check = True
        args.format = args.call[1]
    if args.command == "lint" or (args.command == "build" and args.check):
        from buildpy.lintcmd import lint_command

        return lint_command(args)
    if args.command == "build":
        from buildpy.commands import build

        return build(args, root)
    if args.command == "import":
        from buildpy.commands import import_image

        return import_image(args, root)
    if args.command in ("pull", "push", "tag", "rmi", "history", "save", "load"):
        from buildpy import imagecmds

        return int(getattr(imagecmds, args.command)(args, root))
    if args.command == "run":
        from buildpy.run import run_command

        return run_command(args, root)
    if args.command in ("du", "prune"):
        from buildpy import cachecmds

        return int(getattr(cachecmds, args.command)(args, root))
    if args.command == "serve":
        from buildpy.daemon import serve

        tls = {f"--{f}": getattr(args, f, None) for f in ("tlscacert", "tlscert")}
        tls["--tlskey"] = getattr(args, "tlskey", None)
        grants = args.allow_insecure_entitlement
        return serve(getattr(args, "addr", None), root, tls, grants)
    if args.command == "builds":
        from buildpy.buildhistory import BuildHistory, builds_command
        from buildpy.state import State

        state = State.open(root)
        try:
            return builds_command(args, BuildHistory(state.db, state.lock))
        finally:
            state.close()
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
