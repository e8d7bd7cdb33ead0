"""The cache's flags of ``buildpy build`` and the commands ``buildpy du`` and
``buildpy prune``.

Imported when the parser is made, so only the standard library at the top;
the engine is imported when a command runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from buildpy import errors

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """``10GB`` (1000-based), ``10GiB`` or ``10g`` (1024-based, as docker's
    ``--memory``), or plain bytes."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected a number with an optional unit "
            "(B, kB, MB, GB, KiB, MiB, GiB, k, m, g)"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def parse_duration(text: str) -> float:
    """Go's duration syntax, as ``until=24h`` takes it (``1h30m``, ``90s``),
    plus ``d`` for days. Seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected e.g. 24h, 1h30m, 90s or 7d"
        )
    return sum(float(n) * _SECONDS[u] for n, u in parts)


def _prune_filter(text: str) -> float:
    key, sep, value = text.partition("=")
    if key != "until" or not sep:
        raise argparse.ArgumentTypeError(
            f"unsupported filter {text!r}: expected until=DURATION"
        )
    return parse_duration(value)


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.3g}{unit}"
        size /= 1000
    return f"{size:.3g}TB"


def add_build_flags(build: argparse.ArgumentParser) -> None:
    build.add_argument("--metadata-file", type=Path, help="write build results (JSON)")
    build.add_argument("--iidfile", type=Path, help="write the image ID to this file")
    build.add_argument(
        "--fail-on-cache-miss",
        action="store_true",
        help="exit 5 if any step would run (a fully cached rebuild check)",
    )
    build.add_argument(
        "--dry-run", action="store_true", help="list cache hits and misses, run nothing"
    )
    build.add_argument(
        "--graph", type=Path, metavar="FILE", help="write the graph (.dot or .json)"
    )
    build.add_argument(
        "--no-cache-filter",
        action="append",
        default=[],
        metavar="STAGE",
        help="do not use the cache for this stage (repeatable)",
    )
    build.add_argument(
        "--verify-cache",
        action="store_true",
        help="rehash every context file instead of trusting remembered checksums",
    )
    build.add_argument(
        "--max-storage",
        type=parse_size,
        metavar="SIZE",
        help="after the build, evict least recently used cache down to SIZE",
    )


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("du", parents=[common], help="show what the store holds")
    prune = sub.add_parser("prune", parents=[common], help="remove build cache")
    prune.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="also the unpacked layers of tagged images",
    )
    prune.add_argument(
        "--keep-storage",
        type=parse_size,
        metavar="SIZE",
        help="evict least recently used cache until the store is at most SIZE",
    )
    prune.add_argument(
        "--filter",
        type=_prune_filter,
        metavar="until=DURATION",
        dest="until",
        help="only cache not used for DURATION (e.g. 24h)",
    )


def du(args: argparse.Namespace, root: Path | None) -> int:
    from buildpy.engine import Engine
    from buildpy.humanize import ago
    from buildpy.prune import usage

    with Engine.open(root) as engine:
        use = usage(engine)
    rows = [("KEY", "SIZE", "LAST USED", "STEP")]
    import time

    now = time.time()
    for record, size in sorted(use.records, key=lambda rs: -rs[0].last_used):
        age = ago(now - record.last_used)
        step = use.names.get(record.key, "")
        rows.append((record.key[7:19], human(size), age, step))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]).rstrip())
    other = use.total - use.snapshots - use.blobs - use.database
    print()
    print(f"Cache records:\t{len(use.records)} ({human(use.record_snapshots)})")
    print(f"Snapshots:\t{human(use.snapshots)}")
    print(f"Blobs:\t\t{human(use.blobs)}")
    print(f"Database:\t{human(use.database)}")
    print(f"Other:\t\t{human(other)}")
    print(f"Reclaimable:\t{human(use.reclaimable)} ({use.reclaimable} bytes)")
    print(f"Total:\t\t{human(use.total)} ({use.total} bytes)")
    return errors.EXIT_OK


def prune(args: argparse.Namespace, root: Path | None) -> int:
    from buildpy.engine import Engine
    from buildpy.prune import no_builds
    from buildpy.prune import prune as run_prune

    with Engine.open(root) as engine, no_builds(engine, wait=True):
        done = run_prune(
            engine, all_=args.all, keep_storage=args.keep_storage, until=args.until
        )
    print(
        f"removed {done.records} cache records, {done.snapshots} snapshots, "
        f"{done.blobs} blobs",
        file=sys.stderr,
    )
    print(f"Total:\t{human(done.freed)} ({done.freed} bytes)")
    return errors.EXIT_OK


# --- buildpy build's cache flags, called by buildpy.commands.build ---------------


def apply_build_flags(args: argparse.Namespace, req: Any) -> None:
    """Copy the flags into the BuildRequest; check --graph before building."""
    req.no_cache_filter = list(args.no_cache_filter)
    req.fail_on_cache_miss = args.fail_on_cache_miss
    req.dry_run = args.dry_run
    inline = req.build_args.get("BUILDKIT_INLINE_CACHE", "")
    if inline.lower() not in ("", "0", "false") and not any(
        c.type == "inline" for c in req.cache_to
    ):
        # BuildKit's older spelling of --cache-to type=inline, still in CI scripts.
        from buildpy.cacheio import parse_cache_to

        req.cache_to.append(parse_cache_to("type=inline"))
    if args.graph is not None:
        from buildpy.report import graph_format

        graph_format(args.graph)


def run_build_locked(engine: Any, args: argparse.Namespace, build: Any) -> Any:
    """Run ``build()`` holding the builds lock (eviction waits for it), then
    write --iidfile, --metadata-file and --graph, then enforce --max-storage (or
    the store's ``max-storage`` setting, buildpy.config)."""
    from buildpy.prune import building, enforce_max_storage
    from buildpy.report import after_build

    if args.iidfile is not None:
        # As docker build: a build that fails leaves no ID of an earlier one.
        try:
            args.iidfile.unlink(missing_ok=True)
        except OSError as exc:
            message = f"--iidfile {args.iidfile}: {exc.strerror}"
            raise errors.UsageError(message) from None

    cap = args.max_storage
    if cap is None:  # a broken settings file stops the build before it starts
        from buildpy import config

        cap = config.max_storage(engine.root)
    with building(engine):
        result = build()
    after_build(engine, args, result)
    if cap is not None and result.image is not None:
        enforce_max_storage(engine, cap)
    return result


def print_dry_run(args: argparse.Namespace, result: Any) -> int:
    from buildpy.report import dry_run_listing

    listing, misses = dry_run_listing(result.solve)
    sys.stdout.write(listing)
    if misses and args.fail_on_cache_miss:
        print(f"ERROR: cache miss: {misses} steps would run", file=sys.stderr)
        return errors.EXIT_CACHE_MISS
    return errors.EXIT_OK
