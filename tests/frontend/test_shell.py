"""The shell-word lexer against BuildKit's tables (data/buildkit-shell)."""

from __future__ import annotations

from pathlib import Path

import pytest

from frontend.shell import ShellError, process_word, process_words

DATA = Path(__file__).parent / "data" / "buildkit-shell"
ENV_VAR_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


def _env_var_cases() -> list[tuple[str, str]]:
    cases = []
    for line in (DATA / "envVarTest").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        platform, word, expected = (f.strip() for f in line.split("|"))
        if platform in ("A", "U"):  # W rows are Windows-only semantics
            cases.append((word, expected))
    return cases


def _words_cases() -> list[tuple[dict[str, str], str, list[str] | None]]:
    env: dict[str, str] = {}
    cases = []
    for line in (DATA / "wordsTest").read_text().splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("ENV "):
            name, value = line[4:].lstrip().split("=", 1)
            env[name] = value
            continue
        word, expected = line.split("|")
        expected = expected.lstrip()
        cases.append(
            (
                dict(env),
                word.strip(),
                None if expected == "error" else expected.split(","),
            )
        )
    return cases


ENV_VAR_CASES = _env_var_cases()
WORDS_CASES = _words_cases()


def test_tables_read() -> None:
    assert len(ENV_VAR_CASES) >= 228
    assert len(WORDS_CASES) == 24


@pytest.mark.parametrize(("word", "expected"), ENV_VAR_CASES)
def test_env_var_table(word: str, expected: str) -> None:
    if expected == "error":
        with pytest.raises(ShellError):
            process_word(word, ENV_VAR_ENV)
    else:
        assert process_word(word, ENV_VAR_ENV) == expected


@pytest.mark.parametrize(("env", "word", "expected"), WORDS_CASES)
def test_words_table(
    env: dict[str, str], word: str, expected: list[str] | None
) -> None:
    if expected is None:
        with pytest.raises(ShellError):
            process_words(word, env)
    else:
        assert process_words(word, env) == expected


ENV = {"FILE": "archive.tar.gz", "PATHV": "/usr/local/bin", "EMPTY": "", "ABC": "a*c"}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("${FILE#*.}", "tar.gz"),
        ("${FILE##*.}", "gz"),
        ("${FILE%.*}", "archive.tar"),
        ("${FILE%%.*}", "archive"),
        ("${FILE#nomatch}", "archive.tar.gz"),
        ("${PATHV/local/opt}", "/usr/opt/bin"),
        ("${PATHV//\\//:}", ":usr:local:bin"),
        ("${PATHV/\\/usr/}", "/local/bin"),
        ("${FILE/a/A}", "Archive.tar.gz"),
        ("${FILE//a/A}", "Archive.tAr.gz"),
        ("${FILE//[ae]/_}", "_rchiv_.t_r.gz"),
        ("${ABC#a\\*}", "c"),
        ("${UNSET-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${EMPTY:-default}", "default"),
        ("${EMPTY+set}", "set"),
        ("${UNSET+set}", ""),
        ("${FILE:?must be set}", "archive.tar.gz"),
    ],
)
def test_trim_and_replace(word: str, expected: str) -> None:
    assert process_word(word, ENV) == expected


def test_error_message_names_the_variable() -> None:
    with pytest.raises(ShellError, match="UNSET: please set it"):
        process_word("${UNSET:?please set it}", ENV)
    with pytest.raises(ShellError, match="EMPTY: is not allowed to be empty"):
        process_word("${EMPTY:?}", ENV)


def test_backtick_escape() -> None:
    assert process_word("a`$FILE", ENV, escape="`") == "a$FILE"
    assert process_word("a\\b", ENV, escape="`") == "a\\b"
