"""A COPY of a context directory whose files partly changed is built on its
last run: the unchanged files are kept, the layer is the one a full copy makes,
and the earlier result is left as it was. Real builds, real overlay mounts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tests.buildpy.test_cache_cli import du_sb
from tests.buildpy.test_fileops import tree_state
from tests.conftest import Buildpy

DOCKERFILE = "FROM busybox\nCOPY src /app\nRUN cat /app/d1/f1 > /seen\n"
KEPT = re.compile(
    r"^#\d+ \S+ ([\d,]+) unchanged files kept from this step's last run$", re.M
)


def make_context(root: Path) -> Path:
    (root / "Dockerfile").parent.mkdir(parents=True)
    (root / "Dockerfile").write_text(DOCKERFILE)
    for d in range(4):
        for f in range(30):
            path = root / "src" / f"d{d}" / f"f{f}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"file {d} {f}\n")
            os.chmod(path, 0o755 if f % 3 == 0 else 0o644)
    (root / "src/d0/link").symlink_to("f0")
    (root / "src/empty").mkdir()
    return root


def kept(output: str) -> list[int]:
    """The counts of kept files that plain progress reports."""
    return [int(m.group(1).replace(",", "")) for m in KEPT.finditer(output)]


def files(root: Path) -> dict[str, tuple[object, ...]]:
    """``tree_state`` without the mtimes, which a rewrite of a file changes."""
    return {rel: (v[0], v[1], *v[3:]) for rel, v in tree_state(root).items()}


def diff_ids(buildpy: Buildpy, ref: str) -> list[str]:
    image = json.loads(buildpy.run("inspect", ref).stdout)[0]
    return image["Config"]["rootfs"]["diff_ids"]


def test_a_rebuild_keeps_the_unchanged_files_and_makes_the_same_layer(
    busybox: Buildpy, tmp_path: Path
) -> None:
    context = make_context(tmp_path / "ctx")
    first = busybox.build(context, "-t", "app:1")
    assert kept(first.stdout + first.stderr) == []

    (context / "src/d1/f1").write_text("changed\n")
    (context / "src/d3/new").write_text("added\n")
    second = busybox.build(
        context, "-t", "app:2", "-o", "type=image", "-o", tmp_path / "out2"
    )
    output = second.stdout + second.stderr
    assert "file src/d1/f1 changed" in output
    assert kept(output) == [4 * 30 - 1]  # all but the changed file
    assert (tmp_path / "out2/seen").read_text() == "changed\n"

    # The COPY's layer is the one a copy of everything makes, byte for byte
    # (the RUN's differs: its file's mtime is the time it ran).
    fresh = busybox.build(context, "--no-cache", "-t", "app:fresh")
    assert kept(fresh.stdout + fresh.stderr) == []
    assert diff_ids(busybox, "app:2")[:2] == diff_ids(busybox, "app:fresh")[:2]
    assert (tmp_path / "out2/app/d3/new").read_text() == "added\n"

    # The first run's result is as it was: back to its content, the step is
    # cached and its files are the old ones.
    (context / "src/d1/f1").write_text("file 1 1\n")
    (context / "src/d3/new").unlink()
    again = busybox.build(context, "-o", tmp_path / "out1")
    assert re.search(r"^#\d+ \[2/3\] COPY src /app\n#\d+ CACHED$", again.stderr, re.M)
    assert files(tmp_path / "out1/app") == files(context / "src")


def test_a_removed_file_makes_a_full_copy(busybox: Buildpy, tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx")
    busybox.build(context)
    (context / "src/d2/f7").unlink()
    (context / "src/d1/f1").write_text("changed\n")
    result = busybox.build(context, "-o", tmp_path / "out")
    assert kept(result.stdout + result.stderr) == []
    assert not (tmp_path / "out/app/d2/f7").exists()
    assert files(tmp_path / "out/app") == files(context / "src")


def test_a_changed_mode_is_written(busybox: Buildpy, tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx")
    busybox.build(context)
    os.chmod(context / "src/d0/f1", 0o600)
    result = busybox.build(context, "-o", tmp_path / "out")
    assert kept(result.stdout + result.stderr) == [4 * 30 - 1]
    assert files(tmp_path / "out/app") == files(context / "src")


def test_no_cache_copies_everything(busybox: Buildpy, tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx")
    busybox.build(context)
    (context / "src/d1/f1").write_text("changed\n")
    result = busybox.build(context, "--no-cache")
    assert kept(result.stdout + result.stderr) == []


PIECE = 256 * 1024


def rebuilt_sharing_seven_files(
    busybox: Buildpy, tmp_path: Path, *second_args: str
) -> None:
    """Two runs of a COPY of eight files of PIECE random bytes, one file
    changed in between: the second run's result shares seven with the first."""
    context = tmp_path / "ctx"
    (context / "src").mkdir(parents=True)
    (context / "Dockerfile").write_text("FROM busybox\nCOPY src /app\n")
    for n in range(8):
        (context / f"src/f{n}").write_bytes(os.urandom(PIECE))
    busybox.build(context)
    (context / "src/f0").write_bytes(os.urandom(PIECE))
    second = busybox.build(context, *second_args)
    assert kept(second.stdout + second.stderr) == [7]


def du_figure(busybox: Buildpy, pattern: str) -> int:
    """A number that ``buildpy du`` prints, found by a regex of one group."""
    return int(re.search(pattern, busybox.run("du").stdout, re.M).group(1))


def test_keep_storage_counts_what_an_eviction_really_frees(
    busybox: Buildpy, tmp_path: Path
) -> None:
    """The files a rebuild kept are shared with the earlier result: evicting
    that result frees only what it alone holds, and prune goes on evicting
    until the store really fits."""
    rebuilt_sharing_seven_files(busybox, tmp_path)
    # Evicting the first run frees its own file (and its layer blob), not the
    # seven it shares: a cap that needs more than that must evict more.
    cap = du_sb(busybox.root) - 12 * PIECE
    busybox.run("prune", "--keep-storage", str(cap))
    records = du_figure(busybox, r"^Cache records:\t(\d+)")
    assert du_sb(busybox.root) <= cap or records == 0


def test_du_reclaimable_is_what_prune_frees(busybox: Buildpy, tmp_path: Path) -> None:
    # The second run's image keeps its layers, which share seven files.
    rebuilt_sharing_seven_files(busybox, tmp_path, "-t", "app:2")
    reclaimable = du_figure(busybox, r"^Reclaimable:\s+\S+ \((\d+) bytes\)$")
    before = du_sb(busybox.root)
    busybox.run("prune")
    freed = before - du_sb(busybox.root)
    assert abs(reclaimable - freed) <= before / 100
