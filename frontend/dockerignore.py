""".dockerignore: reading the file and matching paths as docker does.

Rules (docker docs "Dockerignore file"; moby/patternmatcher):
- ``#`` in the first column starts a comment; blank lines are skipped; lines are
  trimmed; ``!`` re-includes; patterns are cleaned like Go's ``filepath.Clean``
  and a leading ``/`` is dropped, so every pattern is relative to the context.
- ``*`` matches within one path component, ``?`` one character other than ``/``,
  ``[...]`` a class, ``**`` any number of components (also none), ``\\`` escapes.
- Patterns are tried in order and the last one that matches decides. A pattern
  that matches a directory matches everything below it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

_REGEX_SPECIAL = set(".$^()+{}|")


def read_dockerignore(text: str) -> list[str]:
    """The patterns of a .dockerignore file, in order, ``!`` kept."""
    patterns: list[str] = []
    for number, line in enumerate(text.splitlines()):
        if number == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = posixpath.normpath(pattern)
            # normpath keeps a leading "//"; Go's Clean does not.
            pattern = re.sub("^/+", "/", pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def _clean(relpath: str) -> str:
    path = posixpath.normpath(relpath.replace("\\", "/")).lstrip("/")
    return path or "."


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool  # True for a "!" pattern, which re-includes

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(_to_regex(self.text), re.S)

    @cached_property
    def parts(self) -> list[str]:
        return self.text.split("/")

    def match(self, path: str) -> bool:
        return self.regex.match(path) is not None


def _to_regex(pattern: str) -> str:
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                # "**" at the end matches everything, like .gitignore.
                out.append(".*" if i == n else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch in _REGEX_SPECIAL:
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append("\\\\")
        elif ch == "[" and i < n and pattern[i] == "!":
            out.append("[^")
            i += 1
        else:
            out.append(ch)
    out.append("$")
    return "".join(out)


class IgnoreMatcher:
    """Decides which context paths the patterns exclude."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: list[_Pattern] = []
        for text in patterns:
            exclusion = text.startswith("!")
            body = text[1:] if exclusion else text
            if body:
                self.patterns.append(_Pattern(body, exclusion))

    def excluded(self, relpath: str) -> bool:
        """Is ``relpath`` (relative to the context, ``/``-separated) excluded?"""
        path = _clean(relpath)
        parents = path.split("/")[:-1]
        prefixes = ["/".join(parents[: i + 1]) for i in range(len(parents))]
        matched = False
        for pattern in self.patterns:
            # An exclude pattern cannot change an excluded path, nor a
            # re-include an included one: skip them (docker does the same).
            if pattern.exclusion != matched:
                continue
            if pattern.match(path) or any(pattern.match(p) for p in prefixes):
                matched = not pattern.exclusion
        return matched

    def dir_may_contain_included(self, relpath: str) -> bool:
        """False only when everything below directory ``relpath`` is excluded.

        A walker may skip an excluded directory when no ``!`` pattern can
        re-include a path below it. The check is conservative: a wildcard
        component is assumed to match.
        """
        if not self.excluded(relpath):
            return True
        parts = _clean(relpath).split("/")
        return any(
            p.exclusion and _may_reach_below(p.parts, parts) for p in self.patterns
        )


def _may_reach_below(pattern_parts: list[str], dir_parts: list[str]) -> bool:
    for i, component in enumerate(pattern_parts):
        if "**" in component:
            return True
        if i == len(dir_parts):
            return True  # the pattern goes deeper than the directory
        if not re.match(_to_regex(component), dir_parts[i]):
            return False
    # The pattern names the directory itself or one of its parents.
    return True
