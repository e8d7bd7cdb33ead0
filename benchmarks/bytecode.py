"""Compile buildpy's modules to bytecode before a benchmark, as ``pip install``
does: a process that finds no bytecode compiles every module it imports, and
with PYTHONDONTWRITEBYTECODE set (as on the project's machine) it does so at
every start, which is no installed user's start-up."""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGES = ("buildpy", "frontend", "runtime", "snapshotter", "solver")


def compile_packages(repo: Path) -> None:
    for package in PACKAGES:
        compileall.compile_dir(repo / package, quiet=1)
