"""What only PostgreSQL has: the pool and lost connections, serialization retries,
an ambiguous COMMIT, the server's clock, the optional driver, the settings.

The contract both backends share is in test_contract.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest

from icn_mcp.config import Settings
from icn_mcp.db import close_db, get_db
from icn_mcp.db.timestamps import parse_ts
from icn_mcp.errors import BusyError, CommitUnknown, ConfigError
from tests import pg
from tests.helpers import run_cli

pytestmark = pytest.mark.postgres


@pytest.fixture
def pgdb(pg_url: str) -> Iterator[Any]:
    from icn_mcp.db.postgres import PostgresDatabase

    db = PostgresDatabase(pg_url, pool_min=3, pool_max=5, retry_base_delay_s=0.001)
    db.run_in_transaction(lambda c: c.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
    db.run_in_transaction(lambda c: c.execute("INSERT INTO counter VALUES (1, 0)"))
    try:
        yield db
    finally:
        db.close()


def _count(db: Any) -> int:
    with db.read_transaction() as conn:
        return conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0]


def _increment(conn: Any) -> int:
    return conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n").fetchone()[0]


def test_the_pool_recovers_after_every_backend_is_terminated(pgdb: Any, pg_url: str) -> None:
    for _ in range(3):
        pgdb.run_in_transaction(_increment)
    admin = pg.admin_url()
    assert admin is not None
    assert pg.terminate_backends(admin, pg_url) >= 3  # every pooled connection, at once
    for _ in range(10):  # no operator: the next requests simply succeed
        pgdb.run_in_transaction(_increment)
    assert _count(pgdb) == 13
    assert pgdb.check_health()["ok"] is True
    assert pgdb.get_stats()["reconnects"] >= 1


def test_a_connection_lost_before_commit_is_retried_once_more_and_applies_once(pgdb: Any, pg_url: str) -> None:
    import psycopg

    admin = pg.admin_url()
    calls: list[int] = []

    def fn(conn: Any) -> int:
        calls.append(1)
        value = _increment(conn)
        if len(calls) == 1:  # kill our own backend mid-transaction, before COMMIT
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            with psycopg.connect(admin, autocommit=True) as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.execute("SELECT 1")  # fails: the server closed the connection
        return value

    assert pgdb.run_in_transaction(fn) == 1
    assert len(calls) == 2 and _count(pgdb) == 1
    assert pgdb.get_stats()["connection_retries"] == 1


def test_serialization_failures_are_retried_and_counted(pgdb: Any, pg_url: str) -> None:
    import psycopg

    calls: list[int] = []

    def fn(conn: Any) -> int:
        calls.append(1)
        seen = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0]
        if len(calls) == 1:  # another transaction commits a change to the row we read
            with psycopg.connect(pg_url, autocommit=True) as other:
                other.execute("UPDATE counter SET n = n + 100 WHERE id = 1")
        conn.execute("UPDATE counter SET n = %s WHERE id = 1", (seen + 1,))
        return seen + 1

    assert pgdb.run_in_transaction(fn) == 101  # the re-run saw the other commit
    assert len(calls) == 2 and _count(pgdb) == 101
    assert pgdb.get_stats()["busy_retries"] == 1


def test_serialization_failures_past_the_budget_raise_busy_error(pgdb: Any, pg_url: str) -> None:
    import psycopg

    def fn(conn: Any) -> None:
        conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
        conn.execute("UPDATE counter SET n = 0 WHERE id = 1")

    with pytest.raises(BusyError) as info:
        pgdb.run_in_transaction(fn, retries=2)
    assert info.value.attempts == 3 and _count(pgdb) == 3  # only the other commits landed


def test_a_connection_lost_during_commit_is_never_retried(pgdb: Any, pg_url: str) -> None:
    """COMMIT is in flight (a deferred trigger keeps it busy) when the backend dies."""
    import psycopg

    admin = pg.admin_url()
    pgdb.run_in_transaction(
        lambda c: c.execute("""
        CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON counter
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
    """)
    )
    calls: list[int] = []
    pids: list[int] = []

    def fn(conn: Any) -> None:
        calls.append(1)
        pids.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        _increment(conn)

    def kill_during_commit() -> None:
        with psycopg.connect(admin, autocommit=True) as killer:
            for _ in range(3000):
                if pids:
                    row = killer.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pids[0],)).fetchone()
                    if row and row[0].strip().upper() == "COMMIT":
                        killer.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
                        return
                time.sleep(0.01)

    killer = threading.Thread(target=kill_during_commit)
    killer.start()
    with pytest.raises(CommitUnknown) as info:
        pgdb.run_in_transaction(fn)
    killer.join(60)
    assert len(calls) == 1  # not re-run: it might have committed
    assert "may or may not" in str(info.value) and info.value.hint
    assert pgdb.get_stats()["commit_unknown"] == 1


def test_lease_times_come_from_the_server_clock_not_the_host(pgdb: Any, monkeypatch) -> None:
    """A host clock an hour off changes nothing: expiry is the server's now() + ttl."""
    import icn_mcp.db.timestamps as timestamps

    skewed = lambda: datetime.now(UTC) + timedelta(hours=1)  # noqa: E731
    monkeypatch.setattr(timestamps, "utc_now", skewed)
    with pgdb.advisory_lock("clock", ttl_s=30) as lease:
        with pgdb.read_transaction() as conn:
            server_now = conn.execute("SELECT now()").fetchone()[0]
        remaining = parse_ts(lease.expires_at) - parse_ts(server_now)
        assert timedelta(seconds=0) < remaining <= timedelta(seconds=30)


