"""Variable expansion of Dockerfile words, as BuildKit's shell lexer does it.

Theory of operation
-------------------
A word is read left to right once. Outside quotes the escape token makes the
next character literal; ``'...'`` is literal; ``"..."`` is literal except for
``$`` expansions and the escapes ``\\"``, ``\\$`` and ``\\\\``. ``$NAME`` and the
``${...}`` forms are expanded from ``env``; positional and special parameters
(``$1``, ``$@``...) are never set in a Dockerfile, so they expand to nothing.

Two results come out of one pass: the whole word (``process_word``) and the
word list after field splitting (``process_words``). Only characters that come
from an unquoted expansion or from unquoted literal text can split a field;
text from quotes and escaped blanks is kept whole.

The grammar of ``${...}`` (POSIX shell, Dockerfile reference "Environment
replacement"): ``${V:-w} ${V-w} ${V:+w} ${V+w} ${V:?m} ${V?m} ${V#p} ${V##p}
${V%p} ${V%%p} ${V/p/r} ${V//p/r}``; ``p`` is a glob. ``${V:=w}`` is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from frontend.errors import DockerfileError

_SPECIAL_PARAMS = "@*#?-$!0"


class ShellError(DockerfileError):
    """A word that cannot be expanded: bad syntax or a ``${V?}`` failure."""


@dataclass
class _Words:
    """Field splitting: which characters may end a word."""

    words: list[str] = field(default_factory=list)
    word: str = ""
    in_word: bool = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word, self.in_word = "", False
        else:
            self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def result(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False
        return self.words


class _Lexer:
    def __init__(
        self,
        text: str,
        env: Mapping[str, str],
        escape: str,
        raw_quotes: bool,
        raw_escapes: bool,
    ) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.used: set[str] = set()

    # -- scanner ---------------------------------------------------------------

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch

    def get(self, name: str) -> tuple[str, bool]:
        self.used.add(name)
        if name in self.env:
            return self.env[name], True
        return "", False

    # -- words -----------------------------------------------------------------

    def process_until(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Read up to ``stop`` (consumed) or the end when ``stop`` is ""."""
        result: list[str] = []
        words = _Words()
        while self.peek():
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(result), words.result()
            if ch in "'\"$":
                handler = {
                    "'": self.single_quote,
                    '"': self.double_quote,
                    "$": self.dollar,
                }[ch]
                text = handler()
                result.append(text)
                if ch == "$":
                    words.add_string(text)
                else:
                    words.add_raw(text)
                continue
            ch = self.next()
            if ch == self.escape:
                if raw_escapes:
                    words.add_raw(ch)
                    result.append(ch)
                ch = self.next()
                if not ch:
                    break
                words.add_raw(ch)
            else:
                words.add_char(ch)
            result.append(ch)
        if stop:
            raise ShellError(
                f"unexpected end of statement while looking for matching {stop}"
            )
        return "".join(result), words.result()

    def single_quote(self) -> str:
        quote = self.next()
        out = [quote] if self.raw_quotes else []
        while True:
            ch = self.next()
            if not ch:
                raise ShellError(
                    "unexpected end of statement while looking for matching "
                    "single-quote"
                )
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        quote = self.next()
        out = [quote] if self.raw_quotes else []
        while True:
            ch = self.peek()
            if not ch:
                raise ShellError(
                    "unexpected end of statement while looking for matching "
                    "double-quote"
                )
            if ch == '"':
                self.next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if not following:
                    continue
                # Only these can be escaped inside "..."; other escapes stay.
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        """A variable name, a run of digits, or one special parameter."""
        ch = self.peek()
        if ch.isdigit():
            start = self.pos
            while self.peek().isdigit():
                self.next()
            return self.text[start : self.pos]
        if ch and ch in _SPECIAL_PARAMS:
            return self.next()
        start = self.pos
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            self.next()
        return self.text[start : self.pos]

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            return self.get(name)[0] if name else "$"
        self.next()
        ch = self.peek()
        if not ch:
            raise ShellError("syntax error: missing '}'")
        if ch in "{}:":
            raise ShellError("syntax error: bad substitution")
        name = self.name()
        op = self.next()
        if op == "}":
            return self.get(name)[0]
        if op == ":":
            return self.colon_modifier(name)
        if op in "+-?#%":
            return self.modifier(name, op)
        if op == "/":
            return self.replace(name)
        if not op:
            raise ShellError("syntax error: missing '}'")
        raise ShellError(f"unsupported modifier ({op}) in substitution")

    def _until_brace(self, raw_escapes: bool) -> str:
        try:
            return self.process_until("}", raw_escapes)[0]
        except ShellError:
            if not self.peek():
                raise ShellError("syntax error: missing '}'") from None
            raise

    def colon_modifier(self, name: str) -> str:
        modifier = self.next()
        word = self._until_brace(self.raw_escapes)
        value, is_set = self.get(name)
        if modifier == "+":
            return word if value else ""
        if modifier == "-":
            return value or word
        if modifier == "?":
            if not is_set:
                raise ShellError(f"{name}: {word or 'is not allowed to be unset'}")
            if not value:
                raise ShellError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        raise ShellError(f"unsupported modifier ({modifier}) in substitution")

    def modifier(self, name: str, op: str) -> str:
        # A pattern keeps its escapes: `\*` is a literal star, not a glob.
        word = self._until_brace(self.raw_escapes or op in "#%")
        value, is_set = self.get(name)
        if op == "-":
            return value if is_set else word
        if op == "+":
            return word if is_set else ""
        if op == "?":
            if not is_set:
                raise ShellError(f"{name}: {word or 'is not allowed to be unset'}")
            return value
        greedy = word.startswith(op)
        if greedy:
            word = word[1:]
        pattern = _glob_regex(word)
        if op == "#":
            ends = range(len(value), -1, -1) if greedy else range(len(value) + 1)
            for end in ends:
                if pattern.fullmatch(value, 0, end):
                    return value[end:]
            return value
        starts = range(len(value) + 1) if greedy else range(len(value), -1, -1)
        for start in starts:
            if pattern.fullmatch(value, start):
                return value[:start]
        return value

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern = self.process_until("/", True)[0]
        except ShellError:
            if not self.peek():
                raise ShellError("syntax error: missing '/' in ${}") from None
            raise
        replacement = self._until_brace(True)
        value, _ = self.get(name)
        regex = _glob_regex(pattern)
        return regex.sub(lambda _: replacement, value, count=0 if replace_all else 1)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A shell pattern (``*``, ``?``, ``[...]``, ``\\x``) as a regex."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.S)


