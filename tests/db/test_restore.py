"""restore_from_backup: refuses bad files untouched, restores under open connections,
keeps a safety copy and brings the schema up to date."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.db.backup import SAFETY_BACKUP_PREFIX, manifest_path
from icn_mcp.errors import RestoreError
from tests.helpers import shipped_versions
from tests.db.backup_support import copy_migrations, file_state, make_db


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
