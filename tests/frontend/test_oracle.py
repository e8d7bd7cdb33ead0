"""Differential tests against BuildKit's own Go parser (the PyPI ``dockerfile``
package embeds it, v0.12.5): on every Dockerfile of the test suite and on
generated ones, both parsers must agree on instruction names, flags, values,
JSON form, line ranges and heredocs, or both must reject the file.

The oracle's known gaps (shared/conformance/README.md) are kept out of the
comparison, each where it applies: ENV/LABEL separators are dropped, ONBUILD's
inner flags and heredocs are not compared, values are cut at a NUL, no
``<< EOF`` with a blank is compared.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from frontend.errors import DockerfileError
from frontend.parser import Instruction, parse

dockerfile = pytest.importorskip("dockerfile", reason="pip install dockerfile")

TESTS = Path(__file__).resolve().parent.parent
Row = tuple[Any, ...]


def ours(text: str) -> list[Row] | str:
    try:
        nodes = parse(text).instructions
    except DockerfileError:
        return "error"
    rows = []
    for node in nodes:
        sub, flags, values, is_json = None, tuple(node.flags), node.args, node.json
        if node.keyword == "onbuild" and node.args:
            inner = node.args[0]
            assert isinstance(inner, Instruction)
            sub, flags, values, is_json = inner.keyword, (), inner.args, inner.json
        if (sub or node.keyword) in ("env", "label"):
            values = [v for i, v in enumerate(values) if i % 3 != 2]
        # Gap: the oracle passes strings through C, a NUL truncates them.
        values = [v.split("\x00")[0] if isinstance(v, str) else v for v in values]
        docs = tuple((d.name, d.content) for d in node.heredocs)
        if sub:
            # Gap: the oracle's rows carry no heredocs for ONBUILD (its line
            # range still covers them).
            docs = ()
        rows.append(
            (node.keyword, sub, is_json, node.lines, flags, tuple(values), docs)
        )
    return rows


def _undo_latin1(text: str) -> str:
    """Gap of the oracle (dockerfile 3.4): it hands flags back with their UTF-8
    bytes read as Latin-1 (`--x=é` comes back `--x=Ã©`), values it gets right.
    Found by the generated cases below; undone here so the parses compare."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def theirs(text: str) -> list[Row] | str:
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError:
        return "error"
    rows = []
    for c in commands:
        sub = c.sub_cmd.lower() if c.sub_cmd else None
        flags = () if sub else tuple(_undo_latin1(f) for f in c.flags)
        docs = tuple((d.name, d.content) for d in c.heredocs)
        lines = (c.start_line, c.end_line)
        keyword = (c.cmd or "").lower()  # a line of only an escape: no keyword
        rows.append((keyword, sub, c.json, lines, flags, tuple(c.value), docs))
    return rows


def suite_dockerfiles() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*") if p.name.endswith("Dockerfile"))


def suite_texts() -> list[str]:
    """Dockerfile texts written inline in the frontend's test tables."""
    from tests.frontend import test_errors, test_flags

    texts = [row[0] for row in test_errors.ERRORS]
    texts += [
        v for v in vars(test_flags).values() if isinstance(v, str) and "FROM" in v
    ]
    return texts


@pytest.mark.parametrize(
    "path", suite_dockerfiles(), ids=lambda p: str(p.relative_to(TESTS))
)
def test_suite_dockerfiles_agree(path: Path) -> None:
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    assert ours(text) == theirs(text)


@pytest.mark.parametrize("text", suite_texts())
def test_suite_texts_agree(text: str) -> None:
    assert ours(text) == theirs(text)


# --- generated Dockerfiles -------------------------------------------------------

KEYWORDS = [
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
    "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
    "HEALTHCHECK", "SHELL", "BOGUS",
]  # fmt: skip
_CHARS = st.sampled_from(list("abcxyz019 _-./:=$\"'\\{}[],#<@*") + ["\t", "é", "♥"])
_WORD = st.text(_CHARS, min_size=0, max_size=12)
_PLAIN = st.text(st.sampled_from(list("abcxyz019_-./")), min_size=1, max_size=8)


