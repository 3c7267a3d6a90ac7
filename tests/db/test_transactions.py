"""Guarantee 3: writes use BEGIN IMMEDIATE; busy/locked errors are retried, then reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.db.sqlite.database import is_busy_error
from icn_mcp.errors import BusyError, DatabaseError
from tests.helpers import run_worker

SQLITE_BUSY_SNAPSHOT = 517


@pytest.fixture
def db(db_path: Path):
    with Database(db_path) as database:
        database.run_in_transaction(lambda c: c.execute("CREATE TABLE counter (value INTEGER NOT NULL)"))
        database.run_in_transaction(lambda c: c.execute("INSERT INTO counter VALUES (0)"))
        yield database


def _value(db: Database) -> int:
    return db.connection().execute("SELECT value FROM counter").fetchone()[0]


def _raw_read_then_write_race(path: Path, other) -> sqlite3.OperationalError:
    """A deferred read, a commit by another process, then our write: BUSY_SNAPSHOT."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA busy_timeout = 5000")
    try:
        raw.execute("BEGIN")
        raw.execute("SELECT value FROM counter").fetchone()
        other.stdin.write("go\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "done"
        with pytest.raises(sqlite3.OperationalError) as info:
            raw.execute("UPDATE counter SET value = value + 1")
        raw.execute("ROLLBACK")
        return info.value
    finally:
        raw.close()


def _snapshot_writer(path: Path):
    import subprocess
    import sys

    from tests.helpers import WORKERS

    proc = subprocess.Popen(
        [sys.executable, str(WORKERS / "snapshot_writer.py"), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_read_then_write_race_gives_busy_snapshot_raw_and_success_through_the_layer(
    db: Database, db_path: Path
) -> None:
    other = _snapshot_writer(db_path)
    try:
        # 1. On a raw connection the race fails at once, whatever the busy timeout.
        error = _raw_read_then_write_race(db_path, other)
        assert error.sqlite_errorcode == SQLITE_BUSY_SNAPSHOT
        assert is_busy_error(error)

        # 2. The layer retries the whole call when that very error escapes from it.
        #    (Raised from inside fn: the race itself cannot happen under BEGIN IMMEDIATE.)
        calls = []

        def increment(conn: sqlite3.Connection) -> int:
            calls.append(1)
            if len(calls) == 1:
                raise error
            value = conn.execute("SELECT value FROM counter").fetchone()[0]
            conn.execute("UPDATE counter SET value = ?", (value + 1,))
            return value + 1

        before = db.get_stats()["busy_retries"]
        assert db.run_in_transaction(increment) == 2  # one commit by the other process, ours
        assert len(calls) == 2
        assert db.get_stats()["busy_retries"] == before + 1

        # 3. Read-then-write through the layer holds the write lock from BEGIN, so the
        #    other process's concurrent write waits and no update is lost.
        def slow_increment(conn: sqlite3.Connection) -> None:
            value = conn.execute("SELECT value FROM counter").fetchone()[0]
            other.stdin.write("go\n")
            other.stdin.flush()  # the other process now blocks on our write lock
            conn.execute("UPDATE counter SET value = ?", (value + 1,))

        db.run_in_transaction(slow_increment)
        assert other.stdout.readline().strip() == "done"
        assert _value(db) == 4
    finally:
        other.stdin.close()
        other.wait(timeout=30)


def test_busy_is_retried_until_the_lock_is_released(db_path: Path) -> None:
    with Database(db_path, busy_timeout_ms=20, retries=200, retry_base_delay_s=0.005, retry_max_delay_s=0.02) as db:
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (x INTEGER)"))
        locker = run_worker("write_locker", db_path, 0.5)
        assert locker.stdout.readline().strip() == "locked"
        db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        assert db.get_stats()["busy_retries"] > 0
        locker.communicate(timeout=30)
        assert db.connection().execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_busy_after_the_whole_budget_raises_busy_error(db_path: Path) -> None:
    with Database(db_path, busy_timeout_ms=10, retries=2, retry_base_delay_s=0.001, retry_max_delay_s=0.002) as db:
        locker = run_worker("write_locker", db_path, 10)
        try:
            assert locker.stdout.readline().strip() == "locked"
            with pytest.raises(BusyError) as info:
                db.run_in_transaction(lambda c: c.execute("SELECT 1"))
            assert info.value.attempts == 3
            stats = db.get_stats()
            assert stats["busy_retries"] == 2 and stats["busy_exhausted"] == 1
            assert not db.connection().in_transaction
        finally:
            locker.kill()
            locker.communicate()


def test_write_transaction_commits_and_rolls_back(db: Database) -> None:
    with db.write_transaction() as conn:
        conn.execute("UPDATE counter SET value = 10")
    assert _value(db) == 10
    with pytest.raises(ZeroDivisionError):
        with db.write_transaction() as conn:
            conn.execute("UPDATE counter SET value = 11")
            raise ZeroDivisionError("boom")
    assert _value(db) == 10
    assert not db.connection().in_transaction


def test_run_in_transaction_rolls_back_on_error(db: Database) -> None:
    def fail(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE counter SET value = 99")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        db.run_in_transaction(fail)
    assert _value(db) == 0


def test_write_transaction_takes_the_write_lock_at_begin(db: Database, db_path: Path) -> None:
    other = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    try:
        with db.write_transaction():
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()


def test_nested_transactions_are_refused(db: Database) -> None:
    with db.write_transaction():
        with pytest.raises(DatabaseError, match="nested"):
            db.run_in_transaction(lambda c: None)
        with pytest.raises(DatabaseError, match="nested"):
            with db.read_transaction():
                pass


def test_read_transaction_is_a_consistent_snapshot(db: Database, db_path: Path) -> None:
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        with db.read_transaction() as conn:
            first = conn.execute("SELECT value FROM counter").fetchone()[0]
            other.execute("UPDATE counter SET value = value + 1")
            second = conn.execute("SELECT value FROM counter").fetchone()[0]
        assert first == second == 0
        assert _value(db) == 1
    finally:
        other.close()


def test_non_busy_errors_are_not_retried(db: Database) -> None:
    calls = []

    def bad(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        db.run_in_transaction(bad)
    assert len(calls) == 1
