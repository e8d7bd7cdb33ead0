"""Content checksums of context copies (buildpy.context) on real files and a real
SQLite database. File reads are counted through ``hash_file``, never timed."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import buildpy.context as context_mod
from buildpy.context import ContextHasher
from buildpy.fileops import FileOpError
from solver.graph import CopyAction

OLD_NS = 1_500_000_000 * 10**9
SETTLED = 10 * 10**9  # a clock this far ahead: every file has settled


class FakeIgnore:
    def __init__(self, *paths: str) -> None:
        self.paths = paths

    def excluded(self, relpath: str) -> bool:
        return any(relpath == p or relpath.startswith(p + "/") for p in self.paths)

    def dir_may_contain_included(self, relpath: str) -> bool:
        return False


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(
        tmp_path / "meta.db", isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        yield conn
    finally:
        conn.close()


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    root.mkdir()
    return root


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file whose content the hasher reads, in order."""
    seen: list[Path] = []
    real = context_mod.hash_file

    def counting(path: Path) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(context_mod, "hash_file", counting)
    return seen


def hasher(db: sqlite3.Connection, **kw: object) -> ContextHasher:
    h = ContextHasher(db, **kw)  # type: ignore[arg-type]
    h.init_schema()
    return h


def settled_clock() -> int:
    return time.time_ns() + SETTLED


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


COPY_ALL = CopyAction(sources=(".",), dest="/app/")


def test_mtimes_do_not_matter(db: sqlite3.Connection, ctx: Path) -> None:
    f = write(ctx / "a.txt", "hello")
    before = hasher(db).checksum(ctx, COPY_ALL, None)
    os.utime(f, ns=(OLD_NS, OLD_NS))
    os.utime(ctx, ns=(OLD_NS, OLD_NS))
    assert hasher(db).checksum(ctx, COPY_ALL, None) == before
    assert before.startswith("sha256:") and len(before) == 71


def test_changed_content_changes_it(db: sqlite3.Connection, ctx: Path) -> None:
    f = write(ctx / "a.txt", "hello")
    h = hasher(db)
    before = h.checksum(ctx, COPY_ALL, None)
    f.write_text("hello, world")
    assert h.checksum(ctx, COPY_ALL, None) != before


def test_same_size_change_with_mtime_put_back_is_seen(
    db: sqlite3.Connection, ctx: Path
) -> None:
    """The ``touch -d`` case: same size, same mtime, new content. The changed
    ctime, or the racy rule when the change falls in the same tick, forces a
    new read; the record is never trusted stale."""
    f = write(ctx / "a.txt", "aaaa")
    os.utime(f, ns=(OLD_NS, OLD_NS))
    h = hasher(db)
    first = h.checksum(ctx, COPY_ALL, None)
    assert h.checksum(ctx, COPY_ALL, None) == first
    f.write_text("bbbb")
    os.utime(f, ns=(OLD_NS, OLD_NS))
    assert h.checksum(ctx, COPY_ALL, None) != first
    assert hasher(db).checksum(ctx, COPY_ALL, None) != first


def test_racy_record_is_read_again(
    db: sqlite3.Connection, ctx: Path, reads: list[Path]
) -> None:
    """A record taken in the same tick as the file's last change is not trusted
    (the clock is pinned to that tick); one taken later is."""
    f = write(ctx / "a.txt", "aaaa")
    ctime = os.stat(f).st_ctime_ns
    racy = hasher(db, clock=lambda: ctime)
    racy.checksum(ctx, COPY_ALL, None)
    racy.checksum(ctx, COPY_ALL, None)
    assert reads == [f, f]
    settled = hasher(db, clock=lambda: ctime + SETTLED)
    settled.checksum(ctx, COPY_ALL, None)
    settled.checksum(ctx, COPY_ALL, None)
    assert reads == [f, f, f]


