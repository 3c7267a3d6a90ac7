"""`db migrate --dry-run` creates nothing and changes nothing (issue 9 item 16).

It created the database directory and file (and committed the history tables) before
rehearsing; a dry run must leave the filesystem exactly as it was.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from icn_mcp.db import Database
from tests.helpers import run_cli, shipped_versions, write_migration


def _tree(top: Path) -> dict[str, str]:
    """Every path under ``top`` with a hash of its content (directories as 'dir')."""
    return {
        str(p.relative_to(top)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(top.rglob("*"))
    }


def test_a_dry_run_on_a_missing_database_reports_and_creates_nothing(tmp_path: Path) -> None:
    env = {"MCP_DB_DIR": str(tmp_path / "new" / "var")}
    result = run_cli("db", "migrate", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "does not exist yet" in result.stdout
    for version in shipped_versions():
        assert f"would apply {version}" in result.stdout
    assert _tree(tmp_path) == {}  # no directory, no file


def test_a_dry_run_of_a_failing_migration_on_a_missing_database_reports_it(tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    migrations.mkdir()
    write_migration(migrations, "0001_ok.sql", "CREATE TABLE a (x);\n")
    write_migration(migrations, "0002_bad.sql", "INSERT INTO nope VALUES (1);\n")
    before = _tree(tmp_path)
    result = run_cli(
        "db", "--db", str(tmp_path / "var" / "db.sqlite"), "--migrations-dir", str(migrations), "migrate", "--dry-run"
    )
    assert result.returncode == 1
    assert "would apply 0001_ok" in result.stdout and "would FAIL  0002_bad" in result.stdout
    assert "no such table: nope" in result.stdout
    assert _tree(tmp_path) == before


def test_a_dry_run_on_an_existing_database_changes_nothing(tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    migrations.mkdir()
    write_migration(migrations, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    db = tmp_path / "var" / "db.sqlite"
    args = ("db", "--db", str(db), "--migrations-dir", str(migrations))
    assert run_cli(*args, "migrate").returncode == 0
    write_migration(migrations, "0002_more.sql", "CREATE TABLE more (id INTEGER);\n")
    before = _tree(tmp_path)
    result = run_cli(*args, "migrate", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["would apply 0002_more (1 statements)"]
    assert _tree(tmp_path) == before
    assert "0002_more  pending" in run_cli(*args, "status").stdout


def test_a_dry_run_does_not_commit_the_history_tables(tmp_path: Path) -> None:
    """A database from elsewhere, with no history tables yet: the rehearsal adds none."""
    path = tmp_path / "plain.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE notes (x)")
    conn.close()
    with Database(path, migrate=False) as db:
        results = db.dry_run_migrations()
        assert [r.version for r in results] == shipped_versions() and all(r.ok for r in results)
        tables = {row[0] for row in db.connection().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"notes"}


def test_a_dry_run_of_an_empty_file_says_it_is_not_a_database_and_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "hq.sqlite"
    path.write_bytes(b"")
    result = run_cli("db", "--db", str(path), "migrate", "--dry-run")
    assert result.returncode == 1 and "is not an SQLite database" in result.stderr
    assert _tree(tmp_path) == {"hq.sqlite": hashlib.sha256(b"").hexdigest()}
