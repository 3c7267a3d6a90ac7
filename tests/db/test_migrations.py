"""Guarantee 2: migrations are atomic, checksummed, applied exactly once, failures logged."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.db.sqlite.migrations import discover, plan
from icn_mcp.errors import ChecksumMismatch, MigrationError
from tests.helpers import run_worker, write_migration

FAILING_THIRD = """\
CREATE TABLE first_table (id INTEGER PRIMARY KEY);
INSERT INTO first_table (id) VALUES (1);
INSERT INTO no_such_table (id) VALUES (1);
CREATE TABLE fourth_table (id INTEGER PRIMARY KEY);
"""


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_failing_third_statement_leaves_no_trace_and_is_recorded(
    db_path: Path, migrations_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER PRIMARY KEY);\n")
    path = write_migration(migrations_dir, "0002_broken.sql", FAILING_THIRD)

    with caplog.at_level(logging.ERROR, logger="icn_mcp.db.migrations"):
        with pytest.raises(MigrationError) as info:
            Database(db_path, migrations_dir=migrations_dir)
    err = info.value
    assert err.version == "0002_broken"
    assert err.statement_index == 3
    assert err.line == 3
    assert "no such table: no_such_table" in (err.sqlite_error or "")
    assert "statement 3" in str(err) and "line 3" in str(err)
    # Logged with file, statement, line and SQLite's message.
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert str(path) in logged and "statement 3" in logged and "line 3" in logged
    assert "no such table" in logged

    tables = _tables(db_path)
    assert "base" in tables  # the migration before it is kept
    assert "first_table" not in tables  # no trace of statements 1 and 2
    conn = sqlite3.connect(db_path)
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    failures = conn.execute("SELECT version, statement_index, line, error FROM schema_migration_failures").fetchall()
    conn.close()
    assert versions == ["0001_base"]
    assert failures == [("0002_broken", 3, 3, "no such table: no_such_table")]

    # The operator sees it as failed.
    with Database(db_path, migrations_dir=migrations_dir, migrate=False) as db:
        states = {i.version: i.state for i in db.migration_plan().items}
        assert states == {"0001_base": "applied", "0002_broken": "failed"}

    # After fixing the file the next open applies it.
    path.write_text(
        FAILING_THIRD.replace("no_such_table", "first_table").replace("VALUES (1);\nCREATE", "VALUES (2);\nCREATE")
    )
    with Database(db_path, migrations_dir=migrations_dir) as db:
        assert [m.version for m in db.migration_history()] == ["0001_base", "0002_broken"]
        rows = db.connection().execute("SELECT id FROM first_table ORDER BY id").fetchall()
        assert [r[0] for r in rows] == [1, 2]
        assert db.migration_plan().failed == []


def test_tampered_applied_migration_stops_open(db_path: Path, migrations_dir: Path) -> None:
    path = write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    Database(db_path, migrations_dir=migrations_dir).close()
    stored = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text("CREATE TABLE base (id INTEGER, extra TEXT);\n")
    current = hashlib.sha256(path.read_bytes()).hexdigest()
    write_migration(migrations_dir, "0002_next.sql", "CREATE TABLE next_table (id INTEGER);\n")
    before = db_path.read_bytes()

    with pytest.raises(ChecksumMismatch) as info:
        Database(db_path, migrations_dir=migrations_dir)
    assert info.value.version == "0001_base"
    assert info.value.stored == stored and info.value.current == current
    assert stored in str(info.value) and current in str(info.value) and "0001_base" in str(info.value)
    assert "next_table" not in _tables(db_path)  # nothing else applied
    assert db_path.read_bytes() == before


def test_crlf_and_bom_do_not_count_as_a_change(db_path: Path, migrations_dir: Path) -> None:
    path = write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n-- end\n")
    Database(db_path, migrations_dir=migrations_dir).close()
    path.write_bytes(b"\xef\xbb\xbfCREATE TABLE base (id INTEGER);\r\n-- end\r\n")
    with Database(db_path, migrations_dir=migrations_dir) as db:
        assert [i.state for i in db.migration_plan().items] == ["applied"]


def test_eight_processes_open_a_fresh_database_at_once(db_path: Path, migrations_dir: Path, tmp_path: Path) -> None:
    for n in range(1, 6):
        write_migration(
            migrations_dir,
            f"{n:04d}_step_{n}.sql",
            f"CREATE TABLE IF NOT EXISTS applied_log (version TEXT);\n"
            f"INSERT INTO applied_log (version) VALUES ('{n:04d}_step_{n}');\n"
            f"CREATE TABLE t{n} (id INTEGER PRIMARY KEY);\n",
        )
    go = tmp_path / "go"
    procs = [run_worker("opener", db_path, migrations_dir, go) for _ in range(8)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    applied_by_process = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        applied_by_process.append([v for v in out.strip().split(",") if v])
    every = [v for applied in applied_by_process for v in applied]
    expected = [f"{n:04d}_step_{n}" for n in range(1, 6)]
    assert sorted(every) == expected  # each applied by exactly one process
    conn = sqlite3.connect(db_path)
    history = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    log_rows = [r[0] for r in conn.execute("SELECT version FROM applied_log ORDER BY version")]
    conn.close()
    assert history == expected
    assert log_rows == expected


def test_missing_applied_file_is_refused_unless_allowed(db_path: Path, migrations_dir: Path) -> None:
    path = write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    write_migration(migrations_dir, "0002_more.sql", "CREATE TABLE more (id INTEGER);\n")
    Database(db_path, migrations_dir=migrations_dir).close()
    path.unlink()
    with pytest.raises(MigrationError, match="0001_base is recorded as applied but its file is missing"):
        Database(db_path, migrations_dir=migrations_dir)
    with Database(db_path, migrations_dir=migrations_dir, allow_missing_migrations=True) as db:
        assert [i.state for i in db.migration_plan().items] == ["missing", "applied"]


def test_new_file_sorting_before_latest_applied_is_refused_unless_allowed(db_path: Path, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    write_migration(migrations_dir, "0003_later.sql", "CREATE TABLE later (id INTEGER);\n")
    Database(db_path, migrations_dir=migrations_dir).close()
    write_migration(migrations_dir, "0002_between.sql", "CREATE TABLE between_t (id INTEGER);\n")
    with pytest.raises(MigrationError, match="0002_between is new but sorts before"):
        Database(db_path, migrations_dir=migrations_dir)
    assert "between_t" not in _tables(db_path)
    with Database(db_path, migrations_dir=migrations_dir, allow_out_of_order_migrations=True) as db:
        assert "between_t" in _tables(db_path)
        assert [m.version for m in db.migration_history()] == ["0001_base", "0002_between", "0003_later"]


@pytest.mark.parametrize(
    "statement",
    [
        "VACUUM;",
        "PRAGMA journal_mode = DELETE;",
        "PRAGMA main.foreign_keys = OFF;",
        "COMMIT;",
        "BEGIN TRANSACTION;",
        "ATTACH DATABASE 'x.db' AS x;",
    ],
)
def test_statement_that_cannot_run_in_a_transaction_is_refused(
    db_path: Path, migrations_dir: Path, statement: str
) -> None:
    write_migration(migrations_dir, "0001_bad.sql", f"CREATE TABLE t (id INTEGER);\n-- why\n{statement}\n")
    with pytest.raises(MigrationError) as info:
        Database(db_path, migrations_dir=migrations_dir)
    assert "cannot run inside the migration's transaction" in str(info.value)
    assert info.value.line == 3 and info.value.statement_index == 2
    assert "no-transaction" in (info.value.hint or "")
    assert "t" not in _tables(db_path)


def test_no_transaction_marker_allows_vacuum(db_path: Path, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    write_migration(migrations_dir, "0002_vacuum.sql", "-- icn-mcp: no-transaction\nVACUUM;\n")
    with Database(db_path, migrations_dir=migrations_dir) as db:
        assert [m.version for m in db.migration_history()] == ["0001_base", "0002_vacuum"]
        assert db.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_dry_run_reports_and_rolls_back(db_path: Path, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    Database(db_path, migrations_dir=migrations_dir).close()
    write_migration(migrations_dir, "0002_good.sql", "CREATE TABLE good (id INTEGER);\nINSERT INTO good VALUES (1);\n")
    write_migration(migrations_dir, "0003_bad.sql", "INSERT INTO nowhere VALUES (1);\n")
    write_migration(migrations_dir, "0004_after.sql", "CREATE TABLE after_t (id INTEGER);\n")
    with Database(db_path, migrations_dir=migrations_dir, migrate=False) as db:
        results = db.dry_run_migrations()
        assert [(r.version, r.ok, r.skipped) for r in results] == [
            ("0002_good", True, False),
            ("0003_bad", False, False),
            ("0004_after", False, True),
        ]
        assert "no such table: nowhere" in (results[1].error or "")
        assert [m.version for m in db.migration_history()] == ["0001_base"]
    assert _tables(db_path) & {"good", "after_t"} == set()


def test_dry_run_reports_a_statement_that_cannot_run_in_a_transaction(db_path: Path, migrations_dir: Path) -> None:
    """Reported as that file's failure, like any other: not raised out of the dry run."""
    write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    Database(db_path, migrations_dir=migrations_dir).close()
    write_migration(migrations_dir, "0002_vacuum.sql", "CREATE TABLE v (id INTEGER);\nVACUUM;\n")
    write_migration(migrations_dir, "0003_after.sql", "CREATE TABLE after_t (id INTEGER);\n")
    with Database(db_path, migrations_dir=migrations_dir, migrate=False) as db:
        results = db.dry_run_migrations()
    assert [(r.version, r.ok, r.skipped) for r in results] == [
        ("0002_vacuum", False, False),
        ("0003_after", False, True),
    ]
    assert "cannot run inside the migration's transaction" in (results[0].error or "")
    assert _tables(db_path) & {"v", "after_t"} == set()


