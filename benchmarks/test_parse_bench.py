"""Dockerfile parse benchmarks (pytest-benchmark), buildpy against the two
other Python parsers, in one run:

    python3 -m pytest benchmarks/test_parse_bench.py --benchmark-only \\
        --benchmark-columns=min,mean,median,max,rounds

The corpus is 120 Dockerfiles written here (every instruction, flags, JSON and
shell forms, continuations with comments, heredocs, multi-stage files of 5 to
150 lines). Figures go into docs/benchmarks.md; nothing here asserts a time.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend import parser as frontend_parser
from frontend.parser import Instruction, parse
from tests.conftest import REPO

dockerfile = pytest.importorskip("dockerfile")
dockerfile_parse = pytest.importorskip("dockerfile_parse")

_STAGE_LINES = [
    "RUN apt-get update && apt-get install -y --no-install-recommends \\\n"
    "    ca-certificates curl \\\n    # tools for the build\n"
    "    make gcc \\\n && rm -rf /var/lib/apt/lists/*",
    "RUN --mount=type=cache,target=/root/.cache/pip pip install -r requirements.txt",
    'RUN ["/bin/sh", "-c", "echo exec form"]',
    "RUN <<EOF\nset -e\necho one\necho two\nEOF",
    "COPY --chown=1000:1000 --chmod=0644 src/ /app/src/",
    "COPY --from=build /out/app /usr/local/bin/app",
    "COPY <<-EOT /etc/app.conf\n\tkey = value\n\tother = $HOME\n\tEOT",
    'ADD ["a b.txt", "/dst/"]',
    "ADD --link --exclude=*.md docs /usr/share/doc/app",
    'ENV PATH="/app/bin:$PATH" LANG=C.UTF-8 \\\n    TZ=UTC',
    "ENV LEGACY value with spaces",
    'LABEL org.opencontainers.image.title="app" version="1.0"',
    "EXPOSE 8080/tcp 9090/udp",
    "VOLUME /data /cache",
    "USER app:app",
    "WORKDIR /app/${SUBDIR:-src}",
    "ARG VERSION=1.2.3 COMMIT",
    "STOPSIGNAL SIGTERM",
    "HEALTHCHECK --interval=30s --timeout=3s --retries=3 CMD curl -f http://localhost/",
    'SHELL ["/bin/bash", "-o", "pipefail", "-c"]',
    "ONBUILD COPY . /src",
    'ENTRYPOINT ["/usr/local/bin/app"]',
    'CMD ["--serve", "--port=8080"]',
    "CMD echo shell form",
]


def _dockerfile(rng: random.Random, index: int) -> str:
    lines = [f"# generated case {index}"]
    if index % 5 == 0:
        lines.insert(0, "# syntax=docker/dockerfile:1")
    lines.append(f"ARG BASE=debian:{12 - index % 3}")
    for stage in range(1 + index % 4):
        lines.append(f"FROM $BASE AS stage{stage}")
        lines += rng.choices(_STAGE_LINES, k=2 + (index * 7 + stage) % 36)
        lines.append("")
    return "\n".join(lines) + "\n"


def corpus() -> list[str]:
    rng = random.Random(3)
    return [_dockerfile(rng, i) for i in range(120)]


@pytest.fixture(scope="module")
def dockerfiles() -> list[str]:
    texts = corpus()
    # The three parsers must all accept the corpus, or the race is not fair.
    for text in texts:
        parse(text)
        dockerfile.parse_string(text)
    return texts


def _each(texts: list[str], fn) -> Iterator[object]:
    for text in texts:
        yield fn(text)


def test_corpus_is_varied(dockerfiles: list[str]) -> None:
    sizes = [t.count("\n") for t in dockerfiles]
    assert len(dockerfiles) >= 100 and min(sizes) < 15 and max(sizes) > 100


def test_parse_buildpy(benchmark, dockerfiles: list[str]) -> None:
    frontend_parser._lark("\\")  # the grammar is loaded once per process
    benchmark(lambda: list(_each(dockerfiles, parse)))


def test_lark_lexer_only(benchmark, dockerfiles: list[str]) -> None:
    """Lark's own lexer (``Lark.lex``, its basic lexer) over the corpus, the
    tokens made and nothing built from them; heredoc bodies are not cut."""
    lark_parser = frontend_parser._lark("\\")

    def lex_all() -> None:
        for text in dockerfiles:
            for _ in lark_parser.lex(text):
                pass

    benchmark(lex_all)


def test_tokens_only(benchmark, dockerfiles: list[str]) -> None:
    """The token stream test_parse_buildpy reads (the lexer Lark is given,
    heredoc bodies cut), nothing built from it."""
    lexer = frontend_parser._lexer("\\")

    def lex_all() -> None:
        for text in dockerfiles:
            for _ in lexer.tokens(text):
                pass

    benchmark(lex_all)


def test_terminal_regex_only(benchmark, dockerfiles: list[str]) -> None:
    """The floor of any lexer of the grammar: its terminals' one regex matched
    from token to token over the corpus, no Token made."""
    match = frontend_parser._lexer("\\")._match

    def scan_all() -> None:
        for text in dockerfiles:
            pos, end = 0, len(text)
            while pos < end:
                found = match(text, pos, end)
                assert found is not None
                pos = found.end()

    benchmark(scan_all)


def test_floor_keyword_split(benchmark, dockerfiles: list[str]) -> None:
    """The least a parse into this AST does: the tokens, then per instruction
    only the keyword cut from the rest and one Instruction; no flags, JSON,
    words, continuation joins, columns or heredocs (test_parse_buildpy does
    all of those). Compare with test_parse_dockerfile_parse."""
    lexer = frontend_parser._lexer("\\")

    def skeleton(text: str) -> list[Instruction]:
        nodes = []
        for token in lexer.tokens(text):
            if token.type == "INSTRUCTION":
                keyword, _, rest = token.strip().partition(" ")
                node = Instruction(keyword.lower(), [rest], [], False, token, [])
                node.start_line = node.end_line = token.line
                nodes.append(node)
        return nodes

    benchmark(lambda: list(_each(dockerfiles, skeleton)))


def test_parse_dockerfile_parse(benchmark, dockerfiles: list[str]) -> None:
    def one(text: str) -> object:
        return dockerfile_parse.DockerfileParser(
            fileobj=io.BytesIO(text.encode())
        ).structure

    benchmark(lambda: list(_each(dockerfiles, one)))


def test_parse_dockerfile_go(benchmark, dockerfiles: list[str]) -> None:
    benchmark(lambda: list(_each(dockerfiles, dockerfile.parse_string)))


def _load_grammar() -> object:
    frontend_parser._lark.cache_clear()
    return frontend_parser._lark("\\")


def test_grammar_load_cold(benchmark, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiling the grammar with no cache file: a first run."""
    monkeypatch.setattr(frontend_parser, "_grammar_cache_file", lambda g: False)
    benchmark(_load_grammar)
    frontend_parser._lark.cache_clear()