def test_timestamps_read_back_in_the_stored_text_format(pgdb: Any) -> None:
    with pgdb.read_transaction() as conn:
        value = conn.execute("SELECT timestamptz '2026-01-02 03:04:05.5+02'").fetchone()[0]
    assert value == "2026-01-02T01:04:05.500000Z"


def test_get_db_opens_postgresql_when_mcp_db_url_is_set(pg_url: str, monkeypatch) -> None:
    monkeypatch.setenv("MCP_DB_URL", pg_url)
    try:
        db = get_db()
        assert db.backend == "postgresql" and get_db() is db
        assert [m.version for m in db.migration_history()][:3] == [
            "0001_advisory_locks",
            "0002_agent_hq",
            "0003_local_agents",
        ]
    finally:
        close_db()


def test_settings_select_postgresql_and_never_show_the_password() -> None:
    url = "postgresql://app:S3cretPassw0rd@db.internal:5432/hq"
    s = Settings.from_env({"MCP_DB_URL": url, "MCP_DB_POOL_MIN": "2", "MCP_DB_POOL_MAX": "20"})
    assert s.db_url == url and (s.pool_min, s.pool_max) == (2, 20)
    assert "S3cret" not in repr(s)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MCP_DB_URL": "mysql://app:S3cretPassw0rd@db/hq"})
    assert "S3cret" not in str(info.value) and "***@" in str(info.value)


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("MCP_DB_POOL_MIN", "-1", "an integer from 0 to 100"),
        ("MCP_DB_POOL_MAX", "0", "an integer from 1 to 1000"),
        ("MCP_DB_POOL_MAX", "many", "an integer from 1 to 1000"),
        ("MCP_DB_POOL_MAX_LIFETIME_S", "5", "from 60 to"),
        ("MCP_DB_POOL_TIMEOUT_S", "nan", "from 0.1 to 3600"),
        ("MCP_DB_CONNECT_TIMEOUT_S", "0", "from 1 to 600"),
    ],
)
def test_pool_settings_are_range_checked(name: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value) and allowed in str(info.value)


def test_pool_max_below_pool_min_is_refused() -> None:
    with pytest.raises(ConfigError, match="MCP_DB_POOL_MAX.*>= MCP_DB_POOL_MIN"):
        Settings.from_env({"MCP_DB_POOL_MIN": "5", "MCP_DB_POOL_MAX": "2"})


def test_without_the_driver_mcp_db_url_fails_with_one_line_naming_the_extra(pg_url: str) -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "from icn_mcp.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "db", "status"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "MCP_DB_URL": pg_url},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'icn-mcp[postgres]'" in lines[0], result.stderr


