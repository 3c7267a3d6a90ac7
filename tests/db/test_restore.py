"""restore_from_backup: refuses bad files untouched, restores under open connections,
keeps a safety copy and brings the schema up to date."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.db.sqlite import backup as backup_module
from icn_mcp.db.sqlite.backup import SAFETY_BACKUP_PREFIX, manifest_path
from icn_mcp.errors import RestoreError
from tests.helpers import shipped_versions
from tests.db.backup_support import WRITER_SCRIPT, copy_migrations, file_state, make_db


@pytest.fixture
def db(tmp_path):
    database = make_db(tmp_path / "live" / "icn-mcp.sqlite", rows=200)
    yield database
    database.close()


def _count(db: Database) -> int:
    return db.connection().execute("SELECT count(*) FROM numbers").fetchone()[0]


def _corrupt(path: Path) -> None:
    """Overwrite pages 3.. of a backup with garbage b-tree pages."""
    data = bytearray(path.read_bytes())
    for offset in range(2 * 4096, len(data) - 4096, 4096 * 3):
        data[offset : offset + 4096] = bytes([0x0D, 0xFF, 0xFF]) + os.urandom(4093)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2 + 100)


def _text(path: Path) -> None:
    path.write_text("this is not a database\n" * 500)


@pytest.mark.parametrize("damage, expected", [(_corrupt, "integrity"), (_truncate, "truncated"), (_text, "not an SQLite")])
@pytest.mark.parametrize("with_manifest", [False, True])
def test_bad_backup_is_refused_and_the_live_database_is_unchanged(db, tmp_path, damage, expected, with_manifest):
    backup = Path(db.create_backup(tmp_path / "b.sqlite").path)
    if not with_manifest:
        manifest_path(backup).unlink()
    damage(backup)
    with db.write_transaction() as conn:  # the live database now differs from the backup
        conn.execute("DELETE FROM numbers WHERE n > 100")
    before = file_state(db.path)
    with pytest.raises(RestoreError) as info:
        db.restore_from_backup(backup)
    assert info.value.path == str(backup)
    assert expected in str(info.value) or (with_manifest and "SHA-256" in str(info.value))
    assert "not changed" in (info.value.hint or "")
    assert file_state(db.path) == before
    assert _count(db) == 100
    assert not (db.path.parent / "backups").exists(), "no safety backup for a refused restore"


def test_verify_reports_each_problem(db, tmp_path):
    backup = Path(db.create_backup(tmp_path / "b.sqlite").path)
    good = db.verify_backup(backup)
    assert good.ok and good.integrity == "ok" and good.manifest_ok and good.row_counts["numbers"] == 200
    assert set(good.to_dict()) >= {"path", "ok", "problems", "integrity", "manifest_ok", "sha256", "latest_migration"}
    with open(backup, "r+b") as fh:  # flip one byte of row data: only the hash can tell
        fh.seek(-10, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-10, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    flipped = db.verify_backup(backup)
    assert not flipped.ok and flipped.manifest_ok is False and "SHA-256" in flipped.problems[0]
    missing = db.verify_backup(tmp_path / "nope.sqlite")
    assert not missing.ok and "does not exist" in missing.problems[0]


def test_newer_schema_backup_is_refused(tmp_path):
    newer_dir = copy_migrations(tmp_path / "newer")
    (newer_dir / "9001_newer.sql").write_text("CREATE TABLE newer (id INTEGER PRIMARY KEY);\n")
    with make_db(tmp_path / "new" / "db.sqlite", rows=5, migrations_dir=newer_dir) as newer:
        backup = newer.create_backup(tmp_path / "newer.sqlite").path
    with make_db(tmp_path / "old" / "db.sqlite", rows=7) as old:
        before = file_state(old.path)
        with pytest.raises(RestoreError) as info:
            old.restore_from_backup(backup)
        assert "9001_newer" in str(info.value) and "newer schema" in str(info.value)
        assert "upgrade" in info.value.hint
        assert file_state(old.path) == before


def test_restore_of_an_older_backup_applies_the_newer_migration(tmp_path):
    migrations = copy_migrations(tmp_path / "migrations")
    with make_db(tmp_path / "db.sqlite", rows=10, migrations_dir=migrations) as db:
        backup = db.create_backup().path
    (migrations / "9001_extra.sql").write_text("CREATE TABLE extra (id INTEGER PRIMARY KEY);\n")
    with Database(tmp_path / "db.sqlite", migrations_dir=migrations) as db:  # applies 0002
        with db.write_transaction() as conn:
            conn.execute("INSERT INTO extra (id) VALUES (1)")
            conn.execute("DELETE FROM numbers")
        result = db.restore_from_backup(backup)
        assert result.migrations_applied == ["9001_extra"]
        assert result.latest_migration == "9001_extra"
        assert result.row_counts["numbers"] == 10 and result.row_counts["extra"] == 0
        assert [m.version for m in db.migration_history()] == shipped_versions() + ["9001_extra"]


def test_restore_keeps_a_safety_backup_and_reports(db, tmp_path):
    backup = db.create_backup(tmp_path / "b.sqlite")
    with db.write_transaction() as conn:
        conn.execute("DELETE FROM numbers WHERE n > 50")
    result = db.restore_from_backup(backup.path)
    assert _count(db) == 200
    assert result.backup_created_at == backup.created_at
    assert result.row_counts["numbers"] == 200 and result.integrity == "ok"
    safety = Path(result.safety_backup_path)
    assert safety.name.startswith(SAFETY_BACKUP_PREFIX) and safety.parent == db.path.parent / "backups"
    with Database(safety, migrate=False) as old:  # the safety copy holds what was replaced
        assert _count(old) == 50
    assert set(result.to_dict()) == {
        "database", "backup_path", "safety_backup_path", "backup_created_at",
        "latest_migration", "migrations_applied", "row_counts", "integrity", "elapsed_s",
    }


READER_SCRIPT = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
print(conn.execute("SELECT count(*) FROM numbers").fetchone()[0], flush=True)
sys.stdin.readline()  # the parent restores meanwhile; this connection stays open
print(conn.execute("SELECT count(*) FROM numbers").fetchone()[0], flush=True)
print(conn.execute("PRAGMA integrity_check").fetchone()[0], flush=True)
"""


