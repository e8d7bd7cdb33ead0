"""COPY, ADD, WORKDIR and heredoc files on real directories (buildpy.fileops).

Each test builds a source tree and a destination root under pytest's tmp_path
(removed by pytest, also on failure) and checks what a user would find in the
image: names, contents, modes, owners, mtimes, symlinks, hard links.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pyzstd

from buildpy.fileops import (
    FileOpError,
    copy,
    match_element,
    mkdir,
    mkfile,
    resolve_in_root,
    select_sources,
)
from solver.graph import CopyAction, MkdirAction, MkfileAction

OLD_NS = 1_500_000_000 * 10**9  # 2017, far from "now"


class FakeIgnore:
    """Excludes the listed paths and what they hold; ``keep`` re-includes."""

    def __init__(self, *paths: str, keep: tuple[str, ...] = ()) -> None:
        self.paths = paths
        self.keep = keep

    def excluded(self, relpath: str) -> bool:
        if any(relpath == k or relpath.startswith(k + "/") for k in self.keep):
            return False
        return any(relpath == p or relpath.startswith(p + "/") for p in self.paths)

    def dir_may_contain_included(self, relpath: str) -> bool:
        return any(k.startswith(relpath + "/") for k in self.keep)


def write(path: Path, text: str = "x", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    root.mkdir()
    return root


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\nstaff:x:50:\napp:x:1001:\n")
    return root


def run_copy(
    dest: Path,
    src: Path,
    *sources: str,
    to: str,
    from_context: bool = True,
    ignore: FakeIgnore | None = None,
    **kw: object,
) -> None:
    action = CopyAction(sources=sources, dest=to, **kw)  # type: ignore[arg-type]
    copy(dest, src, action, ignore=ignore, from_context=from_context)


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- destinations ---------------------------------------------------------------


def test_file_into_dir_with_slash_keeps_its_name(ctx: Path, dest: Path) -> None:
    write(ctx / "a.txt", "hello")
    run_copy(dest, ctx, "a.txt", to="/app/")
    assert (dest / "app/a.txt").read_text() == "hello"
    assert mode(dest / "app") == 0o755


def test_file_into_existing_dir_keeps_its_name(ctx: Path, dest: Path) -> None:
    write(ctx / "a.txt", "hello")
    (dest / "srv").mkdir()
    run_copy(dest, ctx, "a.txt", to="/srv")
    assert (dest / "srv/a.txt").read_text() == "hello"


def test_file_to_new_path_takes_that_name(ctx: Path, dest: Path) -> None:
    write(ctx / "a.txt", "hello")
    run_copy(dest, ctx, "a.txt", to="/opt/deep/b.txt")
    assert (dest / "opt/deep/b.txt").read_text() == "hello"
    assert mode(dest / "opt") == mode(dest / "opt/deep") == 0o755


def test_file_replaces_existing_file_without_writing_through_it(
    ctx: Path, dest: Path
) -> None:
    write(ctx / "a.txt", "new")
    shared = write(dest / "lower.txt", "old")
    os.link(shared, dest / "b.txt")  # as a lower snapshot's hard link would
    run_copy(dest, ctx, "a.txt", to="/b.txt")
    assert (dest / "b.txt").read_text() == "new"
    assert shared.read_text() == "old"


def test_directory_source_copies_its_contents(ctx: Path, dest: Path) -> None:
    write(ctx / "src/a.txt", "a")
    write(ctx / "src/sub/b.txt", "b")
    run_copy(dest, ctx, "src", to="/app")
    assert (dest / "app/a.txt").read_text() == "a"
    assert (dest / "app/sub/b.txt").read_text() == "b"
    assert not (dest / "app/src").exists()


def test_whole_context_with_dot(ctx: Path, dest: Path) -> None:
    write(ctx / "a.txt", "a")
    write(ctx / "d/b.txt", "b")
    run_copy(dest, ctx, ".", to="/app/.")
    assert sorted(p.name for p in (dest / "app").iterdir()) == ["a.txt", "d"]


def test_more_than_one_source_needs_a_slash(ctx: Path, dest: Path) -> None:
    write(ctx / "a.txt")
    write(ctx / "b.txt")
    with pytest.raises(FileOpError) as err:
        run_copy(dest, ctx, "a.txt", "b.txt", to="/app")
    assert str(err.value) == (
        "When using COPY with more than one source file, "
        "the destination must be a directory and end with a /"
    )
    with pytest.raises(FileOpError, match="must be a directory and end with a /"):
        run_copy(dest, ctx, "*.txt", to="/app")
    assert not (dest / "app").exists()
    run_copy(dest, ctx, "a.txt", "b.txt", to="/app/")
    assert sorted(os.listdir(dest / "app")) == ["a.txt", "b.txt"]


def test_file_over_a_directory_fails(ctx: Path, dest: Path) -> None:
    write(ctx / "d/x", "file")
    (dest / "app/x").mkdir(parents=True)
    with pytest.raises(FileOpError, match="cannot replace directory"):
        run_copy(dest, ctx, "d", to="/app")


# --- sources: missing, wildcards, escapes -------------------------------------------


def test_missing_source_names_it(ctx: Path, dest: Path) -> None:
    with pytest.raises(FileOpError) as err:
        run_copy(dest, ctx, "missing.txt", to="/app/")
    assert str(err.value) == 'COPY: "missing.txt" not found in the build context'
    with pytest.raises(FileOpError) as err:
        run_copy(dest, ctx, "missing.txt", to="/app/", from_context=False)
    assert str(err.value) == 'COPY: "missing.txt" not found in the source'
    with pytest.raises(FileOpError, match='^ADD: "nope.tar" not found'):
        run_copy(dest, ctx, "nope.tar", to="/app/", unpack=True)


def test_wildcard_that_matches_nothing_fails(ctx: Path, dest: Path) -> None:
    write(ctx / "a.txt")
    with pytest.raises(FileOpError, match='"[*].md" not found'):
        run_copy(dest, ctx, "*.md", to="/app/")


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*.txt", "a.txt", True),
        ("*.txt", ".hidden.txt", True),  # Go's Match has no dotfile rule
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("[a-c]x", "bx", True),
        ("[a-c]x", "dx", False),
        ("[^a-c]x", "dx", True),
        ("[^a-c]x", "ax", False),
        ("\\*", "*", True),
        ("\\*", "a", False),
        ("[\\]]", "]", True),
    ],
)
def test_go_match_rules(pattern: str, name: str, matches: bool) -> None:
    assert match_element(pattern, name) is matches


@pytest.mark.parametrize("pattern", ["[", "[]", "a\\", "[a-", "[-a]"])
def test_bad_pattern_is_the_users_error(pattern: str) -> None:
    with pytest.raises(FileOpError, match="syntax error in pattern"):
        match_element(pattern, "a")


def test_wildcards_per_element(ctx: Path, dest: Path) -> None:
    for name in ["a1.txt", "b2.txt", "c3.txt", "d4.txt", "e.md", "*.txt"]:
        write(ctx / name, name)
    write(ctx / "dir1/x.txt", "1")
    write(ctx / "dir2/x.txt", "2")
    run_copy(dest, ctx, "[a-c]?.txt", to="/one/")
    assert sorted(os.listdir(dest / "one")) == ["a1.txt", "b2.txt", "c3.txt"]
    run_copy(dest, ctx, "\\*.txt", to="/two/")
    assert os.listdir(dest / "two") == ["*.txt"]
    # A wildcard in a directory element; the matched files keep their names,
    # so the later match wins, in sorted order.
    run_copy(dest, ctx, "dir*/x.txt", to="/three/")
    assert (dest / "three/x.txt").read_text() == "2"


def test_single_wildcard_match_acts_as_that_source(ctx: Path, dest: Path) -> None:
    write(ctx / "only.txt", "o")
    run_copy(dest, ctx, "*.txt", to="/renamed")
    assert (dest / "renamed").read_text() == "o"


def test_dotdot_cannot_leave_the_source(ctx: Path, dest: Path) -> None:
    write(ctx / "etc/passwd", "inside")
    run_copy(dest, ctx, "../../../../etc/passwd", to="/got")
    assert (dest / "got").read_text() == "inside"
    (ctx / "up").symlink_to("../../../../../etc")
    run_copy(dest, ctx, "up/passwd", to="/got2")
    assert (dest / "got2").read_text() == "inside"


def test_absolute_symlink_resolves_inside_the_source(ctx: Path, dest: Path) -> None:
    (ctx / "hosts").symlink_to("/etc/hosts")  # exists on the host, not in ctx
    with pytest.raises(FileOpError, match='"hosts" not found'):
        run_copy(dest, ctx, "hosts", to="/h")


# --- symlinks, hard links, modes, mtimes -------------------------------------------


def test_source_symlink_is_followed_and_keeps_the_link_name(
    ctx: Path, dest: Path
) -> None:
    write(ctx / "real.txt", "content", 0o600)
    (ctx / "link.txt").symlink_to("real.txt")
    write(ctx / "dir/f", "f")
    (ctx / "dirlink").symlink_to("dir")
    run_copy(dest, ctx, "link.txt", "dirlink", to="/app/")
    assert not (dest / "app/link.txt").is_symlink()
    assert (dest / "app/link.txt").read_text() == "content"
    assert mode(dest / "app/link.txt") == 0o600
    assert (dest / "app/f").read_text() == "f"


def test_tree_keeps_symlinks_modes_mtimes_and_hard_links(ctx: Path, dest: Path) -> None:
    src = ctx / "src"
    write(src / "run.sh", "#!/bin/sh", 0o4755)
    write(src / "secret", "s", 0o600)
    (src / "sub").mkdir()
    os.chmod(src / "sub", 0o750)
    (src / "abs").symlink_to("/etc/passwd")
    (src / "rel").symlink_to("run.sh")
    os.link(src / "secret", src / "secret2")
    for p in [src / "run.sh", src / "secret", src / "sub"]:
        os.utime(p, ns=(OLD_NS, OLD_NS))
    os.utime(src / "rel", ns=(OLD_NS, OLD_NS), follow_symlinks=False)
    run_copy(dest, ctx, "src", to="/app/")
    app = dest / "app"
    assert mode(app / "run.sh") == 0o4755
    assert mode(app / "secret") == 0o600
    assert mode(app / "sub") == 0o750
    assert os.readlink(app / "abs") == "/etc/passwd"
    assert os.readlink(app / "rel") == "run.sh"
    for p in [app / "run.sh", app / "sub", app / "rel"]:
        assert os.lstat(p).st_mtime_ns == OLD_NS, p
    assert os.stat(app / "secret").st_ino == os.stat(app / "secret2").st_ino


def test_special_files_are_recreated(ctx: Path, dest: Path) -> None:
    os.mkdir(ctx / "d")
    os.mkfifo(ctx / "d/fifo")
    os.mknod(ctx / "d/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    run_copy(dest, ctx, "d", to="/dev/")
    assert stat.S_ISFIFO(os.lstat(dest / "dev/fifo").st_mode)
    st = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_chmod_replaces_modes_of_files_and_dirs(ctx: Path, dest: Path) -> None:
    write(ctx / "d/a", "a", 0o600)
    write(ctx / "d/sub/b", "b", 0o755)
    run_copy(dest, ctx, "d", to="/app", chmod="0640")
    assert mode(dest / "app") == 0o640
    assert mode(dest / "app/a") == mode(dest / "app/sub") == 0o640
    with pytest.raises(FileOpError, match="--chmod=rwx"):
        run_copy(dest, ctx, "d", to="/x", chmod="rwx")


# --- owners -------------------------------------------------------------------------


def test_context_files_become_root_owned(ctx: Path, dest: Path) -> None:
    write(ctx / "d/a")
    os.chown(ctx / "d/a", 1234, 5678)
    os.chown(ctx / "d", 1234, 5678)
    run_copy(dest, ctx, "d", to="/app")
    assert owner(dest / "app/a") == owner(dest / "app") == (0, 0)


def test_stage_files_keep_their_owners(ctx: Path, dest: Path) -> None:
    write(ctx / "d/a")
    (ctx / "d/l").symlink_to("a")
    os.chown(ctx / "d/a", 1234, 5678)
    os.chown(ctx / "d/l", 42, 43, follow_symlinks=False)
    run_copy(dest, ctx, "d", to="/app", from_context=False)
    assert owner(dest / "app/a") == (1234, 5678)
    assert owner(dest / "app/l") == (42, 43)


@pytest.mark.parametrize(
    ("chown", "expected"),
    [
        ("app", (1000, 1001)),  # a name gets its primary group
        ("app:staff", (1000, 50)),
        ("1000", (1000, 1000)),  # a number gets the same number
        ("77:88", (77, 88)),
        ("app:9", (1000, 9)),
    ],
)
def test_chown_applies_to_entries_and_created_dirs(
    ctx: Path, dest: Path, chown: str, expected: tuple[int, int]
) -> None:
    write(ctx / "d/a")
    write(ctx / "d/sub/b")
    run_copy(dest, ctx, "d", to="/new/parent/", chown=chown)
    for p in ["new", "new/parent", "new/parent/a", "new/parent/sub/b"]:
        assert owner(dest / p) == expected, p
    assert owner(dest / "etc") == (0, 0)  # existing dirs are not touched


@pytest.mark.parametrize(
    ("chown", "message"),
    [("nobody", "unknown user 'nobody'"), ("app:wheel", "unknown group 'wheel'")],
)
def test_unknown_chown_names_fail(
    ctx: Path, dest: Path, chown: str, message: str
) -> None:
    write(ctx / "a")
    with pytest.raises(FileOpError, match=message):
        run_copy(dest, ctx, "a", to="/a", chown=chown)


# --- writes never leave the destination root ---------------------------------------


def test_dest_symlinks_resolve_inside_the_root(ctx: Path, dest: Path) -> None:
    write(ctx / "a.txt", "payload")
    outside = dest.parent / "outside"
    outside.mkdir()
    (dest / "app").symlink_to("/outside")  # absolute: means rootfs/outside
    (dest / "up").symlink_to("../../../outside")
    run_copy(dest, ctx, "a.txt", to="/app/")
    run_copy(dest, ctx, "a.txt", to="/up/x/")
    assert (dest / "outside/a.txt").read_text() == "payload"
    assert (dest / "outside/x/a.txt").read_text() == "payload"
    assert list(outside.iterdir()) == []


def test_file_dest_that_is_a_symlink_is_replaced(ctx: Path, dest: Path) -> None:
    write(ctx / "a.txt", "payload")
    victim = write(dest.parent / "victim", "safe")
    (dest / "f").symlink_to(victim)  # a symlink to a file is not followed
    run_copy(dest, ctx, "a.txt", to="/f")
    assert (dest / "f").read_text() == "payload" and not (dest / "f").is_symlink()
    assert victim.read_text() == "safe"


def test_resolve_in_root(tmp_path: Path) -> None:
    root = tmp_path
    (root / "a/b").mkdir(parents=True)
    (root / "a/abs").symlink_to("/a/b")
    (root / "a/rel").symlink_to("../a/b")
    (root / "a/esc").symlink_to("../../../../..")
    (root / "loop").symlink_to("loop")
    assert resolve_in_root(root, "/a/abs/c") == root / "a/b/c"
    assert resolve_in_root(root, "a/rel") == root / "a/b"
    assert resolve_in_root(root, "/a/esc/etc") == root / "etc"
    assert resolve_in_root(root, "/../../x") == root / "x"
    with pytest.raises(FileOpError, match="too many levels of symbolic links"):
        resolve_in_root(root, "/loop")


# --- .dockerignore and --exclude -----------------------------------------------------


def test_ignored_entries_are_not_there(ctx: Path, dest: Path) -> None:
    write(ctx / "keep.txt")
    write(ctx / "secret.txt")
    write(ctx / "build/out.o")
    write(ctx / "build/keep.me")
    ignore = FakeIgnore("secret.txt", "build", keep=("build/keep.me",))
    run_copy(dest, ctx, ".", to="/app/", ignore=ignore)
    assert sorted(os.listdir(dest / "app")) == ["build", "keep.txt"]
    assert os.listdir(dest / "app/build") == ["keep.me"]
    with pytest.raises(FileOpError, match='"secret.txt" not found'):
        run_copy(dest, ctx, "secret.txt", to="/x", ignore=ignore)
    run_copy(dest, ctx, "*.txt", to="/w/", ignore=ignore)
    assert os.listdir(dest / "w") == ["keep.txt"]


def test_ignored_symlink_is_not_followed(ctx: Path, dest: Path) -> None:
    write(ctx / "data/a", "a")
    (ctx / "link").symlink_to("data")
    with pytest.raises(FileOpError, match='"link/a" not found'):
        run_copy(dest, ctx, "link/a", to="/a", ignore=FakeIgnore("link"))


def test_excludes_hide_entries(ctx: Path, dest: Path) -> None:
    write(ctx / "docs/a.md")
    write(ctx / "docs/b.txt")
    write(ctx / "docs/sub/c.md")
    write(ctx / "top.md")
    write(ctx / "top.txt")
    run_copy(dest, ctx, "docs", to="/d/", excludes=("**/*.md",))
    assert sorted(p.name for p in (dest / "d").rglob("*")) == ["b.txt", "sub"]
    run_copy(dest, ctx, "*", to="/e/", excludes=("*.md", "docs"))
    assert os.listdir(dest / "e") == ["top.txt"]
    # Matched relative to a copied directory too.
    run_copy(dest, ctx, "docs", to="/f/", excludes=("*.md",))
    assert sorted(os.listdir(dest / "f")) == ["b.txt", "sub"]


def test_select_sources_order_is_stable(ctx: Path) -> None:
    for name in ["b/2", "b/1", "a", "c/x/y"]:
        write(ctx / name)
    action = CopyAction(sources=("c", "."), dest="/x/")
    got = [(s.source, s.inner) for s in select_sources(ctx, action, None)]
    assert got == [
        (0, ""),
        (0, "x"),
        (0, "x/y"),
        (1, ""),
        (1, "a"),
        (1, "b"),
        (1, "b/1"),
        (1, "b/2"),
        (1, "c"),
        (1, "c/x"),
        (1, "c/x/y"),
    ]


# --- COPY --parents ------------------------------------------------------------


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_parents_keep_the_path_of_each_source(ctx: Path, dest: Path) -> None:
    write(ctx / "x/y/a.txt", "a")
    write(ctx / "x/b.txt", "b")
    write(ctx / "z/c.txt", "c")
    os.chmod(ctx / "x", 0o750)
    os.utime(ctx / "x", ns=(OLD_NS, OLD_NS))
    run_copy(dest, ctx, "./x/y/a.txt", "x/b.txt", to="/dst/", parents=True)
    assert files_under(dest / "dst") == ["x", "x/b.txt", "x/y", "x/y/a.txt"]
    assert (dest / "dst/x/y/a.txt").read_text() == "a"
    # A kept parent is created with its source's metadata, root-owned.
    assert mode(dest / "dst/x") == 0o750
    assert os.stat(dest / "dst/x").st_mtime_ns == OLD_NS
    assert owner(dest / "dst/x") == (0, 0)
    # Without --parents the same sources land side by side.
    run_copy(dest, ctx, "./x/y/a.txt", "x/b.txt", to="/flat/")
    assert files_under(dest / "flat") == ["a.txt", "b.txt"]


def test_parents_keep_what_a_wildcard_matched(ctx: Path, dest: Path) -> None:
    write(ctx / "x/b/a.txt", "b")
    write(ctx / "x/c/a.txt", "c")
    write(ctx / "x/d/other.txt")
    run_copy(dest, ctx, "./x/*/a.txt", to="/dst", parents=True)
    # Only the matches' parents appear; the destination is a directory even
    # without a trailing slash.
    assert files_under(dest / "dst") == ["x", "x/b", "x/b/a.txt", "x/c", "x/c/a.txt"]
    assert (dest / "dst/x/c/a.txt").read_text() == "c"


def test_pivot_keeps_only_what_follows_it(ctx: Path, dest: Path) -> None:
    write(ctx / "x/y/a.txt", "a")
    write(ctx / "x/y/b.txt", "b")
    run_copy(dest, ctx, "./x/./y/*.txt", to="/dst/", parents=True)
    assert files_under(dest / "dst") == ["y", "y/a.txt", "y/b.txt"]
    # ".." after the pivot cannot climb above it.
    run_copy(dest, ctx, "x/./../y/a.txt", to="/up/", parents=True)
    assert files_under(dest / "up") == ["y", "y/a.txt"]


def test_parents_of_a_directory_source_keep_its_name(ctx: Path, dest: Path) -> None:
    write(ctx / "src/pkg/mod/m.py", "m")
    write(ctx / "src/pkg/init.py", "i")
    os.chmod(ctx / "src/pkg", 0o700)
    run_copy(dest, ctx, "src/pkg", to="/app/", parents=True)
    assert files_under(dest / "app") == [
        "src",
        "src/pkg",
        "src/pkg/init.py",
        "src/pkg/mod",
        "src/pkg/mod/m.py",
    ]
    assert mode(dest / "app/src/pkg") == 0o700
    # The pivot itself: its contents, as a plain directory copy.
    run_copy(dest, ctx, "src/./", to="/piv/", parents=True)
    assert files_under(dest / "piv") == files_under(ctx / "src")


def test_parents_with_chown_own_files_and_kept_dirs(ctx: Path, dest: Path) -> None:
    write(ctx / "x/y/a.txt")
    (dest / "dst/x").mkdir(parents=True)
    os.chmod(dest / "dst/x", 0o711)
    run_copy(dest, ctx, "x/y/a.txt", to="/dst/", parents=True, chown="app")
    assert owner(dest / "dst/x/y") == (1000, 1001)
    assert owner(dest / "dst/x/y/a.txt") == (1000, 1001)
    # An existing parent is left as it is.
    assert owner(dest / "dst/x") == (0, 0)
    assert mode(dest / "dst/x") == 0o711


def test_parents_from_a_stage_with_absolute_sources(tmp_path: Path, dest: Path) -> None:
    stage = tmp_path / "stage"
    write(stage / "app/dist/x.js", "x")
    os.chown(stage / "app/dist/x.js", 7, 8)
    write(stage / "etc/conf/a.conf", "c")
    run_copy(
        dest,
        stage,
        "/app/./dist/x.js",
        "/etc/conf",
        to="/srv/",
        parents=True,
        from_context=False,
    )
    assert files_under(dest / "srv") == [
        "dist",
        "dist/x.js",
        "etc",
        "etc/conf",
        "etc/conf/a.conf",
    ]
    assert owner(dest / "srv/dist/x.js") == (7, 8)


def test_parents_keep_a_symlinked_directory_by_its_name(ctx: Path, dest: Path) -> None:
    write(ctx / "real/a.txt", "a")
    os.chmod(ctx / "real", 0o751)
    os.symlink("real", ctx / "link")
    run_copy(dest, ctx, "link/a.txt", to="/dst/", parents=True)
    assert files_under(dest / "dst") == ["link", "link/a.txt"]
    # A directory, with the metadata of the one the symlink names.
    assert not (dest / "dst/link").is_symlink()
    assert mode(dest / "dst/link") == 0o751


def test_parents_missing_source_fails(ctx: Path, dest: Path) -> None:
    write(ctx / "x/a.txt")
    with pytest.raises(FileOpError, match=r'COPY: "x/./b.txt" not found'):
        run_copy(dest, ctx, "x/./b.txt", to="/dst/", parents=True)


def test_parents_see_no_ignored_entries(ctx: Path, dest: Path) -> None:
    write(ctx / "x/a/keep.txt")
    write(ctx / "x/b/keep.txt")
    run_copy(
        dest, ctx, "x/*/keep.txt", to="/dst/", parents=True, ignore=FakeIgnore("x/b")
    )
    assert files_under(dest / "dst") == ["x", "x/a", "x/a/keep.txt"]


# --- large trees (their regular files are copied on threads) ------------------------


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """What a user sees of every entry below ``root``: type, mode, owner,
    mtime, and the content, link target or device; plus, for files with
    several names, the names that share an inode."""
    state: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            what: object = None
            if stat.S_ISREG(st.st_mode):
                what = path.read_bytes()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode):
                what = st.st_rdev
            mode, owner = st.st_mode, (st.st_uid, st.st_gid)
            state[rel] = (mode, owner, st.st_mtime_ns, what)
    for names in inodes.values():
        for rel in names if len(names) > 1 else []:
            state[rel] += (sorted(names),)
    return state


def big_tree(src: Path, dirs: int = 12, files: int = 25) -> None:
    """A tree of every kind of entry, with many regular files."""
    modes = [0o644, 0o600, 0o755, 0o4755, 0o2750, 0o444]
    for d in range(dirs):
        sub = src / f"d{d:02}"
        sub.mkdir(parents=True)
        for f in range(files):
            n = d * files + f
            path = sub / f"f{f:03}"
            path.write_bytes(f"file {n}\n".encode() * (n % 7))  # some are empty
            os.chown(path, 1000 + n % 3, 2000 + n % 5)
            os.chmod(path, modes[n % len(modes)])  # after chown, which clears setuid
            os.utime(path, ns=(OLD_NS, OLD_NS + n))
        (sub / "link").symlink_to(f"f{d:03}")
        os.chown(sub / "link", 7, 8, follow_symlinks=False)
        os.utime(sub / "link", ns=(OLD_NS, OLD_NS - d), follow_symlinks=False)
    big = src / "d00" / "big"
    big.write_bytes(os.urandom(3 << 20))  # more than one sendfile chunk
    os.link(src / "d00/f001", src / f"d{dirs - 1:02}/hard")
    os.mkfifo(src / "d01/fifo")
    os.mknod(src / "d01/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkdir(src / "d02/empty", 0o700)
    for d in [*src.iterdir(), src / "d02/empty"]:
        os.utime(d, ns=(OLD_NS, OLD_NS - 1000))


def test_a_large_tree_is_copied_exactly(ctx: Path, dest: Path) -> None:
    big_tree(ctx / "t")
    run_copy(dest, ctx, "t", to="/app", from_context=False)
    assert tree_state(dest / "app") == tree_state(ctx / "t")


def test_a_large_tree_replaces_what_the_destination_holds(
    ctx: Path, dest: Path
) -> None:
    big_tree(ctx / "t")
    write(dest / "app/d03/f000", "old")
    write(dest / "app/d03/zzz", "kept")
    (dest / "elsewhere").mkdir()
    (dest / "app/d04").symlink_to("/elsewhere")  # a directory in the root: followed
    run_copy(dest, ctx, "t", to="/app", from_context=False)
    expected = tree_state(ctx / "t")
    below = {rel[4:]: v for rel, v in expected.items() if rel.startswith("d04/")}
    got = tree_state(dest / "app")
    assert got.pop("d03/zzz")[3] == b"kept"
    assert os.readlink(dest / "app/d04") == "/elsewhere"
    del got["d04"], expected["d04"]
    assert got == {k: v for k, v in expected.items() if not k.startswith("d04/")}
    assert tree_state(dest / "elsewhere") == below


def test_a_directory_written_twice_through_a_symlink_gets_the_later_files(
    ctx: Path, dest: Path
) -> None:
    # b sorts after a, and the destination's b points to a: the copy writes a's
    # files, then b's over them, as one thread would.
    for name in "ab":
        for i in range(100):
            write(ctx / "t" / name / f"f{i:03}", f"{name}{i}")
    (dest / "app").mkdir()
    (dest / "app/b").symlink_to("a")
    run_copy(dest, ctx, "t", to="/app")
    assert {p.name: p.read_text() for p in (dest / "app/a").iterdir()} == {
        f"f{i:03}": f"b{i}" for i in range(100)
    }
    assert os.readlink(dest / "app/b") == "a"


@pytest.fixture
def small_fs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs with the limit given by the test's parameter, unmounted after."""
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", request.param, "tmpfs", str(root)], check=True
    )
    try:
        yield root
    finally:
        if os.path.ismount(root):
            subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.mark.parametrize(
    ("small_fs", "size"),
    [("nr_inodes=60", 10), ("size=256k", 8192)],
    indirect=["small_fs"],
    ids=["inodes", "space"],
)
def test_a_full_destination_stops_the_copy_at_the_first_file_it_cannot_write(
    ctx: Path, small_fs: Path, size: int
) -> None:
    # Several directories: their files are copied at the same time.
    names = [f"{d}/f{i:03}" for d in "abcd" for i in range(50)]
    for name in names:
        write(ctx / "t" / name, name[-1] * size)
    with pytest.raises(OSError) as raised:
        run_copy(small_fs, ctx, "t", to="/app")
    assert raised.value.errno == errno.ENOSPC
    failed = Path(raised.value.filename).relative_to(small_fs / "app").as_posix()
    assert failed in names
    for name in names[: names.index(failed)]:  # everything before it is there
        assert (small_fs / "app" / name).read_text() == name[-1] * size
    # No thread is left writing: the file system can go at once.
    subprocess.run(["umount", str(small_fs)], check=True)