def test_cli_migrates_and_reports_on_postgresql(pg_url: str) -> None:
    env = {"MCP_DB_URL": pg_url}
    first = run_cli("db", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_advisory_locks" in first.stdout and "is up to date" in first.stdout
    status = run_cli("db", "status", env=env)
    assert status.returncode == 0 and "0 pending" in status.stdout
    verify = run_cli("db", "verify", env=env)
    assert verify.returncode == 0 and "checksums" in verify.stdout
    info = run_cli("db", "info", env=env)
    assert info.returncode == 0 and "PostgreSQL" in info.stdout and "agents" in info.stdout


def test_agent_commands_act_on_postgresql_never_on_a_local_file(pg_url: str, tmp_path: Path) -> None:
    import json

    env = {"MCP_DB_URL": pg_url, "MCP_DB_DIR": str(tmp_path / "var")}
    registered = run_cli("agent", "register", "ops-bot", "--kind", "ops", "--json", env=env)
    assert registered.returncode == 0, registered.stderr
    token = json.loads(registered.stdout)["token"]
    refused = run_cli("agent", "--db", str(tmp_path / "x.sqlite"), "register", "x", "--kind", "ops", env=env)
    assert refused.returncode == 2 and "MCP_DB_URL selects PostgreSQL" in refused.stderr
    revoked = run_cli("agent", "revoke-tokens", "--all", "--yes", env=env)
    assert revoked.returncode == 0 and "revoked 1 agent token(s)" in revoked.stdout, revoked.stderr
    import psycopg

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT token_hash, revoked_at IS NOT NULL FROM agent_tokens").fetchall()
    assert len(rows) == 1 and rows[0][1] is True and token not in rows[0][0]
    assert not (tmp_path / "var").exists() and not (tmp_path / "x.sqlite").exists()


# -- migrations: PostgreSQL's own parts -----------------------------------------------


def test_a_no_transaction_migration_runs_create_index_concurrently(pg_url: str, migrations_dir) -> None:
    from icn_mcp.db.postgres import PostgresDatabase
    from tests.helpers import write_migration

    write_migration(migrations_dir, "0001_things.sql", "CREATE TABLE things (id INTEGER, name TEXT);\n")
    write_migration(
        migrations_dir,
        "0002_index.sql",
        "-- icn-mcp: no-transaction\nCREATE INDEX CONCURRENTLY things_name ON things (name);\n",
    )
    db = PostgresDatabase(pg_url, migrations_dir=migrations_dir, migrate=False)
    try:
        results = db.dry_run_migrations()
        assert [(r.version, r.ok, r.skipped) for r in results] == [
            ("0001_things", True, False),
            ("0002_index", False, True),
        ]
        assert db.migrate() == ["0001_things", "0002_index"]
        with db.read_transaction() as conn:
            valid = conn.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = 'things_name'"
            ).fetchone()
        assert valid == (True,)
        assert [m.version for m in db.migration_history()] == ["0001_things", "0002_index"]
    finally:
        db.close()


def test_statements_split_at_top_level_semicolons_only() -> None:
    from icn_mcp.db.postgres.migrations import split_statements

    text = (
        "-- a comment; not a statement\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;\n"
        "INSERT INTO t VALUES ('a;b', \"c;d\", $$e;f$$); /* g; h */\n"
        "\n"
        "SELECT 'it''s; fine';\n"
    )
    statements = split_statements(text)
    assert [s.line for s in statements] == [2, 3, 5]
    assert statements[0].sql.endswith("END $body$;") and "'a;b'" in statements[1].sql
    with pytest.raises(ValueError, match="line 1"):
        split_statements("SELECT 1")


def test_a_migration_run_waits_for_the_lock_and_names_its_holder(pg_url: str) -> None:
    import psycopg

    from icn_mcp.db.postgres import migrations as pgm
    from icn_mcp.errors import MigrationError

    with psycopg.connect(pg_url, autocommit=True) as holder, psycopg.connect(pg_url, autocommit=True) as conn:
        holder.execute("SET application_name = 'other-migrator'")
        holder.execute("SELECT pg_advisory_lock(%s)", (pgm.MIGRATION_LOCK_KEY,))
        with pytest.raises(MigrationError, match="other-migrator"):
            pgm.apply(conn, [], psycopg, lock_wait_s=0.2)
        holder.execute("SELECT pg_advisory_unlock(%s)", (pgm.MIGRATION_LOCK_KEY,))
        assert pgm.apply(conn, [], psycopg, lock_wait_s=5) == []


