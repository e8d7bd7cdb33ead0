"""The image commands: pull, push, tag, rmi, history, save, load.

Each takes the parsed flags and the state root, prints what docker prints for
the same command, and returns the exit code.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from buildpy import errors
from buildpy.engine import Engine
from buildpy.errors import UsageError
from buildpy.images import normalize_ref

COMPRESSIONS = ("gzip", "zstd", "uncompressed")


@contextmanager
def _spooled_stdin(tmp: Path) -> Iterator[Path]:
    """Stdin copied into a file under ``tmp``, removed after: an archive is read
    out of order (its index first), which a pipe cannot do, and a file keeps a
    large one out of memory."""
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=tmp, prefix="stdin-archive-") as spool:
        try:
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            spool.flush()
        except OSError as exc:
            raise errors.InfraError(
                f"load: cannot keep the archive on stdin in {tmp}: {exc.strerror}"
            ) from None
        yield Path(spool.name)


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def pull(args: argparse.Namespace, root: Path | None) -> int:
    from buildpy.transfer import RegistrySettings, pull_image

    with Engine.open(root) as engine:
        settings = RegistrySettings.load(engine.root, args.insecure_registry)
        ref, digest = pull_image(engine, args.ref, settings, report=_say)
        image_id = engine.images.manifest(digest)["config"]["digest"]
    _say(f"Status: downloaded image for {ref.familiar} ({image_id[:19]})")
    print(str(ref))
    return errors.EXIT_OK


def push(args: argparse.Namespace, root: Path | None) -> int:
    from buildpy.transfer import RegistrySettings, push_image

    if args.compression not in COMPRESSIONS:
        raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}")
    with Engine.open(root) as engine:
        settings = RegistrySettings.load(engine.root, args.insecure_registry)
        pushed = push_image(
            engine,
            args.ref,
            args.ref,
            settings,
            compression=args.compression,
            report=_say,
        )
    print(f"{pushed.reference.tag}: digest: {pushed.digest} size: {pushed.size}")
    return errors.EXIT_OK


def tag(args: argparse.Namespace, root: Path | None) -> int:
    with Engine.open(root) as engine:
        digest = engine.images.get(args.source)
        engine.images.tag(args.target, digest)
    return errors.EXIT_OK


def rmi(args: argparse.Namespace, root: Path | None) -> int:
    """Untag names; a name given by image ID removes all its names (with -f when
    there are several, as docker asks). Blobs stay until a prune."""
    status = errors.EXIT_OK
    with Engine.open(root) as engine:
        for name in args.refs:
            try:
                digest = engine.images.get(name)
            except errors.ImageNotFound as exc:
                _say(f"Error: No such image: {exc.name}")
                status = errors.EXIT_USAGE
                continue
            records = [r for r in engine.images.list() if r.digest == digest]
            by_name = [r.name for r in records if _same_name(r.name, name)]
            targets = by_name or [r.name for r in records]
            if not by_name and len(targets) > 1 and not args.force:
                _say(
                    f"Error: image {name} is referenced in {len(targets)} names "
                    f"({', '.join(targets)}): remove them by name, or use -f"
                )
                status = errors.EXIT_USAGE
                continue
            with engine.state.lock:
                for target in targets:
                    engine.state.db.execute(
                        "DELETE FROM images WHERE name = ?", (target,)
                    )
            for target in targets:
                print(f"Untagged: {target}")
            if len(records) == len(targets):
                config = engine.images.manifest(digest)["config"]["digest"]
                print(f"Deleted: {config}")
    return status


def _same_name(stored: str, given: str) -> bool:
    try:
        return stored == normalize_ref(given)
    except UsageError:
        return False


def _ago(created: str | None) -> str:
    if not created:
        return "N/A"
    try:
        moment = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "N/A"
    from buildpy.humanize import ago

    return ago(max(time.time() - moment, 0))


def _size(size: int) -> str:
    from buildpy.commands import _human

    return _human(size) if size else "0B"


def history(args: argparse.Namespace, root: Path | None) -> int:
    """Newest step first, one row per history entry, as ``docker history``."""
    with Engine.open(root) as engine:
        digest = engine.images.get(args.ref)
        manifest = engine.images.manifest(digest)
        config = engine.images.config(manifest)
    sizes = iter(int(layer["size"]) for layer in manifest["layers"])
    rows = []
    for entry in config.get("history", []):
        size = 0 if entry.get("empty_layer") else next(sizes, 0)
        rows.append(
            [
                "<missing>",
                _ago(entry.get("created")),
                entry.get("created_by", ""),
                _size(size),
                entry.get("comment", ""),
            ]
        )
    rows.reverse()
    if rows:
        image_id = manifest["config"]["digest"].removeprefix("sha256:")
        rows[0][0] = image_id if args.no_trunc else image_id[:12]
    if not args.no_trunc:
        for row in rows:
            text = " ".join(row[2].split())
            row[2] = text if len(text) <= 45 else text[:44] + "…"
    if args.quiet:
        for row in rows:
            print(row[0])
        return errors.EXIT_OK
    from buildpy.humanize import print_table

    print_table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows)
    return errors.EXIT_OK


def save(args: argparse.Namespace, root: Path | None) -> int:
    from buildpy.archive import save_images
    from buildpy.exporters import STDOUT, stdout_stream

    dest = args.output or Path(STDOUT)  # as docker save: stdout, unless a terminal
    if str(dest) == STDOUT:
        stdout_stream()
    with Engine.open(root) as engine:
        save_images(engine, list(args.refs), dest)
    return errors.EXIT_OK


def load(args: argparse.Namespace, root: Path | None) -> int:
    from buildpy.archive import load_images

    if args.input is not None and not args.input.exists():
        raise UsageError(f"load: {args.input} does not exist")
    if args.input is None and sys.stdin.isatty():
        raise UsageError("load: give the archive with -i FILE, or on stdin")
    with Engine.open(root) as engine:
        if args.input is not None:
            loaded = load_images(engine, args.input)
        else:
            with _spooled_stdin(engine.root / "tmp") as spooled:
                loaded = load_images(engine, spooled, label="the archive on stdin")
    for image_id, names in loaded:
        if names:
            for name in names:
                print(f"Loaded image: {name}")
        else:
            print(f"Loaded image ID: {image_id}")
    return errors.EXIT_OK