def test_typescript_era_history_table_is_upgraded_in_place(db_path: Path, migrations_dir: Path) -> None:
    sql = "CREATE TABLE base (id INTEGER);\n"
    write_migration(migrations_dir, "0001_base.sql", sql)
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.executescript(
        "CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, "
        "applied_at TEXT DEFAULT CURRENT_TIMESTAMP, checksum TEXT NOT NULL);\n" + sql
    )
    conn.execute(
        "INSERT INTO schema_migrations (version, checksum) VALUES (?, ?)",
        ("0001_base", hashlib.sha256(sql.encode()).hexdigest()),
    )
    conn.commit()
    conn.close()
    write_migration(migrations_dir, "0002_next.sql", "CREATE TABLE next_t (id INTEGER);\n")
    with Database(db_path, migrations_dir=migrations_dir) as db:
        history = db.migration_history()
    assert [m.version for m in history] == ["0001_base", "0002_next"]
    assert history[1].execution_ms is not None and history[1].applied_by
    assert history[0].checksum_algorithm == "sha256"


def test_history_records_when_how_long_and_by_whom(db_path: Path) -> None:
    before = time.time()
    with Database(db_path) as db:
        (first,) = db.migration_history()[:1]
    assert first.version == "0001_advisory_locks"
    assert first.applied_at.endswith("Z") and first.applied_by and ":" in first.applied_by
    assert first.execution_ms is not None and first.execution_ms >= 0
    assert time.mktime(time.strptime(first.applied_at[:19], "%Y-%m-%dT%H:%M:%S")) >= before - 86400


