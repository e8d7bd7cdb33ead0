"""The compiled grammar is kept under $XDG_CACHE_HOME/buildpy, and a cache
directory that cannot be written costs nothing but the compile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PARSE = "from frontend import parse; print(parse('FROM a\\n').instructions[0].args)"


def run_parse(cache_home: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PARSE],
        env={**os.environ, "XDG_CACHE_HOME": cache_home},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )


def test_cache_file_written_then_reused(tmp_path: Path) -> None:
    first = run_parse(str(tmp_path))
    files = list((tmp_path / "buildpy").iterdir())
    assert len(files) == 1 and files[0].name.startswith("dockerfile-")
    stamp = files[0].stat().st_mtime_ns
    second = run_parse(str(tmp_path))
    assert first.stdout == second.stdout == "['a']\n"
    assert files[0].stat().st_mtime_ns == stamp  # read, not rewritten


def test_unwritable_cache_home_falls_back_silently(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_parse(str(blocker / "cache"))  # cannot be made: a file is in the way
    assert (proc.stdout, proc.stderr) == ("['a']\n", "")
