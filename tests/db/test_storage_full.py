"""A full disk under the database layer (issue 9 item 12): a write refused for want
of space raises StorageFull (not a raw OperationalError), the incident is logged once
however many writes fail, counted in get_stats(), seen by check_storage(), and over
with the first write that succeeds once space returns. A real small filesystem: the
``small_disk`` fixture (tmpfs, root only, skipped with the reason otherwise)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.db.storage import is_storage_full_error
from icn_mcp.errors import StorageFull
from tests.helpers import fill_disk, run_cli


def _insert(db: Database, size: int = 8000) -> None:
    db.run_in_transaction(lambda c: c.execute("INSERT INTO notes (body) VALUES (?)", ("x" * size,)))


def test_storage_full_is_one_incident_and_ends_when_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Database(small_disk / "hq.sqlite") as db:
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE notes (body TEXT)"))
        _insert(db)
        assert db.check_storage() == {"full": False, "since": None}
        filler = fill_disk(small_disk)

        caplog.set_level(logging.INFO, logger="icn_mcp.db")
        refused = []
        for _ in range(20):
            try:
                _insert(db)
            except StorageFull as exc:
                refused.append(exc)
        assert len(refused) >= 15  # a write or two may fit in the WAL's last page
        first = refused[0]
        assert first.path == str(db.path) and "full" in first.cause and first.since
        assert first.hint and "free space" in first.hint
        assert isinstance(first.__cause__, sqlite3.OperationalError)
        assert is_storage_full_error(first.__cause__)
        stats = db.get_stats()
        assert (stats["storage_full"], stats["storage_full_errors"], stats["storage_full_incidents"]) == (
            1,
            len(refused),
            1,
        )
        assert db.check_storage() == {"full": True, "since": first.since}
        assert db.connection().execute("SELECT count(*) FROM notes").fetchone()[0] >= 1  # reads work
        full_lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(full_lines) == 1 and "disk is full" in full_lines[0].getMessage()
        assert full_lines[0].exc_info is None

        filler.unlink()
        _insert(db)  # resumes by itself
        assert db.check_storage() == {"full": False, "since": None}
        assert db.get_stats()["storage_full"] == 0
        resumed = [r.getMessage() for r in caplog.records if "writes succeed again" in r.getMessage()]
        assert resumed == [resumed[0]] and f"{len(refused)} refused" in resumed[0]


def test_the_cli_says_the_disk_is_full_in_one_line(small_disk: Path) -> None:
    """``icn-mcp db backup`` onto a full disk: exit 1 and a clean message, no traceback."""
    db_dir = small_disk / "var"
    assert run_cli("db", "migrate", env={"MCP_DB_DIR": str(db_dir)}).returncode == 0
    fill_disk(small_disk)
    result = run_cli("db", "backup", env={"MCP_DB_DIR": str(db_dir)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "space" in result.stderr
