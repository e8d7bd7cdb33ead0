"""Ages as docker's listings write them ("3 minutes ago"), for every listing
(images, builds, the cache's records)."""

from __future__ import annotations


def ago(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a minute ago" if seconds >= 1 else "Less than a second ago"


__all__ = ["ago"]
