"""Connections: pragmas read back, one per thread, health checks, cleanup, fork, files."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from icn_mcp.db import Database, close_db, get_db
from icn_mcp.db.sqlite import database as database_module
from icn_mcp.errors import DatabaseClosed, DatabaseError, DatabaseFileError


def test_default_pragmas_read_back_from_a_live_connection(db_path: Path) -> None:
    with Database(db_path) as db:
        conn = db.connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == 64 * 1024 * 1024
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -8192  # 8 MiB
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # SQLite's own
        assert not conn.in_transaction  # autocommit: we issue BEGIN ourselves
        assert conn.isolation_level is None


def test_every_pragma_is_overridable(db_path: Path) -> None:
    with Database(
        db_path,
        synchronous="full",
        busy_timeout_ms=1234,
        temp_store="FILE",
        cache_size_kib=4096,
        journal_size_limit=1 << 20,
        wal_autocheckpoint=0,
    ) as db:
        values = db.read_pragmas(db.connection())
    assert values == {
        "journal_mode": "wal",
        "busy_timeout": 1234,
        "synchronous": 2,
        "temp_store": 1,
        "foreign_keys": 1,
        "journal_size_limit": 1 << 20,
        "cache_size": -4096,
        "wal_autocheckpoint": 0,
    }


def test_pragmas_hold_on_connections_opened_by_other_threads(db_path: Path) -> None:
    with Database(db_path, synchronous="EXTRA") as db:
        seen = {}
        thread = threading.Thread(target=lambda: seen.update(db.read_pragmas(db.connection())))
        thread.start()
        thread.join()
        assert seen == db.expected_pragmas()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"synchronous": "SOMETIMES"}, "synchronous='SOMETIMES'"),
        ({"busy_timeout_ms": -1}, "busy_timeout_ms=-1"),
        ({"cache_size_kib": 0}, "cache_size_kib=0"),
        ({"retries": True}, "retries=True"),
    ],
)
def test_bad_arguments_are_clear_errors(db_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(DatabaseError, match=message):
        Database(db_path, **kwargs)
    assert not db_path.exists()


@pytest.mark.parametrize("path", [":memory:", ""])
def test_memory_databases_are_refused(path: str) -> None:
    with pytest.raises(DatabaseError, match="a file path"):
        Database(path)


def test_one_connection_per_thread_reused_within_a_thread(db_path: Path) -> None:
    with Database(db_path) as db:
        main = db.connection()
        assert db.connection() is main
        other = []
        thread = threading.Thread(target=lambda: other.append(db.connection()))
        thread.start()
        thread.join()
        assert other[0] is not main


def test_close_closes_every_connection_in_every_thread(db_path: Path) -> None:
    db = Database(db_path)
    conns = [db.connection()]
    ready, done = threading.Event(), threading.Event()

    def worker() -> None:
        conns.append(db.connection())
        ready.set()
        done.wait()

    thread = threading.Thread(target=worker)
    thread.start()
    ready.wait()
    assert db.get_stats()["open_connections"] == 2
    db.close()
    done.set()
    thread.join()
    for conn in conns:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    with pytest.raises(DatabaseClosed):
        db.connection()
    db.close()  # idempotent
    # The WAL was checkpointed and removed with the last connection.
    assert not Path(str(db_path) + "-wal").exists()


def test_connections_of_finished_threads_are_closed(db_path: Path) -> None:
    with Database(db_path) as db:
        db.connection()
        for _ in range(5):
            thread = threading.Thread(target=db.connection)
            thread.start()
            thread.join()
        # Each new connection prunes those of threads that ended.
        assert db.get_stats()["open_connections"] <= 2


def test_health_check_reconnects_a_broken_connection(db_path: Path) -> None:
    with Database(db_path, health_check_interval_s=0) as db:
        broken = db.connection()
        broken.close()  # broken behind the layer's back
        conn = db.connection()
        assert conn is not broken
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        stats = db.get_stats()
        assert stats["reconnects"] == 1 and stats["health_check_failures"] == 1


def test_deleted_database_file_is_detected_before_writing(db_path: Path) -> None:
    with Database(db_path) as db:
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (x)"))
        for suffix in ("", "-wal", "-shm"):
            Path(str(db_path) + suffix).unlink(missing_ok=True)
        with pytest.raises(DatabaseFileError, match="was deleted") as info:
            db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        assert info.value.path == str(db_path)
        assert not db.check_health()["ok"]
    assert not db_path.exists()  # nothing was written into a new or unlinked file


def test_replaced_database_file_is_detected(db_path: Path, tmp_path: Path) -> None:
    with Database(db_path) as db:
        db.connection()
        other = tmp_path / "other.sqlite"
        sqlite3.connect(other).close()
        os.replace(other, db_path)
        with pytest.raises(DatabaseFileError, match="replaced"):
            with db.write_transaction():
                pass


def test_files_are_created_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "db.sqlite"
    with Database(path) as db:
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (x)"))
        for suffix in ("", "-wal", "-shm"):
            mode = stat.S_IMODE(os.stat(str(path) + suffix).st_mode)
            assert mode == 0o600, f"{suffix or 'database'} has mode {oct(mode)}"
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_a_file_that_is_not_sqlite_is_refused_untouched(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_text("this is not a database, " * 100)
    before = db_path.read_bytes()
    with pytest.raises(DatabaseError, match="cannot be used as an SQLite database"):
        Database(db_path)
    assert db_path.read_bytes() == before


def _child_uses_database(db: Database, queue) -> None:
    before = db.get_stats()["connections_opened"]
    db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (?)", (os.getpid(),)))
    queue.put((before, db.get_stats()["connections_opened"], len(database_module._inherited_after_fork)))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_no_connection_survives_a_fork(db_path: Path) -> None:
    with Database(db_path) as db:
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (pid INTEGER)"))
        parent_conn = db.connection()
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_uses_database, args=(db, queue))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        before, after, inherited = queue.get(timeout=10)
        # The child started with no connection of its own and opened a fresh one;
        # the parent's was set aside, never used or closed by the child.
        assert after == before + 1 and inherited >= 1
        assert db.connection() is parent_conn
        db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (0)"))
        assert parent_conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2
        assert parent_conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.skipif(sys.platform != "linux", reason="os.fork")
def test_a_forked_child_exiting_normally_leaves_the_parent_working(db_path: Path) -> None:
    with Database(db_path) as db:
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (x)"))
        pid = os.fork()
        if pid == 0:  # child: run the exit handler a script would run, then leave
            code = 1
            try:
                db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (1)"))
                database_module._close_all_at_exit()
                code = 0
            finally:
                os._exit(code)  # never return into pytest in the child
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (2)"))
        assert db.connection().execute("SELECT count(*) FROM t").fetchone()[0] == 2


def test_get_db_opens_from_the_environment_and_close_db(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MCP_DB_DIR", str(tmp_path / "var"))
    try:
        db = get_db()
        assert db.path == tmp_path / "var" / "icn-mcp.sqlite"
        assert get_db() is db
        assert [m.version for m in db.migration_history()][:1] == ["0001_advisory_locks"]
    finally:
        close_db()
    assert db.closed
    close_db()


def test_get_db_reopens_after_the_file_was_replaced(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "db.sqlite"
    monkeypatch.setenv("MCP_DB_PATH", str(path))
    monkeypatch.setenv("MCP_DB_HEALTH_CHECK_INTERVAL_S", "0")
    try:
        first = get_db()
        first.run_in_transaction(lambda c: c.execute("CREATE TABLE marker (x)"))
        replacement = tmp_path / "replacement.sqlite"
        sqlite3.connect(replacement).close()
        os.replace(replacement, path)
        second = get_db()
        assert second is not first and first.closed
        assert (
            second.connection().execute("SELECT count(*) FROM sqlite_master WHERE name = 'marker'").fetchone()[0] == 0
        )
    finally:
        close_db()


def _wait_child(pid: int, timeout_s: float = 30.0) -> int | None:
    """The child's exit code, or None (after killing it) if it hung."""
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(sys.platform != "linux", reason="os.fork")
def test_fork_while_another_thread_holds_the_registry_lock_does_not_hang(db_path: Path) -> None:
    with Database(db_path) as db:
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (x)"))
        with db._registry_lock:  # as if another thread were opening a connection
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (1)"))
                    code = 0
                finally:
                    os._exit(code)
        assert _wait_child(pid) == 0
        assert db.connection().execute("SELECT count(*) FROM t").fetchone()[0] == 1


@pytest.mark.skipif(sys.platform != "linux", reason="os.fork")
def test_fork_during_a_transaction_gives_the_child_a_clear_error_not_a_hang(db_path: Path) -> None:
    with Database(db_path, busy_timeout_ms=100, retries=1) as db:
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (x)"))
        holding, forked = threading.Event(), threading.Event()

        def hold_a_transaction() -> None:
            with db.write_transaction() as conn:
                conn.execute("INSERT INTO t VALUES ('parent')")
                holding.set()
                forked.wait(30)

        thread = threading.Thread(target=hold_a_transaction)
        thread.start()
        holding.wait(30)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                time.sleep(0.2)  # long after the parent committed
                try:
                    db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES ('child')"))
                except DatabaseError as exc:
                    code = 0 if "forked while a transaction was open" in str(exc) else 2
            finally:
                os._exit(code)
        forked.set()
        thread.join()
        assert _wait_child(pid) == 0
        assert [r[0] for r in db.connection().execute("SELECT x FROM t")] == ["parent"]
