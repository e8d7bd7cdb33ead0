"""Flags of the image commands (pull, push, tag, rmi, history, save, load), kept
apart from buildpy/cli.py; their work is in buildpy/imagecmds.py, imported only
when one runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

COMMANDS = ("pull", "push", "tag", "rmi", "history", "save", "load")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the image commands to the subparsers ``sub`` of the CLI."""
    insecure = argparse.ArgumentParser(add_help=False)
    insecure.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="speak HTTP, or HTTPS without certificate checks, to this registry",
    )
    pull = sub.add_parser(
        "pull", parents=[common, insecure], help="pull an image from a registry"
    )
    pull.add_argument("ref", help="[HOST[:PORT]/]NAME[:TAG|@DIGEST]")

    push = sub.add_parser(
        "push", parents=[common, insecure], help="push an image to a registry"
    )
    push.add_argument("ref", help="[HOST[:PORT]/]NAME[:TAG]")
    push.add_argument(
        "--compression",
        default="gzip",
        help="layer compression: gzip (default), zstd, uncompressed",
    )

    tag = sub.add_parser("tag", parents=[common], help="give an image another name")
    tag.add_argument("source", help="NAME[:TAG] or image ID")
    tag.add_argument("target", help="NAME[:TAG]")

    rmi = sub.add_parser("rmi", parents=[common], help="remove image names")
    rmi.add_argument("refs", nargs="+", metavar="REF")
    rmi.add_argument(
        "-f", "--force", action="store_true", help="remove every name of an image ID"
    )

    history = sub.add_parser(
        "history", parents=[common], help="show how an image was made"
    )
    history.add_argument("ref")
    history.add_argument("--no-trunc", action="store_true", help="full text and IDs")
    history.add_argument("-q", "--quiet", action="store_true", help="only IDs")

    save = sub.add_parser(
        "save", parents=[common], help="write images to an OCI/docker archive"
    )
    save.add_argument("refs", nargs="+", metavar="REF")
    save.add_argument(
        "-o", "--output", type=Path, help="the archive to write (default: stdout)"
    )

    load = sub.add_parser(
        "load", parents=[common], help="read images from an OCI or docker archive"
    )
    load.add_argument(
        "-i",
        "--input",
        type=Path,
        help="the archive, or an OCI layout directory (default: stdin)",
    )
