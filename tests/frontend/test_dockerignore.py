"""docker's .dockerignore reading and matching rules."""

from __future__ import annotations

import pytest

from frontend import IgnoreMatcher, read_dockerignore


def test_read_dockerignore_rules() -> None:
    text = (
        "\ufeff# comment\n"
        "\n"
        "  *.md  \n"
        "/build/\n"
        "a//b/../c\n"
        "! README.md\n"
        " # not a comment: leading blank\n"
        "/\n"
    )
    assert read_dockerignore(text) == [
        "*.md",
        "build",
        "a/c",
        "!README.md",
        "# not a comment: leading blank",
        "/",
    ]


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["*.md"], "README.md", True),
        (["*.md"], "docs/README.md", False),  # * stays within one component
        (["**/*.md"], "docs/a/README.md", True),
        (["**/*.md"], "README.md", True),
        (["docs/**"], "docs/a/b", True),
        (["build"], "build/out/x.o", True),  # a directory excludes descendants
        (["b?ild"], "build", True),
        (["[ab].txt"], "a.txt", True),
        (["[ab].txt"], "c.txt", False),
        (["[!ab].txt"], "c.txt", True),
        (["*.md", "!README.md"], "README.md", False),
        (["*.md", "!README.md", "README*"], "README.md", True),  # last wins
        (["docs", "!docs/keep.txt"], "docs/keep.txt", False),
        (["docs", "!docs/keep.txt"], "docs/other.txt", True),
        (["a\\*b"], "a*b", True),
        (["a\\*b"], "axb", False),
        (["file.(x)"], "file.(x)", True),
        ([".git"], "./.git/HEAD", True),
    ],
)
def test_excluded(patterns: list[str], path: str, excluded: bool) -> None:
    assert IgnoreMatcher(read_dockerignore("\n".join(patterns))).excluded(path) is (
        excluded
    )


def test_dir_may_contain_included() -> None:
    matcher = IgnoreMatcher(["node_modules", "docs", "!docs/*/keep.txt", "*.tmp"])
    assert matcher.dir_may_contain_included("src")  # not excluded at all
    assert not matcher.dir_may_contain_included("node_modules")
    assert matcher.dir_may_contain_included("docs")
    assert matcher.dir_may_contain_included("docs/a")
    assert not matcher.dir_may_contain_included("x.tmp")
    assert IgnoreMatcher(["*", "!**/*.py"]).dir_may_contain_included("any/dir")