# --- ADD of local archives ------------------------------------------------------------


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(buf.getvalue())
    return path


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes | None = None,
    *,
    linkname: str = "",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = 1_500_000_000
    info.linkname = linkname
    if data is not None:
        info.size = len(data)
    return info, data


SAMPLE = [
    entry("app", tarfile.DIRTYPE, mode=0o750, uid=5, gid=6),
    entry("app/bin.sh", data=b"#!/bin/sh\n", mode=0o755, uid=1000, gid=1000),
    entry("app/link", tarfile.SYMTYPE, linkname="bin.sh"),
    entry("app/hard", tarfile.LNKTYPE, linkname="app/bin.sh"),
]

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda b: b,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": pyzstd.compress,
}


@pytest.mark.parametrize("compression", COMPRESSORS)
def test_add_unpacks_archives_by_content(
    ctx: Path, dest: Path, compression: str
) -> None:
    raw = make_tar(ctx / "raw", SAMPLE).read_bytes()
    (ctx / "archive.bin").write_bytes(COMPRESSORS[compression](raw))  # no suffix
    run_copy(dest, ctx, "archive.bin", to="/opt", unpack=True)
    app = dest / "opt/app"
    assert (app / "bin.sh").read_bytes() == b"#!/bin/sh\n"
    assert mode(app / "bin.sh") == 0o755 and owner(app / "bin.sh") == (1000, 1000)
    assert mode(app) == 0o750 and owner(app) == (5, 6)
    assert os.lstat(app).st_mtime_ns == 1_500_000_000 * 10**9
    assert os.readlink(app / "link") == "bin.sh"
    assert os.stat(app / "hard").st_ino == os.stat(app / "bin.sh").st_ino


