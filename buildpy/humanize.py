"""How listings write things, as docker's do: ages ("3 minutes ago") and
tables of left-aligned columns three spaces apart."""

from __future__ import annotations

from collections.abc import Sequence


def ago(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a minute ago" if seconds >= 1 else "Less than a second ago"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """``header`` and ``rows``, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = zip(row, widths, strict=True)
        print("   ".join(cell.ljust(width) for cell, width in cells).rstrip())


__all__ = ["ago", "print_table"]
