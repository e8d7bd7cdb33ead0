"""Parser behaviour beyond BuildKit's golden files: heredocs, directives, ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
from lark import Tree

from frontend import DockerfileError, debug_ast, dump_ast, parse
from frontend import parser as frontend_parser


def test_directives_only_in_leading_block() -> None:
    ast = parse("# syntax=docker/dockerfile:1\n# check=skip=all\nFROM a\n")
    assert ast.directives == {"syntax": "docker/dockerfile:1", "check": "skip=all"}
    ast = parse("FROM a\n# escape=`\nRUN a \\\n b\n")
    assert ast.directives == {} and ast.escape == "\\"
    assert dump_ast(ast) == '(from "a")\n(run "a  b")\n'


def test_backtick_escape_continues_lines() -> None:
    ast = parse("# escape=`\nFROM a\nRUN dir c:\\ `\n  /b\n")
    assert dump_ast(ast) == '(from "a")\n(run "dir c:\\\\   /b")\n'
    assert ast.instructions[1].lines == (3, 4)


def test_heredocs() -> None:
    text = (
        "FROM a\n"
        "RUN <<EOF\n"
        "echo hi\n"
        "\n"
        "# not a comment\n"
        "EOF\n"
        "COPY <<-'ONE' <<\"TWO\" /dst/\n"
        "\t\tindented\n"
        "\tONE\n"
        "two $X\n"
        "TWO\n"
        "RUN 3<<EOF cat /dev/fd/3\n"
        "x\n"
        "EOF\n"
        "ONBUILD RUN <<EOF\n"
        "y\n"
        "EOF\n"
        'RUN ["echo", "<<EOF"]\n'
        "CMD <<EOF\n"
    )
    ast = parse(text)
    run, copy, fd, onbuild, json_run, cmd = ast.instructions[1:]
    assert dump_ast(ast).splitlines()[1:3] == [
        '(run "<<EOF")',
        '(copy "<<-\'ONE\'" "<<\\"TWO\\"" "/dst/")',
    ]
    assert [(d.name, d.content, d.expand) for d in run.heredocs] == [
        ("EOF", "echo hi\n\n# not a comment\n", True)
    ]
    assert run.lines == (2, 6)
    assert [(d.name, d.body, d.expand, d.chomp) for d in copy.heredocs] == [
        ("ONE", "indented\n", False, True),
        ("TWO", "two $X\n", False, False),
    ]
    assert copy.lines == (7, 11)
    assert copy.heredocs[0].content == "\t\tindented\n"  # the AST keeps the tabs
    assert fd.heredocs[0].fd == 3
    assert onbuild.heredocs[0].content == "y\n"
    assert json_run.heredocs == [] and cmd.heredocs == []


def test_heredoc_after_continuation() -> None:
    ast = parse("FROM a\nRUN --network=none \\\n  cat <<EOF\nbody\nEOF\nRUN b\n")
    assert ast.instructions[1].heredocs[0].content == "body\n"
    assert ast.instructions[1].lines == (2, 5)
    assert ast.instructions[2].lines == (6, 6)


def test_unterminated_heredoc() -> None:
    with pytest.raises(DockerfileError, match="unterminated heredoc END"):
        parse("FROM a\nRUN <<END\nbody\n")


def test_heredoc_terminator_inside_a_continued_body_line() -> None:
    # The body line ends with the escape token, and the terminator looks like
    # a comment: the grammar's terminals would read them as one continued
    # instruction; the heredoc must still end there, and what follows be read
    # afresh.
    text = "FROM a\nRUN <<#x\nbody \\\n#x\n\n# c\nRUN <<E\nq\nE\nRUN z\n"
    ast = parse(text)
    run, second, last = ast.instructions[1:]
    assert run.heredocs[0].content == "body \\\n" and run.lines == (2, 4)
    assert second.heredocs[0].content == "q\n" and second.lines == (7, 9)
    assert last.lines == (10, 10)


@pytest.mark.parametrize("escape", ["\\", "`"])
def test_grammar_accepts_the_lexer_tokens(escape: str) -> None:
    """Lark's LALR parser, fed by the lexer parse() reads, builds the tree of
    the grammar: one instruction per AST node, with its heredoc bodies."""
    text = (
        f"# escape={escape}\nFROM a\n\nRUN <<EOF <<-X cat\nbody {escape}\n"
        f"# no comment\nEOF\n\tX\n# c\nCOPY <<A /a\nA\nRUN b {escape}\n\n  c\n# end\n"
    )
    tree = frontend_parser._lark(escape).parse(text)
    nodes = [child for child in tree.children if isinstance(child, Tree)]
    heredocs = [[len(doc.children) for doc in node.children[1:]] for node in nodes]
    assert heredocs == [[], [3, 1], [1], []]
    ast = parse(text)
    assert [len(node.heredocs) for node in ast.instructions] == [0, 2, 1, 0]


def test_comments_and_blanks_between_instructions_keep_positions() -> None:
    ast = parse("\n# c\n  \nFROM a\n\n  # x\n   RUN x \\\n\n  # c\n  y\n# end\n\n")
    assert [(n.start_line, n.start_column, n.end_line) for n in ast.instructions] == [
        (4, 1, 4),
        (7, 4, 10),
    ]
    assert ast.empty_continuations == [8]


def test_positions_and_empty_continuation_warning() -> None:
    ast = parse("FROM a\n  RUN a \\\n\n  b\n")
    node = ast.instructions[1]
    assert (node.start_line, node.start_column, node.end_line, node.end_column) == (
        2,
        3,
        4,
        4,
    )
    assert ast.warnings == ["Dockerfile:3: empty continuation line"]


def test_bom_and_crlf() -> None:
    ast = parse("\ufeffFROM a\r\nRUN b \\\r\n c\r\n")
    assert dump_ast(ast) == '(from "a")\n(run "b  c")\n'


def test_debug_ast(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text("FROM a\nRUN <<EOF\nhi\nEOF\n")
    # Exactly BuildKit's dump: heredoc bodies are not part of it.
    assert debug_ast(path) == '(from "a")\n(run "<<EOF")\n'