def test_add_chown_overrides_archive_owners(ctx: Path, dest: Path) -> None:
    make_tar(ctx / "a.tar", SAMPLE)
    run_copy(dest, ctx, "a.tar", to="/opt/", unpack=True, chown="app")
    assert owner(dest / "opt/app/bin.sh") == (1000, 1001)
    assert owner(dest / "opt/app/link") == (1000, 1001)


def test_add_of_a_non_archive_copies_it(ctx: Path, dest: Path) -> None:
    write(ctx / "fake.tar.gz", "not really")
    (ctx / "gz.bin").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    run_copy(dest, ctx, "fake.tar.gz", "gz.bin", to="/opt/", unpack=True)
    assert (dest / "opt/fake.tar.gz").read_text() == "not really"
    assert (dest / "opt/gz.bin").read_bytes().startswith(b"\x1f\x8b")


def test_copy_never_unpacks(ctx: Path, dest: Path) -> None:
    make_tar(ctx / "a.tar", SAMPLE)
    run_copy(dest, ctx, "a.tar", to="/opt/")
    assert (dest / "opt/a.tar").read_bytes() == (ctx / "a.tar").read_bytes()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([entry("ok"), entry("../evil", data=b"x")], "'../evil' would land outside"),
        ([entry("ok"), entry("/etc/evil", data=b"x")], "'/etc/evil' has an absolute"),
        (
            [entry("l", tarfile.SYMTYPE, linkname="/etc"), entry("l/evil", data=b"x")],
            "'l/evil' would be written through a symlink",
        ),
        (
            [
                entry("l", tarfile.SYMTYPE, linkname="../.."),
                entry("l/evil", data=b"x"),
            ],
            "'l/evil' would be written through a symlink",
        ),
        (
            [entry("h", tarfile.LNKTYPE, linkname="../etc/passwd")],
            "would land outside",
        ),
        (
            [
                entry("l", tarfile.SYMTYPE, linkname="/etc"),
                entry("h", tarfile.LNKTYPE, linkname="l/passwd"),
            ],  # noqa: E501
            "hard link 'h' points outside",
        ),
    ],
)
def test_add_refuses_escaping_archives_and_leaves_nothing(
    ctx: Path,
    dest: Path,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    message: str,
) -> None:
    for i, (info, data) in enumerate(members):
        if info.isreg() and data is None:
            members[i] = entry(info.name, data=b"fine")
    make_tar(ctx / "bad.tar", members)
    (dest / "opt").mkdir()
    with pytest.raises(FileOpError, match=message) as err:
        run_copy(dest, ctx, "bad.tar", to="/opt", unpack=True)
    assert "ADD bad.tar" in str(err.value)
    assert list((dest / "opt").iterdir()) == []
    assert sorted(os.listdir(dest / "etc")) == ["group", "passwd"]