def test_read_committed_is_available_for_statement_level_work_and_bad_levels_are_refused(pgdb: Any) -> None:
    from icn_mcp.errors import DatabaseError

    level = pgdb.run_in_transaction(
        lambda c: c.execute("SHOW transaction_isolation").fetchone()[0], isolation="read committed"
    )
    assert level == "read committed"
    assert pgdb.run_in_transaction(lambda c: c.execute("SHOW transaction_isolation").fetchone()[0]) == "serializable"
    with pytest.raises(DatabaseError, match="isolation='chaos' is not valid"):
        pgdb.run_in_transaction(lambda c: None, isolation="chaos")


def _kill_when_running(admin: str, marker: str) -> threading.Thread:
    """A thread that terminates the backend running a statement containing ``marker``."""
    import psycopg

    def kill() -> None:
        with psycopg.connect(admin, autocommit=True) as killer:
            for _ in range(3000):
                row = killer.execute(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
                    (f"%{marker}%",),
                ).fetchone()
                if row:
                    killer.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    return
                time.sleep(0.01)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_run_statement_commits_one_statement_and_never_reruns_one_lost_in_flight(pgdb: Any) -> None:
    assert pgdb.run_statement(_increment) == 1
    assert _count(pgdb) == 1
    calls: list[int] = []

    def slow_increment(conn: Any) -> None:
        calls.append(1)
        conn.execute(
            "WITH pause AS (SELECT pg_sleep(30) AS slept_in_run_statement) "
            "UPDATE counter SET n = n + 1 FROM pause WHERE id = 1"
        )

    killer = _kill_when_running(pg.admin_url() or "", "slept_in_run_statement")
    with pytest.raises(CommitUnknown):
        pgdb.run_statement(slow_increment)
    killer.join(60)
    assert len(calls) == 1 and pgdb.get_stats()["commit_unknown"] == 1
    assert _count(pgdb) == 1  # here it had not committed; the caller could not know


def test_a_connection_that_dies_under_a_read_is_database_unavailable(pgdb: Any, pg_url: str) -> None:
    """Not a raw driver error (an HTTP 500): the same DatabaseUnavailable (503) as when no
    connection can be had; the next read works on a new connection."""
    from icn_mcp.errors import DatabaseUnavailable

    admin = pg.admin_url()
    assert admin is not None
    with pytest.raises(DatabaseUnavailable, match="is unavailable"):
        with pgdb.read_transaction() as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            import psycopg

            with psycopg.connect(admin, autocommit=True) as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.execute("SELECT n FROM counter")
    with pgdb.read_transaction() as conn:
        assert conn.execute("SELECT n FROM counter").fetchone() == (0,)


def test_a_pooled_connection_terminated_while_idle_is_replaced_before_use(pgdb: Any, pg_url: str) -> None:
    """The pre-use check sends nothing to a live connection, and finds a dead one."""
    pgdb.run_in_transaction(_increment)
    admin = pg.admin_url()
    assert admin is not None
    assert pg.terminate_backends(admin, pg_url) >= 1
    time.sleep(0.2)  # the backends are gone (their sockets say so) before the next use
    lost_before = pgdb.get_stats()["connection_retries"]
    for _ in range(5):
        pgdb.run_in_transaction(_increment)
    assert _count(pgdb) == 6
    stats = pgdb.get_stats()
    assert stats["reconnects"] >= 1  # found by the check...
    assert stats["connection_retries"] == lost_before  # ...so no transaction failed on one


def test_timestamps_read_back_the_same_in_any_session_time_zone(pgdb: Any) -> None:
    """UTC text is rewritten directly; any other zone goes through a datetime."""
    with pgdb.connection() as conn:
        for zone in ("UTC", "Asia/Kolkata", "America/St_Johns"):
            conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
            got = conn.execute(
                "SELECT '2026-01-02 03:04:05.5+00'::timestamptz, '2026-01-02 03:04:05+00'::timestamptz, "
                "'2026-01-02 03:04:05.000001+00'::timestamptz"
            ).fetchone()
            assert got == ("2026-01-02T03:04:05.500000Z", "2026-01-02T03:04:05.000000Z", "2026-01-02T03:04:05.000001Z")
        conn.execute("RESET TimeZone")