def test_reopening_applies_nothing_twice(db_path: Path, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    with Database(db_path, migrations_dir=migrations_dir) as db:
        assert db.migrate() == []
    with Database(db_path, migrations_dir=migrations_dir) as db:
        assert db.migrate() == []
        assert len(db.migration_history()) == 1


@pytest.mark.parametrize(
    "name, message",
    [("init.sql", "does not match NNNN_description.sql"), ("0001-init.sql", "does not match")],
)
def test_badly_named_files_are_refused(migrations_dir: Path, name: str, message: str) -> None:
    write_migration(migrations_dir, name, "SELECT 1;\n")
    with pytest.raises(MigrationError, match=message):
        discover(migrations_dir)


def test_mixed_number_widths_are_refused(migrations_dir: Path) -> None:
    write_migration(migrations_dir, "002_a.sql", "SELECT 1;\n")
    write_migration(migrations_dir, "0010_b.sql", "SELECT 1;\n")
    with pytest.raises(MigrationError, match="different widths"):
        discover(migrations_dir)


def test_non_sql_files_are_ignored_and_invalid_utf8_refused(migrations_dir: Path) -> None:
    (migrations_dir / "README.md").write_text("notes")
    write_migration(migrations_dir, "0001_a.sql", "SELECT 1;\n")
    assert [m.version for m in discover(migrations_dir)] == ["0001_a"]
    (migrations_dir / "0002_b.sql").write_bytes(b"SELECT '\xff';\n")
    with pytest.raises(MigrationError, match="not valid UTF-8"):
        discover(migrations_dir)


def test_missing_migrations_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist"):
        Database(tmp_path / "db.sqlite", migrations_dir=tmp_path / "nowhere")


def test_plan_on_an_empty_database_lists_everything_pending(migrations_dir: Path) -> None:
    write_migration(migrations_dir, "0001_a.sql", "SELECT 1;\n")
    conn = sqlite3.connect(":memory:")
    result = plan(conn, discover(migrations_dir))
    assert [(i.version, i.state) for i in result.items] == [("0001_a", "pending")]
    assert result.to_dict()["counts"] == {"applied": 0, "pending": 1, "changed": 0, "missing": 0, "failed": 0}


def test_failed_no_transaction_migration_keeps_no_history_row(db_path: Path, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    write_migration(
        migrations_dir,
        "0002_outside.sql",
        "-- icn-mcp: no-transaction\nCREATE TABLE kept (id INTEGER);\nINSERT INTO nope VALUES (1);\n",
    )
    with pytest.raises(MigrationError) as info:
        Database(db_path, migrations_dir=migrations_dir)
    assert "statements before the failing one were kept" in (info.value.hint or "")
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT version, success FROM schema_migrations").fetchall()
    conn.close()
    assert rows == [("0001_base", 1)]
    assert "kept" in _tables(db_path)  # honest: a no-transaction file is not atomic


def test_unfinished_no_transaction_migration_of_another_process_is_waited_for(
    db_path: Path, migrations_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icn_mcp.db.sqlite import migrations as migrations_module

    write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    Database(db_path, migrations_dir=migrations_dir).close()
    write_migration(migrations_dir, "0002_outside.sql", "-- icn-mcp: no-transaction\nVACUUM;\n")
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO schema_migrations (version, applied_at, checksum, applied_by, success) "
        "VALUES ('0002_outside', '2026-01-01T00:00:00.000000Z', 'x', 'otherhost:4242', 0)"
    )
    conn.commit()
    conn.close()
    monkeypatch.setattr(migrations_module, "NO_TRANSACTION_WAIT_S", 0.2)
    with pytest.raises(MigrationError, match="started by otherhost:4242 .* has not finished"):
        Database(db_path, migrations_dir=migrations_dir)


PARENT_CHILD = """\
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE child (id INTEGER PRIMARY KEY,
                    parent_id INTEGER NOT NULL REFERENCES parent (id) ON DELETE CASCADE);
INSERT INTO parent VALUES (1, 'p');
INSERT INTO child VALUES (10, 1);
"""

# SQLite's documented way to change a table: build the new one, copy, drop, rename.
REBUILD_PARENT = """\
CREATE TABLE parent_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '');
INSERT INTO parent_new (id, name) SELECT id, name FROM parent;
DROP TABLE parent;
ALTER TABLE parent_new RENAME TO parent;
"""


def test_a_table_rebuild_does_not_cascade_into_child_tables(db_path: Path, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "0001_tables.sql", PARENT_CHILD)
    Database(db_path, migrations_dir=migrations_dir).close()
    write_migration(migrations_dir, "0002_rebuild_parent.sql", REBUILD_PARENT)
    with Database(db_path, migrations_dir=migrations_dir) as db:
        conn = db.connection()
        assert [tuple(r) for r in conn.execute("SELECT id, parent_id FROM child")] == [(10, 1)]
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # back on after


def test_a_migration_leaving_dangling_references_is_refused_and_recorded(db_path: Path, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "0001_tables.sql", PARENT_CHILD)
    Database(db_path, migrations_dir=migrations_dir).close()
    write_migration(migrations_dir, "0002_orphan.sql", "INSERT INTO child VALUES (11, 99);\n")
    with pytest.raises(MigrationError, match="FOREIGN KEY check failed: 1 row"):
        Database(db_path, migrations_dir=migrations_dir)
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM child").fetchone()[0] == 1  # rolled back
    assert conn.execute("SELECT version FROM schema_migration_failures").fetchall() == [("0002_orphan",)]
    conn.close()
    with Database(db_path, migrations_dir=migrations_dir, migrate=False) as db:
        assert db.connection().execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert [r.version for r in db.dry_run_migrations() if not r.ok] == ["0002_orphan"]


def test_dry_run_reports_a_statement_that_ended_the_transaction_itself(db_path: Path, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "0001_base.sql", "CREATE TABLE u (x INTEGER UNIQUE);\n")
    Database(db_path, migrations_dir=migrations_dir).close()
    write_migration(
        migrations_dir, "0002_rollback.sql", "INSERT INTO u VALUES (1);\nINSERT OR ROLLBACK INTO u VALUES (1);\n"
    )
    with Database(db_path, migrations_dir=migrations_dir, migrate=False) as db:
        (result,) = db.dry_run_migrations()
        assert not result.ok and "UNIQUE constraint failed" in (result.error or "")
        assert not db.connection().in_transaction
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM u").fetchone()[0] == 0
    conn.close()
