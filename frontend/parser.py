"""Dockerfile text -> AST of instructions with source positions.

Theory of operation
-------------------
Parsing follows BuildKit's parser (frontend/dockerfile/parser) rule for rule,
because its golden files (tests/frontend/data/buildkit-parser) must come out
byte for byte. It has three layers:

1. Parser directives (``# syntax=``, ``# escape=``, ``# check=``) are read from
   the leading comment block first, because the escape token changes how every
   later line is read. The block ends at the first line that is not a
   ``# key=value`` comment with a known key.
2. The Lark grammar (dockerfile.lark, compiled once per escape token and cached
   on disk) cuts the text into tokens of whole lines: one INSTRUCTION token per
   instruction (the comment and blank lines before it, its continuation lines,
   the comments and blank lines inside the continuation). The tokens come from
   ``_DockerfileLexer``, the lexer Lark is given for the grammar: one regex of
   the grammar's terminals and cheap Token objects. Heredocs are
   context-sensitive (the terminator is a name read from the instruction), so
   that lexer cuts the lines after an instruction that opens heredocs into body
   tokens itself. Lark's LALR parser accepts the stream (a test holds it to
   that) but does not run here: building its tree would cost about as much as
   everything else, so ``_group`` reads the grammar's one rule off the tokens.
3. Each instruction's *logical line* (continuations joined with nothing in
   between, the escape token and its trailing blanks removed) is split into the
   keyword, the leading ``--flags`` and the arguments, with one argument rule per
   instruction (``_ARG_PARSERS``), as BuildKit's line parsers do.

Positions are 1-based. ``end_line`` includes a heredoc's terminator line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable, Generator, Iterator
from dataclasses import astuple, dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Token
from lark.common import LexerConf
from lark.exceptions import LarkError, UnexpectedCharacters
from lark.lexer import Lexer, LexerState, TerminalDef

from frontend.errors import DockerfileError
from frontend.shell import ShellError, shell_words

KNOWN_DIRECTIVES = ("syntax", "escape", "check")

_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
# Go's reWhitespace: what splits the keyword from the rest, and list words.
_WHITESPACE_RE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC_RE = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_HEREDOC_KEYWORDS = frozenset({"run", "copy", "add"})
# Leading flags written without quotes or escapes, each followed by a blank.
_SIMPLE_FLAGS_RE = re.compile(r"(?:--[^\s'\"\\]+\s+)+")
# What makes the shell lexer's words differ from a split on blanks.
_SHELL_SPECIAL_RE = re.compile(r"['\"$\\]")


@dataclass
class Heredoc:
    """A here-document: ``<<NAME`` on the instruction line, body below it.

    ``content`` ends with a newline per body line, as written (BuildKit's AST
    keeps the tabs); ``body`` is what the instruction uses: with ``<<-``
    (``chomp``) the leading tabs of every line removed. ``expand`` is False
    when the name was quoted (no variable expansion of the body).
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    fd: int | None = None

    @property
    def body(self) -> str:
        if not self.chomp:
            return self.content
        return "".join(line.lstrip("\t") for line in self.content.splitlines(True))


@dataclass(slots=True)
class Instruction:
    """One instruction: a node of BuildKit's AST.

    ``keyword`` is lower-cased as written; ``args`` is the instruction's argument
    list as BuildKit's ``Next`` chain holds it (for ONBUILD, a single nested
    Instruction). ``original`` is the logical line.
    """

    keyword: str
    args: list[str | Instruction]
    flags: list[str] = field(default_factory=list)
    json: bool = False
    original: str = ""
    heredocs: list[Heredoc] = field(default_factory=list)
    start_line: int = 0
    start_column: int = 0
    end_line: int = 0
    end_column: int = 0

    @property
    def lines(self) -> tuple[int, int]:
        return (self.start_line, self.end_line)


@dataclass
class AST:
    instructions: list[Instruction]
    directives: dict[str, str]
    escape: str = "\\"
    filename: str = "Dockerfile"
    warnings: list[str] = field(default_factory=list)
    # Blank lines inside continuations (the NoEmptyContinuation check).
    empty_continuations: list[int] = field(default_factory=list)

    @property
    def start_line(self) -> int:
        return self.instructions[0].start_line

    @property
    def end_line(self) -> int:
        return self.instructions[-1].end_line