def test_grammar_load_cached(
    benchmark, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Loading the compiled grammar from its cache file: every later run."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _load_grammar()  # writes the cache file
    assert list((tmp_path / "buildpy").iterdir())
    benchmark(_load_grammar)
    frontend_parser._lark.cache_clear()


# The Dockerfile of the no-op rebuild benchmark (test_build_bench.py): 50 steps.
_FIFTY_STEPS = "FROM busybox\n" + "".join(f"RUN echo {i}\n" for i in range(50))


def _run_python(code: str, cache_home: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "XDG_CACHE_HOME": str(cache_home)},
        cwd=REPO,
        check=True,
    )


def test_noop_rebuild_parse_in_process(benchmark) -> None:
    """The parse of a no-op rebuild's 50-step Dockerfile, grammar loaded."""
    frontend_parser._lark("\\")
    benchmark(parse, _FIFTY_STEPS)


def test_noop_rebuild_parse_process(benchmark, tmp_path: Path) -> None:
    """A fresh process that imports the parser, loads the cached grammar and
    parses the 50-step Dockerfile: what a no-op rebuild pays for parsing,
    Python's own start-up included (test_python_start_up is that alone)."""
    code = f"from frontend.parser import parse; parse({_FIFTY_STEPS!r})"
    _run_python(code, tmp_path)  # writes the grammar cache
    benchmark(_run_python, code, tmp_path)


def test_python_start_up(benchmark, tmp_path: Path) -> None:
    """The baseline of test_noop_rebuild_parse_process: ``python -c pass``."""
    benchmark(_run_python, "pass", tmp_path)
