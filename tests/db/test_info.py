"""get_database_info: stable keys, exact counts, odd table names, sizes, last backup."""

from __future__ import annotations

import asyncio
import json

import pytest

from icn_mcp.db.sqlite import info as info_module
from icn_mcp.db.sqlite.info import quote_identifier
from tests.db.backup_support import copy_migrations, make_db
from tests.helpers import run_cli, shipped_versions

ODD_NAMES = ['we"ird ta ble', "[brackets]", "semi;colon -- dash", "new\nline", "select", "ünïcødé 表", "'quoted'"]

KEYS = {
    "path",
    "size_bytes",
    "wal_size_bytes",
    "page_size",
    "page_count",
    "freelist_count",
    "journal_mode",
    "sqlite_version",
    "size_method",
    "tables",
    "indexes",
    "migrations",
    "failed_migrations",
    "last_backup",
    "backup_temp_files",
    "health",
    "elapsed_ms",
}


@pytest.fixture
def db(tmp_path):
    database = make_db(tmp_path / "icn-mcp.sqlite", rows=250)
    with database.write_transaction() as conn:
        for i, name in enumerate(ODD_NAMES):
            conn.execute(f"CREATE TABLE {quote_identifier(name)} (x)")
            conn.executemany(f"INSERT INTO {quote_identifier(name)} VALUES (?)", [(j,) for j in range(i + 1)])
            conn.execute(f"CREATE INDEX {quote_identifier(name + ' idx')} ON {quote_identifier(name)} (x)")
    yield database
    database.close()


def test_info_has_stable_keys_and_exact_counts_for_any_table_name(db):
    data = db.get_database_info()
    assert set(data) == KEYS
    counts = {t["name"]: t["row_count"] for t in data["tables"]}
    assert counts["numbers"] == 250
    for i, name in enumerate(ODD_NAMES):
        assert counts[name] == i + 1
    assert all(set(t) == {"name", "row_count", "size_bytes"} for t in data["tables"])
    assert data["size_method"] == "dbstat"
    assert all(t["size_bytes"] > 0 for t in data["tables"])
    indexes = {i["name"]: i for i in data["indexes"]}
    assert indexes['we"ird ta ble idx']["table"] == 'we"ird ta ble' and indexes['we"ird ta ble idx']["size_bytes"] > 0
    assert data["path"] == str(db.path) and data["journal_mode"] == "wal"
    assert data["page_count"] * data["page_size"] >= data["size_bytes"]
    assert [m["version"] for m in data["migrations"]] == shipped_versions()
    assert set(data["migrations"][0]) >= {"version", "checksum", "applied_at", "execution_ms"}
    assert data["health"]["ok"] is True and data["last_backup"] is None and data["backup_temp_files"] == []
    json.dumps(data)  # plain data


def test_sizes_are_estimated_without_dbstat(db, monkeypatch):
    monkeypatch.setattr(info_module, "_dbstat_sizes", lambda conn: None)
    data = db.get_database_info()
    assert data["size_method"] == "estimate"
    sizes = {t["name"]: t["size_bytes"] for t in data["tables"]}
    assert sizes["numbers"] > sizes["[brackets]"] > 0
    assert all(i["size_bytes"] is None for i in data["indexes"])


def test_last_backup_and_failed_migrations(tmp_path):
    migrations = copy_migrations(tmp_path / "migrations")
    (migrations / "9001_broken.sql").write_text("CREATE TABLE fine (x);\nSELECT * FROM nowhere;\n")
    with make_db(tmp_path / "db.sqlite", rows=3) as db:  # shipped migrations only
        made = db.create_backup()
        data = db.get_database_info()
        assert data["last_backup"] == {"path": made.path, "created_at": made.created_at, "size_bytes": made.size_bytes}
    from icn_mcp.db import Database
    from icn_mcp.errors import MigrationError

    with pytest.raises(MigrationError):
        Database(tmp_path / "db.sqlite", migrations_dir=migrations)
    with Database(tmp_path / "db.sqlite", migrations_dir=migrations, migrate=False) as db:
        failed = db.get_database_info()["failed_migrations"]
    assert [f["version"] for f in failed] == ["9001_broken"] and "nowhere" in failed[0]["error"]


def test_info_async(db):
    data = asyncio.run(db.get_database_info_async())
    assert {t["name"]: t["row_count"] for t in data["tables"]}["numbers"] == 250


def test_cli_info_json_counts_equal_real_counts(db, tmp_path):
    db.create_backup()
    result = run_cli("db", "--db", str(db.path), "info", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    conn = db.connection()
    real = {
        name: conn.execute(f"SELECT count(*) FROM {quote_identifier(name)}").fetchone()[0]
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite^_%' ESCAPE '^'"
        )
    }
    assert {t["name"]: t["row_count"] for t in data["tables"]} == real
    assert data["last_backup"]["path"].startswith(str(db.path.parent / "backups"))
    readable = run_cli("db", "--db", str(db.path), "info")
    assert readable.returncode == 0, readable.stderr
    assert 'we"ird ta ble' in readable.stdout and '"new\\nline"' in readable.stdout
    assert "0001_advisory_locks" in readable.stdout


def test_info_on_a_deleted_database_fails_and_does_not_recreate_it(db):
    from pathlib import Path

    from icn_mcp.errors import DatabaseError

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db.path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(DatabaseError) as info:
        db.get_database_info()
    assert str(db.path) in str(info.value) and "missing" in str(info.value)
    assert not db.path.exists()
