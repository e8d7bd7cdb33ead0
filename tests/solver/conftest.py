from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from solver.cachestore import CacheStore
from tests.solver.solver_fakes import cache_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    """A CacheStore on a real SQLite file in WAL mode, closed after the test."""
    with cache_store(tmp_path / "buildpy.db") as store:
        yield store