@pytest.mark.slow
def test_restore_while_another_process_holds_a_connection(db, tmp_path):
    backup = db.create_backup(tmp_path / "b.sqlite").path
    with db.write_transaction() as conn:
        conn.executemany("INSERT INTO numbers (n) VALUES (?)", [(i,) for i in range(201, 301)])
    reader = subprocess.Popen(
        [sys.executable, "-c", READER_SCRIPT, str(db.path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "300"
        db.restore_from_backup(backup)
        out, _ = reader.communicate("go\n", timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert out.split() == ["200", "ok"]
    assert _count(db) == 200
    assert db.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_restore_into_itself_is_refused(db):
    with pytest.raises(RestoreError):
        db.restore_from_backup(db.path)


def test_restore_async(db, tmp_path):
    import asyncio

    backup = db.create_backup(tmp_path / "b.sqlite").path
    result = asyncio.run(db.restore_from_backup_async(backup))
    assert result.row_counts["numbers"] == 200


# -- no acknowledged write is lost (the safety copy and the replacement are taken
# under ONE hold of the live write lock) ----------------------------------------------


def _numbers(path: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [n for (n,) in conn.execute("SELECT n FROM numbers ORDER BY n")]
    finally:
        conn.close()


def test_a_commit_right_after_the_safety_snapshot_is_not_lost(db, tmp_path, monkeypatch):
    """The reviewer's gap, made deterministic: another Database commits a row right
    after the safety snapshot is taken (hooked where the snapshot's copy ends). It
    must end up in the safety copy or in the restored database, never in neither.
    Before the fix the row was committed and acknowledged, then overwritten."""
    backup = db.create_backup(tmp_path / "b.sqlite").path  # rows 1..200
    other = Database(db.path)  # stands for another process
    go, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def commit_when_told():
        try:
            other.connection()  # open before the restore, like a running server
            go.wait(30)
            other.run_in_transaction(lambda c: c.execute("INSERT INTO numbers (n) VALUES (1000)"))
            done.set()  # acknowledged
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=commit_when_told)
    thread.start()
    real_exit = backup_module._CopyMonitor.__exit__

    def after_snapshot(self, *exc):
        real_exit(self, *exc)
        go.set()
        done.wait(1.0)  # the old code let it commit here; now it waits on our lock

    monkeypatch.setattr(backup_module._CopyMonitor, "__exit__", after_snapshot)
    try:
        result = db.restore_from_backup(backup)
    finally:
        go.set()
        thread.join(60)
        other.close()
    assert not errors and done.is_set(), errors
    in_safety = 1000 in _numbers(Path(result.safety_backup_path))
    in_live = 1000 in _numbers(db.path)
    assert in_safety or in_live, "an acknowledged commit is in neither the safety copy nor the restored database"
    assert in_live and not in_safety  # it waited for the restore, then committed into its result
    assert _numbers(db.path) == list(range(1, 201)) + [1000]


@pytest.mark.slow
def test_restore_while_a_writer_process_commits_loses_no_acknowledged_row(tmp_path):
    """A writer PROCESS commits rows 1, 2, 3, ... (one transaction each) during the
    restore of a backup holding none of them. Every row it committed (all of 1..N:
    it stops at the first error) is in the safety copy or in the restored database;
    the two split the sequence exactly: 1..k before the restore, k+1..N after."""
    db = make_db(tmp_path / "live" / "icn-mcp.sqlite", rows=0)
    try:
        backup = db.create_backup(tmp_path / "empty.sqlite").path
        ready, stop = tmp_path / "ready", tmp_path / "stop"
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(db.path), str(ready), str(stop)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                assert writer.poll() is None, writer.communicate()
                assert time.monotonic() < deadline, "the writer never got going"
                time.sleep(0.01)
            results = [db.restore_from_backup(backup) for _ in range(3)]
            time.sleep(0.2)  # let it commit into the restored database
            stop.touch()
            out, err = writer.communicate(timeout=60)
        finally:
            if writer.poll() is None:
                writer.kill()
        assert writer.returncode == 0, err  # no error escaped the writer's busy timeout
        committed = int(out.strip())
        live = _numbers(db.path)
        seen: set[int] = set(live)
        previous_end = 0
        for result in results:
            safety = _numbers(Path(result.safety_backup_path))
            # Each safety copy holds exactly what the restore replaced: the rows
            # committed since the previous restore (or since the start).
            assert safety == list(range(previous_end + 1, previous_end + 1 + len(safety))), "gap in a safety copy"
            previous_end += len(safety)
            seen |= set(safety)
        assert live == list(range(previous_end + 1, committed + 1)), "restored database is not the rest"
        assert seen == set(range(1, committed + 1)), "acknowledged rows were lost"
        assert committed > previous_end > 200
    finally:
        db.close()


def test_restore_copies_rowids_sequences_triggers_and_views_faithfully(db, tmp_path):
    with db.write_transaction() as conn:
        conn.execute("CREATE TABLE plain (x TEXT)")  # rowid table, no INTEGER PRIMARY KEY
        conn.executemany("INSERT INTO plain (x) VALUES (?)", [(str(i),) for i in range(10)])
        conn.execute("DELETE FROM plain WHERE rowid IN (2, 5)")
        conn.execute("CREATE TABLE seq (id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
        conn.executemany("INSERT INTO seq (v) VALUES (?)", [(i,) for i in range(5)])
        conn.execute("DELETE FROM seq WHERE id = 5")  # sqlite_sequence stays at 5
        conn.execute("CREATE TABLE audit (what)")
        conn.execute("CREATE TRIGGER plain_ai AFTER INSERT ON plain BEGIN INSERT INTO audit VALUES (new.x); END")
        conn.execute("CREATE VIEW plain_v AS SELECT rowid AS r, x FROM plain")
        conn.execute('CREATE TABLE "we""ird" (k TEXT PRIMARY KEY, v) WITHOUT ROWID')
        conn.execute('INSERT INTO "we""ird" VALUES (\'a\', 1)')
        conn.execute("PRAGMA user_version = 7")
    backup = db.create_backup(tmp_path / "b.sqlite").path
    with db.write_transaction() as conn:
        conn.execute("DROP VIEW plain_v")
        conn.execute("DELETE FROM plain")
        conn.execute("INSERT INTO seq (v) VALUES ('later')")
        conn.execute("CREATE TABLE only_live (x)")
        conn.execute("PRAGMA user_version = 9")
    db.restore_from_backup(backup)
    conn = db.connection()
    assert [tuple(r) for r in conn.execute("SELECT rowid, x FROM plain")] == [
        (i + 1, str(i)) for i in range(10) if i + 1 not in (2, 5)
    ]
    assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'seq'").fetchone()[0] == 5
    assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 0, "no trigger fired during the copy"
    assert conn.execute("SELECT count(*) FROM plain_v").fetchone()[0] == 8
    assert conn.execute('SELECT v FROM "we""ird"').fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'only_live'").fetchone()[0] == 0
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
    conn.execute("INSERT INTO plain (x) VALUES ('new')")  # the trigger is back
    assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 1
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_backup_with_foreign_key_violations_is_refused_untouched(db, tmp_path):
    conn = db.connection()
    conn.execute("PRAGMA foreign_keys = OFF")
    with db.write_transaction() as c:
        c.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        c.execute("CREATE TABLE child (p INTEGER REFERENCES parent (id))")
        c.execute("INSERT INTO child VALUES (42)")  # no parent 42
    conn.execute("PRAGMA foreign_keys = ON")
    backup = db.create_backup(tmp_path / "b.sqlite").path
    with db.write_transaction() as c:
        c.execute("DELETE FROM child")
    before = file_state(db.path)
    with pytest.raises(RestoreError) as info:
        db.restore_from_backup(backup)
    assert "foreign key" in str(info.value) and "not changed" in info.value.hint
    assert file_state(db.path) == before
    assert not (db.path.parent / "backups").exists()


def test_backup_with_a_virtual_table_is_refused_untouched(db, tmp_path):
    try:
        with db.write_transaction() as c:
            c.execute("CREATE VIRTUAL TABLE search USING fts5(body)")
    except sqlite3.OperationalError as exc:
        pytest.skip(f"no fts5 in this SQLite: {exc}")
    backup = db.create_backup(tmp_path / "b.sqlite").path
    with db.write_transaction() as c:
        c.execute("DROP TABLE search")
    before = file_state(db.path)
    with pytest.raises(RestoreError) as info:
        db.restore_from_backup(backup)
    assert "'search' (virtual table)" in str(info.value) and "not changed" in info.value.hint
    assert file_state(db.path) == before
    assert not (db.path.parent / "backups").exists()


def test_backup_with_another_page_size_restores_into_a_wal_database(db, tmp_path):
    """The backup API could not change a WAL database's page size, so restores of
    such backups used to be refused; rows copied by SQL do not care."""
    other_path = tmp_path / "other" / "db.sqlite"
    other_path.parent.mkdir()
    raw = sqlite3.connect(other_path)
    raw.execute("PRAGMA page_size = 8192")
    raw.execute("VACUUM")
    raw.close()
    with make_db(other_path, rows=5) as other:
        assert other.connection().execute("PRAGMA page_size").fetchone()[0] == 8192
        backup = other.create_backup(tmp_path / "b.sqlite").path
    assert db.connection().execute("PRAGMA page_size").fetchone()[0] == 4096
    result = db.restore_from_backup(backup)
    assert _count(db) == 5 and result.integrity == "ok"