def _case(keyword: str, draw: Any) -> str:
    style = draw(st.sampled_from(["upper", "lower", "mixed"]))
    if style == "lower":
        return keyword.lower()
    if style == "mixed":
        return keyword[0] + keyword[1:].lower()
    return keyword


@st.composite
def _flag(draw: Any) -> str:
    name = draw(st.sampled_from(["from", "mount", "chown", "link", "x", "network"]))
    value = draw(st.sampled_from(["", "=" + draw(_PLAIN), '="a b"', "=a\\ b"]))
    return f"--{name}{value}"


@st.composite
def _json_array(draw: Any) -> str:
    items = draw(st.lists(_PLAIN, max_size=3))
    text = "[" + ", ".join(f'"{i}"' for i in items) + "]"
    return draw(st.sampled_from([text, text[:-1], text.replace('"', "'"), "[ ]"]))


@st.composite
def _instruction(draw: Any, escape: str) -> list[str]:
    """One instruction as physical lines (continuations, heredocs)."""
    keyword = draw(st.sampled_from(KEYWORDS))
    head = _case(keyword, draw)
    if keyword == "ONBUILD":
        head += " " + _case(draw(st.sampled_from(["RUN", "COPY", "ENV"])), draw)
    flags = draw(st.lists(_flag(), max_size=2))
    if draw(st.booleans()) and flags:
        flags.append("--")
    shape = draw(st.sampled_from(["words", "json", "kv", "heredoc"]))
    if shape == "json":
        body = draw(_json_array())
    elif shape == "kv":
        pairs = draw(st.lists(st.tuples(_PLAIN, _WORD), min_size=1, max_size=3))
        body = " ".join(f"{k}={v}" for k, v in pairs).replace(escape + "\n", "")
    elif shape == "heredoc":
        name = draw(st.sampled_from(["EOF", "END", "'EOF'", '"EOT"', "-EOF"]))
        body = f"<<{name} " + draw(_PLAIN)
    else:
        body = " ".join(draw(st.lists(_WORD, min_size=0, max_size=4)))
    indent = draw(st.sampled_from(["", "  ", "\t"]))
    lines = [indent + " ".join([head, *flags, body])]
    for _ in range(draw(st.integers(0, 2))):
        # A continuation, with comments and blank lines inside it at times.
        lines[-1] += escape + draw(st.sampled_from(["", " ", "\t"]))
        lines += draw(st.lists(st.sampled_from(["# c", "", "  # x"]), max_size=2))
        lines.append(draw(st.sampled_from(["  ", ""])) + draw(_WORD))
    if shape == "heredoc":
        name = body.split()[0][2:].lstrip("-").strip("'\"")
        content = draw(st.lists(_WORD.filter(lambda w: w.strip() != name), max_size=3))
        tabs = "\t" if "<<-" in body else ""
        lines += [tabs + line for line in content] + [tabs + name]
    return lines


@st.composite
def dockerfiles(draw: Any) -> str:
    escape = draw(st.sampled_from(["\\", "`"]))
    lines = ["# escape=`"] if escape == "`" else []
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["# syntax=docker/dockerfile:1", "# hi"])))
    for _ in range(draw(st.integers(1, 5))):
        lines += draw(_instruction(escape))
        lines += draw(st.lists(st.sampled_from(["", "# comment", "   "]), max_size=1))
    return "\n".join(lines) + draw(st.sampled_from(["\n", ""]))


def _outside_gaps(text: str) -> bool:
    # Gap: `<< EOF` (a blank after <<) is a heredoc only in newer BuildKit.
    return re.search(r"<<-?[ \t]", text) is None


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(dockerfiles())
@example("FROM a\nRUN <<EOF\nx\nEOF\n")
@example("# escape=`\nFROM a\nRUN a `\n  b\n")
@example('copy --from="a b" -- x y\n')
@example("FROM --=é\n")
def test_generated_dockerfiles_agree(text: str) -> None:
    if not _outside_gaps(text):
        return
    assert ours(text) == theirs(text)
