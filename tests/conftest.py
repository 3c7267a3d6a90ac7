"""Shared fixtures: real SQLite files in tmp_path and a clean MCP_* environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's MCP_* settings."""
    for name in list(os.environ):
        if name.startswith("MCP_") and name != "MCP_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "icn-mcp.sqlite"


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    """An empty migrations directory for tests that write their own files."""
    path = tmp_path / "migrations"
    path.mkdir()
    return path
