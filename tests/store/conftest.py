"""Fixtures of the store tests: a real SQLite file per test and a clock we move."""

from __future__ import annotations

from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.store import Store

from .store_helpers import ADMIN_TOKEN, MAINTAINER_TOKEN, FakeClock


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "hq.sqlite"


@pytest.fixture
def db(db_path: Path):
    database = Database(db_path)
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
