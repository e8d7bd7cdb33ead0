"""The two halves of the ``onefile20k`` rebuild, apart from start-up and checksums.

    python3 benchmarks/copy_layer.py [--rounds N] [--dirs 100] [--files 200] [--in DIR]

Run as root (overlay mounts, chown). It makes a context of ``dirs`` x ``files``
small files, then per round: the COPY of it (``COPY . /ctx``, buildpy.fileops.copy)
onto a fresh active overlay snapshot, mounted as the worker mounts it, and the
uncompressed layer of that snapshot's upperdir written into a content store
(snapshotter.diff.write_layer), as the export of the rebuild writes it. Prints the
median of each over the rounds, and the layer's digest (the same on every round and
before and after a change to the tar code, or the change altered the layer).
Nothing is asserted: these are figures.

The snapshots are removed only after the last round, and a run should start a few
minutes after any large deletion on the file system (a test run, say): ext4 without
a journal, as on this machine, skips inodes freed in the last minutes when it
allocates new ones (``recently_deleted`` in the kernel), and after 20,000 deletions
every file created costs up to a millisecond more.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from buildpy.fileops import copy  # noqa: E402
from snapshotter.content import ContentStore  # noqa: E402
from snapshotter.diff import write_layer  # noqa: E402
from snapshotter.overlay import Snapshotter  # noqa: E402
from solver.graph import CopyAction  # noqa: E402

# Fixed mtimes, so that the layer's digest is the same on every run.
_MTIME_NS = 1_600_000_000 * 10**9


def make_context(directory: Path, dirs: int, files: int) -> None:
    for d in range(dirs):
        sub = directory / "src" / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(files):
            path = sub / f"f{f:03}.txt"
            path.write_text(f"file {d} {f}\n")
            os.utime(path, ns=(_MTIME_NS, _MTIME_NS))
        os.utime(sub, ns=(_MTIME_NS, _MTIME_NS))
    for path in (directory / "src", directory):
        os.utime(path, ns=(_MTIME_NS, _MTIME_NS))


def one_round(
    snap: Snapshotter, store: ContentStore, context: Path, mnt: Path, key: str
) -> tuple[float, float, str]:
    snap.prepare(key, None)
    snap.mount(key, mnt)
    try:
        started = time.perf_counter()
        action = CopyAction(sources=(".",), dest="/ctx")
        copy(mnt, context, action, ignore=None, from_context=True)
        copied = time.perf_counter() - started
    finally:
        snap.unmount(mnt)
    snap.commit(key, key)
    started = time.perf_counter()
    with store.writer() as w:
        write_layer(snap.fs_path(key), w)  # type: ignore[arg-type]
        digest, _ = w.commit()
    written = time.perf_counter() - started
    store.delete(digest)
    return copied, written, digest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument(
        "--in",
        dest="parent",
        type=Path,
        help="where to make the work directory (a tmpfs isolates the CPU's part)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("copy_layer.py: run as root (overlay mounts, chown)")
    with tempfile.TemporaryDirectory(prefix="copy-layer-", dir=args.parent) as tmp:
        work = Path(tmp)
        context = work / "ctx"
        make_context(context, args.dirs, args.files)
        mnt = work / "mnt"
        mnt.mkdir()
        db = sqlite3.connect(work / "meta.db", isolation_level=None)
        try:
            snap = Snapshotter(work / "root", db)
            snap.init_schema()
            store = ContentStore(work / "root")
            copies, layers, digests = [], [], set()
            keys: list[str] = []
            try:
                for n in range(args.rounds):
                    keys.append(f"bench-{n}")
                    copied, written, digest = one_round(
                        snap, store, context, mnt, keys[-1]
                    )
                    copies.append(copied)
                    layers.append(written)
                    digests.add(digest)
                    print(f"round {n}: copy {copied:.3f} s, layer {written:.3f} s")
            finally:
                for key in keys:
                    if snap.exists(key):
                        snap.remove(key)
        finally:
            db.close()
    print(f"copy  median {statistics.median(copies):.3f} s")
    print(f"layer median {statistics.median(layers):.3f} s")
    print("layer digest " + ", ".join(sorted(digests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