def test_chmod_makes_source_modes_irrelevant(
    db: sqlite3.Connection, tmp_path: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write(one / "run.sh", "echo", 0o755)
    write(two / "run.sh", "echo", 0o600)
    h = hasher(db)
    plain = CopyAction(sources=("run.sh",), dest="/x")
    assert h.checksum(one, plain, None) != h.checksum(two, plain, None)
    chmod = CopyAction(sources=("run.sh",), dest="/x", chmod="0700")
    assert h.checksum(one, chmod, None) == h.checksum(two, chmod, None)
    assert h.checksum(one, chmod, None) != h.checksum(one, plain, None)


def test_metadata_the_copy_writes_is_covered(db: sqlite3.Connection, ctx: Path) -> None:
    write(ctx / "d/a", "a")
    (ctx / "d/link").symlink_to("a")
    h = hasher(db)
    action = CopyAction(sources=("d",), dest="/x/")
    base = h.checksum(ctx, action, None)
    chowned = CopyAction(sources=("d",), dest="/x/", chown="app")
    assert h.checksum(ctx, chowned, None) != base
    (ctx / "d/link").unlink()
    (ctx / "d/link").symlink_to("b")
    assert h.checksum(ctx, action, None) != base
    (ctx / "d/link").unlink()
    (ctx / "d/link").symlink_to("a")
    assert h.checksum(ctx, action, None) == base
    (ctx / "d/new").mkdir()
    assert h.checksum(ctx, action, None) != base


def test_files_the_copy_does_not_read_do_not_matter(
    db: sqlite3.Connection, ctx: Path
) -> None:
    write(ctx / "src/main.py", "print(1)")
    write(ctx / "src/cache.pyc", "x")
    write(ctx / "README", "docs")
    h = hasher(db)
    action = CopyAction(sources=("src",), dest="/app/")
    ignore = FakeIgnore("src/cache.pyc")
    base = h.checksum(ctx, action, ignore)
    write(ctx / "README", "other docs")
    write(ctx / "src/cache.pyc", "changed")
    write(ctx / "other/new.txt", "n")
    assert h.checksum(ctx, action, ignore) == base
    excluding = CopyAction(sources=("src",), dest="/app/", excludes=("*.pyc",))
    assert h.checksum(ctx, excluding, None) == base
    write(ctx / "src/main.py", "print(2)")
    assert h.checksum(ctx, action, ignore) != base


def test_only_hard_links_between_copied_files_matter(
    db: sqlite3.Connection, ctx: Path, tmp_path: Path
) -> None:
    """A link to a file the copy does not read leaves the result as it is (the
    daemon's materialised contexts link every file from its store); two copied
    names of one file become a hard link in the result, so they count."""
    a = write(ctx / "a.txt", "same")
    write(ctx / "b.txt", "same")
    alone = hasher(db).checksum(ctx, COPY_ALL, None)
    os.link(a, tmp_path / "elsewhere")
    assert hasher(db).checksum(ctx, COPY_ALL, None) == alone
    (ctx / "b.txt").unlink()
    os.link(a, ctx / "b.txt")
    assert hasher(db).checksum(ctx, COPY_ALL, None) != alone


def test_parents_cover_the_kept_path(db: sqlite3.Connection, ctx: Path) -> None:
    """COPY --parents writes a file under its source directories, so moving it
    to another directory changes the key; a plain copy writes the same result
    either way, and its key stays."""
    parents = CopyAction(sources=("*/a.txt",), dest="/d/", parents=True)
    plain = CopyAction(sources=("*/a.txt",), dest="/d/")
    write(ctx / "x/a.txt", "same")
    (ctx / "y").mkdir()
    h = hasher(db, clock=settled_clock)
    before = {a: h.checksum(ctx, a, None) for a in (parents, plain)}
    os.rename(ctx / "x/a.txt", ctx / "y/a.txt")
    assert h.checksum(ctx, parents, None) != before[parents]
    assert h.checksum(ctx, plain, None) == before[plain]
    # The kept parent's mode is written, so it counts as well.
    moved = h.checksum(ctx, parents, None)
    os.chmod(ctx / "y", 0o700)
    assert h.checksum(ctx, parents, None) != moved


def test_forget_drops_a_directorys_records(
    db: sqlite3.Connection, ctx: Path, reads: list[Path]
) -> None:
    write(ctx / "a.txt", "a")
    hasher(db, clock=settled_clock).checksum(ctx, COPY_ALL, None)
    reads.clear()
    hasher(db, clock=settled_clock).checksum(ctx, COPY_ALL, None)
    assert reads == []  # remembered
    hasher(db).forget(ctx)
    hasher(db, clock=settled_clock).checksum(ctx, COPY_ALL, None)
    assert reads == [ctx / "a.txt"]  # read again


def test_missing_source_is_the_users_error(db: sqlite3.Connection, ctx: Path) -> None:
    action = CopyAction(sources=("nope.txt",), dest="/x")
    with pytest.raises(FileOpError, match='"nope.txt" not found in the build context'):
        hasher(db).checksum(ctx, action, None)


def test_unchanged_tree_is_not_read_again(
    db: sqlite3.Connection, ctx: Path, reads: list[Path]
) -> None:
    for d in range(100):
        sub = ctx / f"d{d:03}"
        sub.mkdir()
        for i in range(200):
            (sub / f"f{i:03}").write_text(f"{d}/{i}")
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    first = hasher(db, clock=settled_clock).checksum(ctx, COPY_ALL, None)
    assert len(reads) == 20_000
    selects = [s for s in statements if s.startswith("SELECT")]
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert len(selects) == 1 and len(begins) == 1

    # A new hasher (the next build) trusts the records: nothing is read.
    reads.clear()
    statements.clear()
    again = hasher(db, clock=settled_clock)
    assert again.checksum(ctx, COPY_ALL, None) == first
    assert reads == []
    assert [s for s in statements if s.startswith(("SELECT", "BEGIN"))] == [
        s for s in statements if s.startswith("SELECT")
    ]

    # One changed file is the one file read.
    changed = ctx / "d050/f100"
    changed.write_text("new")
    assert again.checksum(ctx, COPY_ALL, None) != first
    assert reads == [changed]


def test_verify_rehashes_everything(
    db: sqlite3.Connection, ctx: Path, reads: list[Path]
) -> None:
    for i in range(3):
        write(ctx / f"f{i}", str(i))
    first = hasher(db, clock=settled_clock).checksum(ctx, COPY_ALL, None)
    reads.clear()
    verifying = hasher(db, verify=True, clock=settled_clock)
    assert verifying.checksum(ctx, COPY_ALL, None) == first
    assert len(reads) == 3


def test_records_are_keyed_by_context_directory(
    db: sqlite3.Connection, tmp_path: Path, reads: list[Path]
) -> None:
    """A context whose name is a prefix of another's does not see its records."""
    write(tmp_path / "app/a", "1")
    write(tmp_path / "app2/a", "2")
    h = hasher(db, clock=settled_clock)
    assert h.checksum(tmp_path / "app", COPY_ALL, None) != h.checksum(
        tmp_path / "app2", COPY_ALL, None
    )
    assert len(reads) == 2