def test_add_refuses_writing_through_an_existing_symlink(ctx: Path, dest: Path) -> None:
    (dest / "opt").mkdir()
    (dest / "opt/etc").symlink_to("/etc")
    make_tar(ctx / "bad.tar", [entry("etc/evil", data=b"x")])
    with pytest.raises(FileOpError, match="through a symlink to /etc"):
        run_copy(dest, ctx, "bad.tar", to="/opt", unpack=True)
    assert not (dest / "etc/evil").exists()


# --- WORKDIR and heredoc files -------------------------------------------------------


def test_mkdir_creates_missing_dirs_only(dest: Path) -> None:
    os.chmod(dest / "etc", 0o700)
    mkdir(dest, MkdirAction(path="/etc/app/data", mode=0o750, owner="app"))
    assert mode(dest / "etc") == 0o700 and owner(dest / "etc") == (0, 0)
    assert mode(dest / "etc/app/data") == 0o750
    assert owner(dest / "etc/app") == (1000, 1001)
    mkdir(dest, MkdirAction(path="/etc/app/data"))  # exists: no error
    with pytest.raises(FileOpError, match="exists and is not a directory"):
        mkdir(dest, MkdirAction(path="/etc/passwd/x"))


def test_mkdir_follows_symlinks_inside_the_root(dest: Path) -> None:
    (dest / "work").symlink_to("/srv/real")
    mkdir(dest, MkdirAction(path="/work/sub"))
    assert (dest / "srv/real/sub").is_dir()


def test_mkfile_writes_and_replaces(dest: Path) -> None:
    victim = write(dest.parent / "victim", "safe")
    (dest / "app").mkdir()
    (dest / "app/conf").symlink_to(victim)
    mkfile(dest, MkfileAction(path="/app/conf", data="k=v\n", mode=0o600))
    assert (dest / "app/conf").read_text() == "k=v\n"
    assert mode(dest / "app/conf") == 0o600
    assert victim.read_text() == "safe"
    mkfile(dest, MkfileAction(path="/new/dir/f", data="", owner="app:staff"))
    assert owner(dest / "new/dir/f") == (1000, 50)
