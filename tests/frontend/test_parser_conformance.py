"""BuildKit's own parser golden files (tests/frontend/data/buildkit-parser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from frontend import parser as frontend_parser
from frontend.errors import DockerfileError
from frontend.parser import dump_ast, parse

DATA = Path(__file__).parent / "data" / "buildkit-parser"
POSITIVE = sorted(p.name for p in (DATA / "positive").iterdir())
NEGATIVE = sorted(p.name for p in (DATA / "negative").iterdir())


def _read(path: Path) -> str:
    # BuildKit reads bytes; surrogateescape keeps invalid UTF-8 round-trippable.
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


def test_all_cases_present() -> None:
    assert len(POSITIVE) == 33
    assert len(NEGATIVE) == 4


@pytest.mark.parametrize("case", POSITIVE)
def test_positive_dump_matches_byte_for_byte(case: str) -> None:
    ast = parse(_read(DATA / "positive" / case / "Dockerfile"))
    expected = _read(DATA / "positive" / case / "result")
    assert dump_ast(ast) == expected


@pytest.mark.parametrize("case", POSITIVE)
def test_lexer_tokens_are_larks_own(case: str) -> None:
    """parse() reads its own lexer's tokens: they must be the ones Lark's lexer
    cuts from the grammar's terminals (no heredoc in these files)."""
    text = _read(DATA / "positive" / case / "Dockerfile")
    escape = parse(text).escape
    ours = frontend_parser._lexer(escape).tokens(text)
    larks = frontend_parser._lark(escape).lex(text)
    assert [(t.type, t.value, t.start_pos, t.line, t.column) for t in ours] == [
        (t.type, t.value, t.start_pos, t.line, t.column) for t in larks
    ]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty_dockerfile", "file with no instructions"),
        ("env_no_value", "ENV must have two arguments"),
        ("only_comments", "file with no instructions"),
        ("shykes-nested-json", "arrays must be comprised of strings only"),
    ],
)
def test_negative_cases_fail(case: str, message: str) -> None:
    assert case in NEGATIVE
    with pytest.raises(DockerfileError, match=message):
        parse(_read(DATA / "negative" / case / "Dockerfile"))


def test_line_info() -> None:
    ast = parse(_read(DATA / "line-info" / "Dockerfile"))
    assert [n.lines for n in ast.instructions] == [(5, 5), (11, 12), (17, 31)]
    assert (ast.start_line, ast.end_line) == (5, 31)
