"""The store's settings file, ``$root/config.json``, as dockerd's daemon.json is
for docker: settings that hold for every build on the store, through the daemon or
embedded. Keys (all optional):

    "registry-mirrors":     ["host:port", "http://host:port", ...]  (buildpy.transfer)
    "insecure-registries":  ["host:port", ...]                      (buildpy.transfer)
    "max-storage":          "20GB" or a number of bytes: the cap --max-storage sets
                            for one build, for every build (the flag wins)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from buildpy.errors import UsageError

FILE = "config.json"


def load(root: Path) -> dict[str, Any]:
    """The settings of the store at ``root``; {} when it has no settings file."""
    path = root / FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def max_storage(root: Path) -> int | None:
    """``max-storage`` of the settings, in bytes; None when it is not set."""
    value = load(root).get("max-storage")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    from argparse import ArgumentTypeError

    from buildpy.cachecmds import parse_size

    try:
        return parse_size(str(value))
    except ArgumentTypeError as exc:
        raise UsageError(f"{root / FILE}: max-storage: {exc}") from None
