"""The frontend's one exception: something is wrong with the user's Dockerfile.

Every problem the frontend finds is the user's input (syntax, an unknown
instruction, a bad flag, a missing base image...), so there is a single class.
A bug in the frontend surfaces as an ordinary Python exception instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Lines of context shown around the marked lines of a frame, as BuildKit does.
_FRAME_CONTEXT = 1
_RULE = "-" * 20


class DockerfileError(Exception):
    """A problem in a Dockerfile, pointing at the instruction that has it.

    ``line``/``column`` are 1-based and 0 when the problem concerns the whole
    file (an empty Dockerfile, an unknown --target given on the command line
    points at nothing in particular). ``end_line`` is the last line of the
    instruction. ``hint`` is a suggestion such as "did you mean RUN?".
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str = "Dockerfile",
        line: int = 0,
        column: int = 0,
        end_line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.end_line = end_line if end_line is not None else line
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.filename
        if self.line:
            where += f":{self.line}:{self.column or 1}"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def frame(self, source_text: str) -> str:
        """The marked lines of ``source_text`` with a line of context each side.

        Empty when the error points at no line.
        """
        if not self.line:
            return ""
        return source_frame(source_text, self.line, self.end_line)


def source_frame(source_text: str, first: int, last: int) -> str:
    """BuildKit's frame of Dockerfile lines ``first``..``last`` (1-based), marked
    ``>>>``, with a line of context each side; for parse errors and failed steps."""
    lines = source_text.splitlines()
    start = max(1, first - _FRAME_CONTEXT)
    end = min(len(lines), last + _FRAME_CONTEXT)
    out = [_RULE]
    for number in range(start, end + 1):
        marker = ">>>" if first <= number <= last else "   "
        # " %3d | " is BuildKit's layout (solver/errdefs/source.go).
        out.append(f" {number:>3} | {marker} {lines[number - 1]}")
    out.append(_RULE)
    return "\n".join(out)


def buildkit_source(filename: str, source_text: str, first: int, last: int) -> str:
    """Lines ``first``..``last`` as BuildKit's build checks print them (its
    errdefs Source.Print): a ``FILE:FIRST`` header, then the marked lines with
    two lines of context each side for one line, one for several, where the
    text has them; the last line of a text ending in a newline is an empty one.
    """
    lines = source_text.split("\n")
    if not 1 <= first <= len(lines):
        return ""
    last = min(max(last, first), len(lines))
    start, end = first, last
    wanted, taken = (4 if first == last else 2), 0
    while taken < wanted:  # widen one line a side per round, as BuildKit does
        if start > 1:
            start, taken = start - 1, taken + 1
        if end != len(lines):
            end, taken = end + 1, taken + 1
        taken += 1
    out = [f"{filename}:{first}", _RULE]
    for number in range(start, end + 1):
        marker = ">>>" if first <= number <= last else "   "
        out.append(f" {number:>3} | {marker} {lines[number - 1]}")
    out.append(_RULE)
    return "\n".join(out) + "\n"


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """``did you mean X?`` for the nearest of ``choices``, keeping word's case."""
    options = list(choices)
    lowered = {c.lower(): c for c in options}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    if not match:
        return None
    best = lowered[match[0]]
    if word.isupper():
        best = best.upper()
    return f"did you mean {best}?"
