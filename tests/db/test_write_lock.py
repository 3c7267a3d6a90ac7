"""Who waits for the write lock, and how (Database._begin_write).

Threads of one process queue on an in-process lock, so they never meet in SQLite's
busy handler; while another process writes, writes poll for SQLite's lock instead of
sleeping in SQLite's handler, within the same busy timeout, leaving the connection's
busy timeout as it was; alone, a process keeps SQLite's handler.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.errors import BusyError
from tests.helpers import run_worker


def _setup(db: Database) -> None:
    db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (x INTEGER)"))


def _count(db: Database) -> int:
    return db.connection().execute("SELECT count(*) FROM t").fetchone()[0]


def _insert(db: Database, value: float) -> int:
    return db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (?)", (value,)).rowcount)


def _busy_timeout(db: Database) -> int:
    return db.connection().execute("PRAGMA busy_timeout").fetchone()[0]


def _hold_write(db: Database, holding: threading.Event, release: threading.Event) -> threading.Thread:
    """A thread of this process inside a write transaction until ``release`` is set."""

    def hold() -> None:
        with db.write_transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(30)
    return thread


def test_threads_of_one_process_queue_for_the_write_lock_not_in_sqlite(db_path: Path) -> None:
    with Database(db_path) as db:
        _setup(db)
        holding, release = threading.Event(), threading.Event()
        holder = _hold_write(db, holding, release)
        done: list[int] = []
        waiter = threading.Thread(target=lambda: done.append(_insert(db, 2)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and not done  # it waits: the holder has the lock
        release.set()
        holder.join(30)
        waiter.join(30)
        assert done == [1]
        assert _count(db) == 2
        stats = db.get_stats()
        # The waiter never waited in SQLite (its begin would have been slow, and the
        # next writes would poll to find out why).
        assert not db._polls_write_lock()
        assert stats["write_lock_waits"] == 0
        assert stats["busy_retries"] == 0


def test_waiting_for_another_thread_is_bounded_by_the_busy_timeout(db_path: Path) -> None:
    with Database(db_path, busy_timeout_ms=100, retries=1, retry_base_delay_s=0.001) as db:
        _setup(db)
        holding, release = threading.Event(), threading.Event()
        holder = _hold_write(db, holding, release)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (2)"))
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        try:
            waiter = threading.Thread(target=write)
            waiter.start()
            waiter.join(30)
        finally:
            release.set()
            holder.join(30)
        assert len(errors) == 1 and isinstance(errors[0], BusyError)
        assert errors[0].attempts == 2
        assert "another thread of this process" in str(errors[0])
        assert db.get_stats()["busy_exhausted"] == 1
        # Nothing stays held: the next write goes through at once.
        db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (3)"))
        assert _count(db) == 2


def _write_while_locked(db: Database, db_path: Path, hold_s: float) -> float:
    """A write while another process holds the write lock ``hold_s``; the moment that
    process released it (our write committed after it: asserted)."""
    locker = run_worker("write_locker", db_path, hold_s)
    try:
        assert locker.stdout.readline().strip() == "locked"
        db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (?)", (time.time(),)))
        released_at = float(locker.stdout.readline().split()[1])
    finally:
        locker.communicate(timeout=30)
    (mine,) = db.connection().execute("SELECT max(x) FROM t").fetchone()
    assert mine > released_at
    return released_at


def test_a_write_that_waited_for_another_process_makes_the_next_ones_poll(db_path: Path) -> None:
    with Database(db_path) as db:
        _setup(db)
        configured = _busy_timeout(db)
        assert configured == db.busy_timeout_ms
        assert not db._polls_write_lock()
        # 1. Through SQLite's busy handler: slow, so the next writes poll to find out why.
        _write_while_locked(db, db_path, 0.3)
        assert db.get_stats()["write_lock_waits"] == 0
        assert db._polls_write_lock()
        # 2. Polling: the lock is found held by another process, a wait for sure.
        _write_while_locked(db, db_path, 0.3)
        assert db.get_stats()["write_lock_waits"] == 1
        assert db._polls_write_lock()
        assert _busy_timeout(db) == configured
        assert not db.connection().in_transaction
        assert db.get_stats()["busy_retries"] == 0
        assert _count(db) == 2


def test_a_slow_begin_with_nobody_else_writing_goes_back_to_sqlites_handler(db_path: Path) -> None:
    with Database(db_path) as db:
        _setup(db)
        _write_while_locked(db, db_path, 0.3)  # slow: the next writes probe
        assert db._polls_write_lock()
        # Nobody else writes now: the probes find the lock free every time, and after
        # them a begin is one statement again.
        for n in range(20):
            _insert(db, n)
        assert not db._polls_write_lock()
        assert db.get_stats()["write_lock_waits"] == 0
        assert _busy_timeout(db) == db.busy_timeout_ms


def test_polling_gives_up_after_the_busy_timeout_and_leaves_nothing_held(db_path: Path) -> None:
    with Database(db_path, busy_timeout_ms=150, retries=0) as db:
        _setup(db)
        locker = run_worker("write_locker", db_path, 60)
        try:
            assert locker.stdout.readline().strip() == "locked"
            for waits in (0, 1):  # SQLite's handler, then polling
                with pytest.raises(BusyError) as info:
                    db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (1)"))
                assert isinstance(info.value.cause, sqlite3.OperationalError)
                assert "locked" in str(info.value.cause)
                assert _busy_timeout(db) == 150
                assert not db.connection().in_transaction
                assert db.get_stats()["write_lock_waits"] == waits
            assert db.get_stats()["busy_exhausted"] == 2
        finally:
            locker.kill()
            locker.communicate()
        # Neither the in-process lock nor SQLite's is left held.
        db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (2)"))
        with db.write_transaction() as conn:
            conn.execute("INSERT INTO t VALUES (3)")
        assert _count(db) == 2


def test_an_error_inside_the_transaction_releases_the_in_process_lock(db_path: Path) -> None:
    with Database(db_path, busy_timeout_ms=100, retries=0) as db:
        _setup(db)
        with pytest.raises(ZeroDivisionError):
            db.run_in_transaction(lambda c: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            with db.write_transaction():
                raise ZeroDivisionError
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            db.run_in_transaction(lambda c: c.execute("INSERT INTO missing VALUES (1)"))
        # Another thread can still write (a leaked lock would time out here).
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(_insert(db, 1)))
        thread.start()
        thread.join(30)
        assert result == [1]


def test_a_failure_after_a_polled_begin_leaves_no_transaction_open(db_path: Path) -> None:
    with Database(db_path) as db:
        _setup(db)
        _write_while_locked(db, db_path, 0.3)  # slow: the next writes poll
        assert db._polls_write_lock()
        conn = db.connection()
        denied: list[str] = []

        def deny_restoring_the_busy_timeout_once(action: int, name: str | None, value: str | None, *_: object) -> int:
            restoring = action == sqlite3.SQLITE_PRAGMA and name == "busy_timeout" and value not in (None, "0")
            if restoring and not denied:
                denied.append(str(value))
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        conn.set_authorizer(deny_restoring_the_busy_timeout_once)
        try:
            with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
                _insert(db, 1)
        finally:
            conn.set_authorizer(None)
        assert denied == [str(db.busy_timeout_ms)]
        # The begin had succeeded: it was rolled back, the busy timeout is back, and
        # the in-process lock is free.
        assert not conn.in_transaction
        assert _busy_timeout(db) == db.busy_timeout_ms
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(_insert(db, 2)))
        thread.start()
        thread.join(30)
        assert result == [1]
        assert _insert(db, 3) == 1
        assert _count(db) == 3


@pytest.mark.skipif(sys.platform != "linux", reason="os.fork")
def test_a_child_forked_while_a_thread_held_the_write_lock_can_write(db_path: Path) -> None:
    with Database(db_path, busy_timeout_ms=200, retries=0) as db:
        _setup(db)
        held, release = threading.Event(), threading.Event()

        def hold_the_lock() -> None:  # between transactions' lock and BEGIN, as a writer may be
            with db._write_lock:
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        assert held.wait(30)
        try:
            pid = os.fork()
            if pid == 0:  # child: the parent's thread (and its hold on the lock) did not come along
                code = 1
                try:
                    _insert(db, 1)
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
        finally:
            release.set()
            holder.join(30)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _count(db) == 1


def test_processes_racing_for_the_write_lock_lose_no_update_and_poll_for_it(db_path: Path) -> None:
    with Database(db_path) as db:
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE counter (value INTEGER NOT NULL)"))
        db.run_in_transaction(lambda c: c.execute("INSERT INTO counter VALUES (0)"))
        processes, threads, increments = 3, 2, 2000
        workers = [
            run_worker("counter_writer", db_path, increments, threads, stdin=subprocess.PIPE) for _ in range(processes)
        ]
        try:
            for worker in workers:
                assert worker.stdout.readline().strip() == "ready"
            for worker in workers:
                worker.stdin.write("go\n")
                worker.stdin.flush()
            reports = [json.loads(worker.communicate(timeout=120)[0].strip().splitlines()[-1]) for worker in workers]
        finally:
            for worker in workers:
                worker.kill()
                worker.communicate()
        (value,) = db.connection().execute("SELECT value FROM counter").fetchone()
        assert value == processes * threads * increments  # no update lost
        for report in reports:
            assert report["stats"]["busy_exhausted"] == 0
            assert report["busy_timeouts"] == [db.busy_timeout_ms] * threads  # none left at 0
        # Three processes writing back to back met each other's lock, and polled for it.
        assert sum(report["stats"]["write_lock_waits"] for report in reports) > 0
