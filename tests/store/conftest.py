"""Fixtures of the store tests: each test runs on both backends (a real SQLite file,
and a fresh PostgreSQL database of its own) with a clock we move.

The clock moves the store's time on SQLite only: on PostgreSQL the server's now()
decides ownership (DESIGN.md guarantee 10), so tests that move the clock, or read
SQLite directly, are marked ``sqlite_only`` and run on SQLite alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from icn_mcp.db import Database
from icn_mcp.store import Store

from .store_helpers import ADMIN_TOKEN, MAINTAINER_TOKEN, FakeClock


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the PostgreSQL variant of tests marked sqlite_only (not skipped: in CI a
    skipped PostgreSQL test is a failure, and these are not meant to run there)."""
    keep = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend == "postgresql" and item.get_closest_marker("sqlite_only") is not None:
            continue
        keep.append(item)
    items[:] = keep


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "hq.sqlite"


@pytest.fixture
def db_target(backend: str, db_path: Path, request: pytest.FixtureRequest) -> str:
    """What another process opens for the same database: the file, or the URL."""
    if backend == "sqlite":
        return str(db_path)
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def db(db_target: str) -> Iterator[Any]:
    from .store_helpers import open_database

    database = open_database(db_target)
    yield database
    database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db: Database, clock: FakeClock) -> Store:
    return Store(
        db,
        clock=clock,
        admin_token=ADMIN_TOKEN,
        maintainer_tokens=[MAINTAINER_TOKEN],
    )