def _lexer(
    word: str,
    env: Mapping[str, str],
    escape: str,
    raw_quotes: bool = False,
    raw_escapes: bool = False,
) -> _Lexer:
    return _Lexer(word, env, escape, raw_quotes, raw_escapes)


def process_word(
    word: str,
    env: Mapping[str, str],
    *,
    escape: str = "\\",
    raw_quotes: bool = False,
    raw_escapes: bool = False,
) -> str:
    """Expand one word: quotes and escapes removed, variables substituted.

    ``raw_quotes``/``raw_escapes`` keep quotes and escape tokens in the result
    (heredoc bodies are expanded that way). Raises ShellError.
    """
    if "$" not in word and "'" not in word and '"' not in word and escape not in word:
        return word  # nothing to expand or remove: most flag values, most words
    lexer = _lexer(word, env, escape, raw_quotes, raw_escapes)
    return _run(lexer, word)[0]


def process_words(
    word: str, env: Mapping[str, str], *, escape: str = "\\"
) -> list[str]:
    """Expand and split into fields as an unquoted shell word list would."""
    return _run(_lexer(word, env, escape), word)[1]


def shell_words(line: str) -> list[str]:
    """The words of a line with quotes and escapes kept and no variable set, as
    BuildKit's parser finds heredocs. Raises ShellError (unterminated quote)."""
    return _run(_lexer(line, {}, "\\", raw_quotes=True, raw_escapes=True), line)[1]


def used_variables(word: str, env: Mapping[str, str], *, escape: str = "\\") -> set:
    """The names a word refers to (set or not): for "build arg not used"."""
    lexer = _lexer(word, env, escape)
    try:
        lexer.process_until("", lexer.raw_escapes)
    except ShellError:
        pass
    return lexer.used


def _run(lexer: _Lexer, word: str) -> tuple[str, list[str]]:
    try:
        return lexer.process_until("", lexer.raw_escapes)
    except ShellError as exc:
        raise ShellError(f"failed to process {word!r}: {exc.message}") from None