# --- step 1: parser directives --------------------------------------------------


def read_directives(text: str, filename: str = "Dockerfile") -> dict[str, str]:
    """The parser directives of the leading comment block, keys lower-cased."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r\n").lstrip()
        match = _DIRECTIVE_RE.match(line)
        if not match or match.group(1).lower() not in KNOWN_DIRECTIVES:
            break
        key, value = match.group(1).lower(), match.group(2)
        if key in found:
            raise DockerfileError(
                f"only one {key} parser directive can be used",
                filename=filename,
                line=number,
                column=1,
            )
        if key == "escape" and value not in ("\\", "`"):
            raise DockerfileError(
                f"invalid escape token {value!r}: expected ` or \\",
                filename=filename,
                line=number,
                column=1,
            )
        found[key] = value
    return found


# --- step 2: the grammar --------------------------------------------------------


def grammar_cache_dir() -> Path | None:
    """Where compiled grammars are kept: $XDG_CACHE_HOME/buildpy, else
    ~/.cache/buildpy; None when it cannot be made or written (no disk cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    directory = Path(base) / "buildpy"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory if os.access(directory, os.W_OK | os.X_OK) else None


def _grammar_cache_file(grammar: str) -> str | bool:
    """The cache file for one grammar text: its name holds the text's and
    Lark's version, so a changed grammar or Lark never reads a stale file."""
    directory = grammar_cache_dir()
    if directory is None:
        return False
    key = hashlib.sha256(f"{lark.__version__}\0{grammar}".encode()).hexdigest()
    return str(directory / f"dockerfile-{key[:24]}.lark-cache")


@cache
def _lark(escape: str) -> Lark:
    """The compiled grammar for one escape token.

    The analysis is kept in a file (``grammar_cache_dir``), so a fresh process
    skips grammar compilation, which is most of a no-op rebuild's start-up;
    ``@cache`` keeps the parser within a process. Its lexer is
    ``_DockerfileLexer``; ``parse`` reads the lexer's tokens and not Lark's
    parse tree (``_group``).
    """
    grammar = resources.files("frontend").joinpath("dockerfile.lark").read_text()
    grammar = grammar.replace("@ESC@", re.escape(escape))
    return Lark(
        grammar,
        parser="lalr",
        lexer=_LEXERS[escape],
        maybe_placeholders=False,
        cache=_grammar_cache_file(grammar),
    )


def _lexer(escape: str) -> _DockerfileLexer:
    """The lexer Lark made for the grammar of ``escape`` (one per grammar)."""
    lexer = _lark(escape).parser.lexer
    assert isinstance(lexer, _DockerfileLexer)
    return lexer


def _trim_continuation(line: str, escape: str) -> tuple[str, bool]:
    """Remove a trailing escape token; returns (line, ends_here)."""
    match = _continuation_re(escape).search(line)
    if match is None:
        return line, True
    return line[: match.start()] + (match.group(1) or ""), False


@cache
def _continuation_re(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t\r]*$|^{e}[ \t\r]*$")


# A blank line, or a comment line: skipped inside a continuation.
_SKIPPED_RE = re.compile(r"[^\S\n]*(?:#|$)")


def _physical_lines(token: str) -> list[str]:
    """The lines of a token, newlines removed (never str.splitlines: only
    '\\n' ends a Dockerfile line)."""
    lines = token.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


# The blank and comment lines that an INSTRUCTION token starts with.
_GAP_RE = re.compile(r"(?:[^\S\n]*(?:#[^\n]*)?\n)*")


def skip_gap(token: str) -> tuple[int, str]:
    """(lines skipped, the rest): an INSTRUCTION token without its gap lines."""
    if token[0] != "#" and not token[0].isspace():
        return 0, token  # starts with the instruction: the common case
    end = _GAP_RE.match(token).end()  # type: ignore[union-attr]
    return token.count("\n", 0, end), token[end:]


def logical_line(
    token: str, escape: str, empty: list[int] | None = None, first_line: int = 0
) -> str:
    """The logical line of an INSTRUCTION token (gap lines skipped), as BuildKit
    joins it: leading blanks of the first line and every trailing escape token
    removed, comment and blank lines skipped (the numbers of the blank ones
    appended to ``empty``, counting from ``first_line``)."""
    end = token.find("\n")
    if end == -1 or end == len(token) - 1:  # one line: the common case
        line = token.rstrip("\r\n").lstrip()
        return _trim_continuation(line, escape)[0] if escape in line else line
    parts = _physical_lines(token)
    text = _trim_continuation(parts[0].rstrip("\r").lstrip(), escape)[0]
    for number, part in enumerate(parts[1:], start=first_line + 1):
        if _SKIPPED_RE.match(part):
            if empty is not None and not part.strip():
                empty.append(number)
            continue
        text += _trim_continuation(part.rstrip("\r"), escape)[0]
    return text


class _UnterminatedHeredoc(Exception):
    def __init__(self, name: str, line: int) -> None:
        self.name, self.line = name, line


def _terminal_order(terminal: TerminalDef) -> tuple[int, int, int, str]:
    """The order in which Lark's own lexer tries the terminals at a position:
    priority, then the longest possible match, the longest pattern, the name."""
    pattern = terminal.pattern
    return (-terminal.priority, -pattern.max_width, -len(pattern.value), terminal.name)


_new_str = str.__new__


def _token(kind: str, value: str, pos: int, line: int) -> Token:
    """``Token(kind, value, pos, line, 1)``: every token here starts a line.

    Lark's constructor reaches the same attributes through two Python calls
    (the first checks for a deprecated keyword argument); set here directly,
    a token costs a quarter as much.
    """
    token = _new_str(Token, value)
    token.type, token.value, token.start_pos = kind, value, pos
    token.line, token.column = line, 1
    token.end_line = token.end_column = token.end_pos = None
    return token


class _DockerfileLexer(Lexer):
    """The grammar's tokens: the lexer Lark runs (``Lark(lexer=...)``) and the
    one ``parse`` reads.

    One regular expression made of the grammar's terminals, tried in Lark's
    order, is matched at the start of each token, and each token is built
    directly (``_token``): Lark's basic lexer makes the same tokens at about
    twice the cost, in its line counter and Token constructor. After an
    instruction that opens heredocs, the lines up to the last terminator are
    cut here, as HEREDOC_LINE and HEREDOC_END tokens (the grammar's comment
    says why no terminal matches them). Lark makes one instance per grammar;
    ``tokens`` keeps its state in locals, so concurrent parses may share it.
    """

    # lex() receives Lark's LexerState (a TextSlice inside since Lark 1.2).
    __future_interface__ = 2
    escape = "\\"

    def __init__(self, conf: LexerConf) -> None:
        terminals = sorted(conf.terminals, key=_terminal_order)
        pattern = "|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in terminals)
        self._match = re.compile(pattern, conf.g_regex_flags).match
        self._names = frozenset(t.name for t in terminals)

    def lex(self, lexer_state: LexerState, parser_state: Any) -> Iterator[Token]:
        """Lark's entry point: the tokens of the whole text in ``lexer_state``."""
        text = lexer_state.text
        line = lexer_state.line_ctr.line
        if isinstance(text, str):  # Lark before 1.2 passes the text itself
            return self.tokens(text, line=line)
        return self.tokens(text.text, text.start, text.end, line)

    def tokens(
        self, text: str, pos: int = 0, end: int | None = None, line: int = 1
    ) -> Iterator[Token]:
        """The tokens of ``text[pos:end]``, whose first line is ``line``.

        Raises _UnterminatedHeredoc when the text ends inside a heredoc body.
        """
        end = len(text) if end is None else end
        match = self._match
        while pos < end:
            found = match(text, pos, end)
            if found is None:  # pragma: no cover - every line shape is a token
                raise UnexpectedCharacters(text, pos, line, 1, allowed=self._names)
            value, kind = found.group(), found.lastgroup
            assert kind is not None  # every alternative is a named group
            token = _token(kind, value, pos, line)
            yield token
            pos, line = found.end(), line + value.count("\n")
            if kind == "INSTRUCTION" and "<<" in value:
                docs = heredocs_of_line(logical_line(skip_gap(value)[1], self.escape))
                if docs:
                    pos, line = yield from _heredoc_bodies(text, pos, end, token, docs)


class _BacktickLexer(_DockerfileLexer):
    """For ``# escape=```; a class of its own because Lark makes the lexer from
    the class and the grammar's terminals alone."""

    escape = "`"


_LEXERS: dict[str, type[_DockerfileLexer]] = {
    "\\": _DockerfileLexer,
    "`": _BacktickLexer,
}


def _heredoc_bodies(
    text: str, pos: int, end: int, opener: Token, docs: list[Heredoc]
) -> Generator[Token, None, tuple[int, int]]:
    """The body lines after ``opener``, up to its last heredoc's terminator,
    as tokens; returns the offset and the line number after them.

    A body line is any text until the line that is the heredoc's name (after
    the leading tabs with ``<<-``), even one that looks like a comment or ends
    with the escape token.
    """
    opened_at = opener.line + opener.count("\n", 0, len(opener) - 1)
    line = opened_at + 1
    while docs:
        if pos >= end:
            raise _UnterminatedHeredoc(docs[0].name, opened_at)
        newline = text.find("\n", pos, end)
        stop = end if newline == -1 else newline + 1
        value = text[pos:stop]
        name = value.rstrip("\r\n")
        if docs[0].chomp:
            name = name.lstrip("\t")
        kind = "HEREDOC_LINE"
        if name == docs[0].name:
            docs.pop(0)
            kind = "HEREDOC_END"
        yield _token(kind, value, pos, line)
        pos, line = stop, line + 1
    return pos, line


def heredocs_of_line(line: str) -> list[Heredoc]:
    """The heredocs (without bodies) that an instruction line opens.

    Only RUN, COPY and ADD in shell form (also under ONBUILD) take heredocs.
    """
    if "<<" not in line:
        return []  # the common case, and the shell lexer below is slow
    # New objects each time: the caller sets their content.
    return [Heredoc(*fields) for fields in _heredoc_fields(line)]


_HeredocFields = tuple[str, str, bool, bool, "int | None"]


@lru_cache(maxsize=256)
def _heredoc_fields(line: str) -> tuple[_HeredocFields, ...]:
    """heredocs_of_line's answer as Heredoc's fields. Remembered, because the
    lexer asks for an instruction's heredocs to find its body lines, and the
    instruction asks again for its own."""
    keyword, _, rest = _split_command(line, "\\")
    keyword = keyword.lower()
    if keyword == "onbuild":
        keyword, _, rest = _split_command(rest, "\\")
        keyword = keyword.lower()
    if keyword not in _HEREDOC_KEYWORDS:
        return ()
    try:
        if _json_array(rest) is not None:
            return ()  # the exec form: no shell, no heredoc
    except _NotStrings:
        return ()  # the exec form too, refused when the instruction is parsed
    if _SHELL_SPECIAL_RE.search(line) is None:
        # Nothing quoted, escaped or expanded: the shell words are the blank
        # separated ones (the shell lexer below gives the same, slowly).
        words = line.split()
    else:
        try:
            # As BuildKit: the line's shell words (raw quotes and escapes,
            # nothing set); a line the shell lexer rejects opens no heredoc.
            words = shell_words(line)
        except ShellError:
            return ()
    docs = (parse_heredoc(word) for word in words)
    return tuple(astuple(doc) for doc in docs if doc is not None)


def parse_heredoc(word: str) -> Heredoc | None:
    """``<<NAME``, ``<<-NAME``, ``<<"NAME"``, ``3<<NAME`` as one word, or None."""
    match = _HEREDOC_RE.match(word)
    if match is None or not match.group(3):
        return None
    fd, chomp, name = match.groups()
    quoted = len(name) >= 2 and name[0] == name[-1] and name[0] in "'\""
    if quoted:
        name = name[1:-1]
    if not name or any(c.isspace() for c in name):
        return None
    return Heredoc(
        name=name,
        content="",
        expand=not quoted,
        chomp=chomp == "-",
        fd=int(fd) if fd else None,
    )


# --- step 3: one logical line -> an Instruction ---------------------------------


def _split_command(line: str, escape: str) -> tuple[str, list[str], str]:
    """(keyword, flags, rest) of a logical line."""
    parts = _WHITESPACE_RE.split(line.strip(), maxsplit=1)
    if len(parts) < 2:
        return parts[0], [], ""
    rest = parts[1]
    if not rest.startswith("--") and not rest[0].isspace():
        return parts[0], [], rest  # no flags: the common case
    # BuildKit reads flags with a backslash escape whatever the directive says
    # (extractBuilderFlags); the differential tests hold it to that.
    rest, flags = _extract_flags(rest, "\\")
    return parts[0], flags, rest.strip()


def _extract_flags(line: str, escape: str) -> tuple[str, list[str]]:
    """Leading ``--flag`` words: quotes removed, escape pairs reduced.

    Stops at the first word that does not start with ``--``; a lone ``--``
    ends the flags and is dropped.
    """
    flags: list[str] = []
    pos, n = 0, len(line)
    simple = _SIMPLE_FLAGS_RE.match(line)
    if simple is not None:  # no quote or escape in these: the words as written
        flags, pos = simple.group().split(), simple.end()
    while True:
        while pos < n and line[pos].isspace():
            pos += 1
        if pos >= n:
            return "", flags
        if not line.startswith("--", pos):
            return line[pos:], flags
        word, quoted, quote = "", False, ""
        while pos < n:
            ch = line[pos]
            if quote:
                if ch == quote:
                    quote = ""
                    pos += 1
                    continue
            elif ch.isspace():
                break
            elif ch in "'\"":
                quote, quoted = ch, True
                pos += 1
                continue
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    quote = ""
                    continue
                pos += 1
                ch = line[pos]
            word += ch
            pos += 1
        if word == "--" and not quoted:
            return line[pos:], flags
        if word or quoted:
            flags.append(word)


@cache
def _word_re(escape: str) -> re.Pattern[str]:
    """A word of parse_words: plain characters, escape pairs, quoted runs (a
    quote left open runs to the end)."""
    e = re.escape(escape)
    return re.compile(rf"""(?:[^\s'"{e}]+|{e}.|"(?:[^"{e}]|{e}.)*"?|'[^']*'?)+""", re.S)


def parse_words(rest: str, escape: str) -> list[str]:
    """Split on blanks honouring quotes and escapes, which stay in the words."""
    if escape not in rest and "'" not in rest and '"' not in rest:
        return rest.split()  # nothing quoted or escaped: the common case
    if not rest.endswith(escape):
        # The loop below, in one regex: the same words, but for the escape
        # token at the very end, which the loop drops.
        return _word_re(escape).findall(rest)
    words: list[str] = []
    word, quote, blank_ok, in_word = "", "", False, False
    pos, n = 0, len(rest)
    while pos < n:
        ch = rest[pos]
        if not in_word:
            if ch.isspace():
                pos += 1
                continue
            in_word = True
        if not quote:
            if ch.isspace():
                if blank_ok or word:
                    words.append(word)
                word, blank_ok, in_word = "", False, False
                pos += 1
                continue
            if ch in "'\"":
                quote, blank_ok = ch, True
            elif ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue
                word += ch
                pos += 1
                ch = rest[pos]
            word += ch
            pos += 1
            continue
        # Inside quotes: the escape token escapes anything except in '...'.
        if ch == quote:
            quote = ""
        elif ch == escape and quote != "'":
            if pos + 1 == n:
                pos += 1
                continue
            word += ch
            pos += 1
            ch = rest[pos]
        word += ch
        pos += 1
    if in_word and (blank_ok or word):
        words.append(word)
    return words


_JSON_DECODER = json.JSONDecoder()


class _NotStrings(Exception):
    """A JSON array with an element that is not a string."""


def _json_array(rest: str) -> list[str] | None:
    """The strings of a JSON array, or None when ``rest`` is not one."""
    rest = rest.lstrip()
    if not rest.startswith("["):
        return None
    try:
        # Go's json.Decoder reads the first value and ignores what follows it
        # (`RUN ["a"]x` is ["a"]), so raw_decode, not loads.
        value, _ = _JSON_DECODER.raw_decode(rest)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise _NotStrings
    return value


_Parsed = tuple[list["str | Instruction"], bool]


def _maybe_json(rest: str, escape: str) -> _Parsed:
    if not rest:
        return [], False
    array = _json_array(rest)
    if array is not None:
        return list(array), True
    return [rest], False


def _maybe_json_list(rest: str, escape: str) -> _Parsed:
    array = _json_array(rest)
    if array is not None:
        return list(array), True
    return _whitespace_list(rest, escape)


def _whitespace_list(rest: str, escape: str) -> _Parsed:
    if not rest:
        return [], False
    return list(_WHITESPACE_RE.split(rest)), False


def _string(rest: str, escape: str) -> _Parsed:
    return ([rest] if rest else []), False


def _words(rest: str, escape: str) -> _Parsed:
    return list(parse_words(rest, escape)), False


class _ArgError(Exception):
    pass


def _name_value(keyword: str) -> Callable[[str, str], _Parsed]:
    """ENV and LABEL: ``k v`` (legacy) or ``k=v ...``, as triples k, v, sep."""

    def parse(rest: str, escape: str) -> _Parsed:
        words = parse_words(rest, escape)
        if not words:
            # Not an error of the parse in BuildKit: the instruction's checks
            # (convert) refuse an empty ENV.
            return [], False
        if "=" not in words[0]:
            parts = _WHITESPACE_RE.split(rest, maxsplit=1)
            if len(parts) < 2:
                raise _ArgError(f"{keyword} must have two arguments")
            return [parts[0], parts[1], ""], False
        out: list[str | Instruction] = []
        for word in words:
            if "=" not in word:
                raise _ArgError(
                    f"syntax error: can't find = in {word!r}, expected name=value"
                )
            name, value = word.split("=", 1)
            out += [name, value, "="]
        return out, False

    return parse


_HEALTHCHECK_RE = re.compile(r"(\S*)\s*(.*)", re.S)


def _healthcheck(rest: str, escape: str) -> _Parsed:
    parts = _HEALTHCHECK_RE.match(rest)
    assert parts is not None
    kind, command = parts.group(1), parts.group(2)
    if not kind:
        return [], False
    args, is_json = _maybe_json(command, escape)
    return [kind, *args], is_json


def _onbuild(rest: str, escape: str) -> _Parsed:
    if not rest:
        return [], False
    return [_instruction_from_line(rest, escape)], False


def _ignore(rest: str, escape: str) -> _Parsed:
    return [""], False


_ARG_PARSERS: dict[str, Callable[[str, str], _Parsed]] = {
    "add": _maybe_json_list,
    "arg": _words,
    "cmd": _maybe_json,
    "copy": _maybe_json_list,
    "entrypoint": _maybe_json,
    "env": _name_value("ENV"),
    "expose": _whitespace_list,
    "from": _whitespace_list,
    "healthcheck": _healthcheck,
    "label": _name_value("LABEL"),
    "maintainer": _string,
    "onbuild": _onbuild,
    "run": _maybe_json,
    "shell": _maybe_json,
    "stopsignal": _string,
    "user": _string,
    "volume": _maybe_json_list,
    "workdir": _string,
}

KEYWORDS = tuple(k.upper() for k in _ARG_PARSERS)


def _instruction_from_line(
    line: str, escape: str, position: tuple[int, int, int, int] = (0, 0, 0, 0)
) -> Instruction:
    """The Instruction of a logical line; ``position`` is its start line and
    column and its end line and column."""
    keyword, flags, rest = _split_command(line, escape)
    keyword = keyword.lower()
    parser = _ARG_PARSERS.get(keyword, _ignore)
    try:
        args, is_json = parser(rest, escape)
    except _NotStrings:
        raise _ArgError(
            "when using JSON array syntax, arrays must be comprised of strings only"
        ) from None
    return Instruction(keyword, args, flags, is_json, line, [], *position)


# --- the walk over the parse tree ----------------------------------------------


def parse(text: str, filename: str = "Dockerfile") -> AST:
    """Parse a Dockerfile. Raises DockerfileError with the line at fault."""
    if text.startswith("\ufeff"):
        text = text[1:]
    directives = read_directives(text, filename)
    escape = directives.get("escape", "\\")
    try:
        groups = list(_group(_lexer(escape).tokens(text)))
    except _UnterminatedHeredoc as exc:
        raise DockerfileError(
            f"unterminated heredoc {exc.name}: no line {exc.name} ends it",
            filename=filename,
            line=exc.line,
            column=1,
        ) from None
    except LarkError as exc:  # pragma: no cover - every line shape is accepted
        line = getattr(exc, "line", 0)
        raise DockerfileError(
            f"syntax error: {exc}", filename=filename, line=line
        ) from None
    ast = AST([], directives, escape, filename)
    for token, bodies in groups:
        ast.instructions.append(_instruction(token, bodies, escape, ast))
    if not ast.instructions:
        raise DockerfileError("file with no instructions", filename=filename)
    return ast


_Group = tuple[Token, list[list[Token]]]


def _group(stream: Iterator[Token]) -> Iterator[_Group]:
    """Tokens -> (an INSTRUCTION, its heredoc bodies), as the grammar's
    ``instruction`` rule reads them (Lark's LALR parser would build the same
    tree at several times the cost): each body ends with a HEREDOC_END."""
    instruction: Token | None = None
    bodies: list[list[Token]] = []
    body: list[Token] = []
    for token in stream:
        kind = token.type
        if kind == "INSTRUCTION":
            if instruction is not None:
                yield instruction, bodies
            instruction, bodies = token, []
        elif kind == "HEREDOC_LINE":
            body.append(token)
        elif kind == "HEREDOC_END":
            body.append(token)
            bodies.append(body)
            body = []
    if instruction is not None:
        yield instruction, bodies


def _instruction(
    token: Token, bodies: list[list[Token]], escape: str, ast: AST
) -> Instruction:
    value, first_line = token.value, token.line
    if value[0] == "#" or value[0].isspace():  # comment or blank lines first
        skipped, value = skip_gap(value)
        first_line += skipped
    # The instruction's last physical line starts after `last`.
    last = value.rfind("\n", 0, len(value) - 1)
    if last == -1:  # one physical line, the common case: logical_line inline
        line = value.rstrip("\r\n")
        text = line.lstrip()
        start_column = 1 + len(line) - len(text)
        if escape in text:
            text = _trim_continuation(text, escape)[0]
        end_line, end_column = first_line, len(line) + 1
    else:
        empty: list[int] = []
        text = logical_line(value, escape, empty, first_line)
        for number in empty:
            ast.warnings.append(f"{ast.filename}:{number}: empty continuation line")
            ast.empty_continuations.append(number)
        start_column = 1 + len(value) - len(value.lstrip())
        end_line = first_line + value.count("\n", 0, last + 1)
        end_column = len(value[last + 1 :].rstrip("\r\n")) + 1
    if bodies:
        end = bodies[-1][-1]
        end_line, end_column = end.line, 1 + len(end.value.rstrip("\r\n"))
    try:
        node = _instruction_from_line(
            text, escape, (first_line, start_column, end_line, end_column)
        )
    except _ArgError as exc:
        raise DockerfileError(
            str(exc),
            filename=ast.filename,
            line=first_line,
            column=start_column,
            end_line=end_line,
        ) from None
    if bodies:
        docs = heredocs_of_line(text)
        for doc, body in zip(docs, bodies, strict=False):
            doc.content = "".join(
                t.value if t.value.endswith("\n") else t.value + "\n" for t in body[:-1]
            )
        node.heredocs = docs
    return node


# --- BuildKit's dump format -----------------------------------------------------


def go_quote(text: str) -> str:
    """Go's strconv.Quote: printable runes kept, the rest escaped."""
    out = ['"']
    named = {
        "\a": "\\a",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "\v": "\\v",
    }
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in named:
            out.append(named[ch])
        elif ch == " " or (
            code >= 0x20 and unicodedata.category(ch)[0] in "LMNPS" and code != 0x7F
        ):
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xDC80 <= code <= 0xDCFF:
            # A surrogate escape: an invalid UTF-8 byte read with errors=
            # "surrogateescape"; Go prints the byte.
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def dump_instruction(node: Instruction) -> str:
    text = node.keyword
    if node.flags:
        text += " [" + " ".join(go_quote(f) for f in node.flags) + "]"
    for arg in node.args:
        if isinstance(arg, Instruction):
            text += " (" + dump_instruction(arg) + ")"
        else:
            text += " " + go_quote(arg)
    return text.strip()


def dump_ast(ast: AST) -> str:
    """BuildKit's ``Node.Dump()`` of the whole file, plus the final newline."""
    return "".join(f"({dump_instruction(n)})\n" for n in ast.instructions)


def debug_ast(path: str | Path) -> str:
    """What ``buildpy debug ast FILE`` prints: the parse in BuildKit's golden format
    (its parser tests' ``result`` files), so the two parsers can be diffed."""
    path = Path(path)
    return dump_ast(parse(path.read_text(errors="surrogateescape"), filename=path.name))
