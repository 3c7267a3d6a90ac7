"""restore_from_backup: refuses bad files untouched, restores under open connections,
keeps a safety copy and brings the schema up to date."""

from __future__ import annotations

import hashlib
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
from tests.db.backup_support import WRITER_SCRIPT, copy_migrations, file_state, make_db
from tests.helpers import shipped_versions


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


@pytest.mark.parametrize(
    "damage, expected", [(_corrupt, "integrity"), (_truncate, "truncated"), (_text, "not an SQLite")]
)
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
        "database",
        "backup_path",
        "safety_backup_path",
        "backup_created_at",
        "backup_latest_migration",
        "latest_migration",
        "migrations_applied",
        "row_counts",
        "integrity",
        "without_manifest",
        "database_created",
        "elapsed_s",
    }
    assert result.without_manifest is False and result.database_created is False


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
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
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
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
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


# -- issue 9: recovery on a fresh machine and the breaks found by review ---------------


def _backup_with_agent(tmp_path: Path, *, migrations_dir: Path | None = None, rows: int = 30):
    """A backup of a database holding ``rows`` numbers and one agent; (backup path, token)."""
    from icn_mcp.store import Store

    with make_db(tmp_path / "old" / "icn-mcp.sqlite", rows=rows, migrations_dir=migrations_dir) as old:
        token = Store(old).register_agent("planner-1", "planner").token if migrations_dir is None else None
        backup = old.create_backup(tmp_path / "b.sqlite").path
    return Path(backup), token


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_cli_restore_onto_a_machine_without_a_database(tmp_path, state):
    from icn_mcp.store import Store
    from tests.helpers import run_cli

    backup, token = _backup_with_agent(tmp_path)
    new = tmp_path / "new" / "var"
    if state == "empty":
        new.mkdir(parents=True)
    result = run_cli("db", "restore", str(backup), "--yes", env={"MCP_DB_DIR": str(new)})
    assert result.returncode == 0, result.stderr
    assert "no safety backup" in result.stdout and "did not exist" in result.stdout
    assert sorted(os.listdir(new)) == ["icn-mcp.sqlite"], "no backups/ dir, no -wal/-shm, no temp file"
    assert (new / "icn-mcp.sqlite").stat().st_mode & 0o777 == 0o600
    if state == "missing":
        assert new.stat().st_mode & 0o777 == 0o700 and new.parent.stat().st_mode & 0o777 == 0o700
    with Database(new / "icn-mcp.sqlite") as restored:
        assert [m.version for m in restored.migration_history()] == shipped_versions()
        assert _count(restored) == 30
        assert Store(restored).authenticate(token).name == "planner-1"
        assert restored.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_failed_restore_onto_a_fresh_machine_leaves_nothing_behind(tmp_path, state):
    from tests.helpers import run_cli

    bad = tmp_path / "text.sqlite"
    bad.write_text("this is not a database\n" * 100)
    new = tmp_path / "new" / "var"
    if state == "empty":
        new.mkdir(parents=True)
    result = run_cli("db", "restore", str(bad), "--yes", env={"MCP_DB_DIR": str(new)})
    assert result.returncode == 1 and "not an SQLite" in result.stderr and "Traceback" not in result.stderr
    if state == "missing":
        assert not (tmp_path / "new").exists(), "directories made for the restore are removed again"
    else:
        assert os.listdir(new) == []


def test_library_restore_into_a_database_file_that_is_gone(tmp_path):
    """Database.restore_from_backup when its file was deleted: created from the backup."""
    backup, token = _backup_with_agent(tmp_path)
    target = tmp_path / "live" / "icn-mcp.sqlite"
    with Database(target) as db:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        result = db.restore_from_backup(backup)
    assert result.safety_backup_path is None and result.row_counts["numbers"] == 30
    assert not (target.parent / "backups").exists()
    with Database(target) as restored:
        assert _count(restored) == 30


def test_a_backup_without_its_manifest_is_refused_unless_asked_for(db, tmp_path):
    backup = Path(db.create_backup(tmp_path / "b.sqlite").path)
    manifest_path(backup).unlink()
    with db.write_transaction() as conn:
        conn.execute("DELETE FROM numbers WHERE n > 10")
    before = file_state(db.path)
    with pytest.raises(RestoreError) as info:
        db.restore_from_backup(backup)
    assert str(manifest_path(backup)) in str(info.value) and "missing" in str(info.value)
    assert "--without-manifest" in (info.value.hint or "")
    assert file_state(db.path) == before and _count(db) == 10
    assert not (db.path.parent / "backups").exists(), "no safety backup for a refused restore"
    result = db.restore_from_backup(backup, without_manifest=True)
    assert result.without_manifest is True and _count(db) == 200
    with_manifest = db.restore_from_backup(db.create_backup(tmp_path / "c.sqlite").path)
    assert with_manifest.without_manifest is False


def test_cli_restore_without_manifest_says_so(tmp_path):
    from tests.helpers import run_cli

    make_db(tmp_path / "var" / "icn-mcp.sqlite", rows=5).close()
    env = {"MCP_DB_DIR": str(tmp_path / "var")}
    assert run_cli("db", "backup", str(tmp_path / "b.sqlite"), env=env).returncode == 0
    manifest_path(tmp_path / "b.sqlite").unlink()
    refused = run_cli("db", "restore", str(tmp_path / "b.sqlite"), "--yes", env=env)
    assert refused.returncode == 1 and "manifest" in refused.stderr and "--without-manifest" in refused.stderr
    done = run_cli("db", "restore", str(tmp_path / "b.sqlite"), "--yes", "--without-manifest", env=env)
    assert done.returncode == 0, done.stderr
    assert "WITHOUT its manifest" in done.stdout


def test_restore_reports_the_backups_own_latest_migration(tmp_path):
    """A backup at 0001 restored by code at 0003: both are reported, each as what it is."""
    from tests.helpers import run_cli

    versions = shipped_versions()
    old_migrations = copy_migrations(tmp_path / "old-migrations")
    for name in os.listdir(old_migrations):
        if not name.startswith(versions[0]):
            (old_migrations / name).unlink()
    with make_db(tmp_path / "old.sqlite", rows=7, migrations_dir=old_migrations) as old:
        backup = old.create_backup(tmp_path / "b.sqlite").path
    make_db(tmp_path / "var" / "icn-mcp.sqlite", rows=3).close()
    with Database(tmp_path / "var" / "icn-mcp.sqlite") as db:
        result = db.restore_from_backup(backup)
        assert result.backup_latest_migration == versions[0]
        assert result.latest_migration == versions[-1]
        assert result.migrations_applied == versions[1:]
    result = run_cli("db", "restore", backup, "--yes", env={"MCP_DB_DIR": str(tmp_path / "var")})
    assert result.returncode == 0, result.stderr
    assert f"latest migration {versions[0]}" in result.stdout
    assert f"now at {versions[-1]}" in result.stdout


SCHEMA_WATCHER = r"""
import os, sqlite3, sys
db, version, table, ready, stop = sys.argv[1:6]
conn = sqlite3.connect(db, isolation_level=None, timeout=60)
old = checks = 0
while not os.path.exists(stop):
    conn.execute("BEGIN")
    has_row = conn.execute("SELECT count(*) FROM schema_migrations WHERE version = ?", (version,)).fetchone()[0]
    has_table = conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = ?", (table,)).fetchone()[0]
    conn.execute("COMMIT")
    checks += 1
    old += not (has_row and has_table)
    if checks == 1:
        open(ready, "w").close()
print(old, checks)
"""


@pytest.mark.slow
def test_a_concurrent_reader_never_sees_the_old_schema_during_a_restore(tmp_path):
    """The migrations a backup lacks are applied before the restore commits."""
    migrations = copy_migrations(tmp_path / "migrations")
    with make_db(tmp_path / "old.sqlite", rows=20000, migrations_dir=migrations) as old:
        backup = old.create_backup(tmp_path / "b.sqlite").path
    (migrations / "9001_extra.sql").write_text("CREATE TABLE extra (id INTEGER PRIMARY KEY);\n")
    live = make_db(tmp_path / "live.sqlite", rows=5, migrations_dir=migrations)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    watcher = subprocess.Popen(
        [sys.executable, "-c", SCHEMA_WATCHER, str(live.path), "9001_extra", "extra", str(ready), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        while not ready.exists():
            assert watcher.poll() is None, "the watcher died"
            time.sleep(0.01)
        for _ in range(3):
            result = live.restore_from_backup(backup)
            assert result.migrations_applied == ["9001_extra"]
        stop.touch()
        out, _ = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
        live.close()
    old_seen, checks = map(int, out.split())
    assert checks > 1
    assert old_seen == 0, f"a reader saw the backup's old schema {old_seen} times in {checks} reads"


def test_a_failing_missing_migration_rolls_the_whole_restore_back(tmp_path):
    migrations = copy_migrations(tmp_path / "migrations")
    with make_db(tmp_path / "old.sqlite", rows=10, migrations_dir=migrations) as old:
        backup = old.create_backup(tmp_path / "b.sqlite").path
    (migrations / "9001_bad.sql").write_text(
        "CREATE TABLE extra (id INTEGER PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    live = make_db(tmp_path / "live.sqlite", rows=3, migrations_dir=copy_migrations(tmp_path / "m2"))
    live.close()
    with Database(live.path, migrations_dir=migrations, migrate=False) as db:
        before = file_state(db.path)
        with pytest.raises(RestoreError) as info:
            db.restore_from_backup(backup)
        assert "9001_bad" in str(info.value) and "no_such_table" in str(info.value)
        assert _count(db) == 3 and file_state(db.path)["db"] == before["db"]
        assert db.connection().execute("SELECT count(*) FROM sqlite_schema WHERE name = 'extra'").fetchone()[0] == 0


@pytest.mark.parametrize("source", ["backup", "verify"])
def test_verify_and_restore_of_a_wal_mode_file_write_nothing_beside_it(db, tmp_path, source):
    """A hand cp of a live WAL database: verification must not create -wal/-shm beside it."""
    import shutil

    db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = tmp_path / "hand" / "copy.sqlite"
    copy.parent.mkdir()
    shutil.copy(db.path, copy)
    assert copy.read_bytes()[18] == 2, "the copy's header says WAL"
    before = sorted(os.listdir(copy.parent)), copy.read_bytes()
    if source == "verify":
        assert db.verify_backup(copy).ok
    else:
        with db.write_transaction() as conn:
            conn.execute("DELETE FROM numbers")
        db.restore_from_backup(copy, without_manifest=True)
        assert _count(db) == 200
    assert (sorted(os.listdir(copy.parent)), copy.read_bytes()) == before


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 8 MiB tmpfs (needs root: mount); unmounted afterwards."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(directory: Path, leave_bytes: int) -> Path:
    filler = directory / "filler"
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))
    return filler


def test_restore_whose_commit_hits_a_full_disk_is_a_restore_error_and_changes_nothing(tmp_path, small_filesystem):
    with make_db(tmp_path / "big.sqlite", rows=4000) as big:  # ~1.5 MB: fits in the page cache
        backup = big.create_backup(tmp_path / "b.sqlite").path
    live = make_db(small_filesystem / "icn-mcp.sqlite", rows=20)
    try:
        live.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = _fill(small_filesystem, 256 * 1024)
        with pytest.raises(RestoreError) as info:
            live.restore_from_backup(backup, backup_dir=tmp_path / "backups")
        message = str(info.value)
        assert "commit" in message and ("full" in message or "SQLITE_FULL" in message), message
        assert "not changed" in (info.value.hint or "") and "free some space" in (info.value.hint or "")
        filler.unlink()
        assert _count(live) == 20
        assert live.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with live.write_transaction() as conn:  # and it keeps working
            conn.execute("INSERT INTO numbers (n) VALUES (1000)")
        assert live.restore_from_backup(backup, backup_dir=tmp_path / "backups").row_counts["numbers"] == 4000
    finally:
        live.close()


def test_revoke_tokens_after_a_restore_brings_refreshed_away_tokens_back(tmp_path):
    """The restore is faithful (the old token lives again); the operator command ends it."""
    from icn_mcp.errors import Unauthorized
    from icn_mcp.store import Store
    from tests.helpers import run_cli

    db_path = tmp_path / "var" / "icn-mcp.sqlite"
    env = {"MCP_DB_DIR": str(tmp_path / "var")}
    with make_db(db_path, rows=1) as db:
        store = Store(db)
        first = store.register_agent("planner-1", "planner")
        second = store.register_agent("ops-1", "ops", credential=first.token)
        backup = db.create_backup(tmp_path / "b.sqlite").path
        refreshed = store.refresh_token(first.token)  # first.token is revoked now
        with pytest.raises(Unauthorized):
            store.authenticate(first.token)
        db.restore_from_backup(backup)
        assert store.authenticate(first.token).name == "planner-1", "the restore brought it back"

    usage = run_cli("agent", "revoke-tokens", "--yes", env=env)
    assert usage.returncode == 2 and "--all" in usage.stderr
    unconfirmed = run_cli("agent", "revoke-tokens", "--all", env=env)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    result = run_cli("agent", "revoke-tokens", "--all", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "revoked 2 agent token(s)" in result.stdout

    with Database(db_path) as db:
        store = Store(db)
        for token in (first.token, second.token, refreshed.token):
            with pytest.raises(Unauthorized):
                store.authenticate(token)
        with pytest.raises(Unauthorized):
            store.refresh_token(second.token)
        assert _count(db) == 1 and db.connection().execute("SELECT count(*) FROM agents").fetchone()[0] == 2
    again = run_cli("agent", "revoke-tokens", "--all", "--yes", env=env)
    assert again.returncode == 0 and "revoked 0 agent token(s)" in again.stdout
    missing = run_cli("agent", "--db", str(tmp_path / "none.sqlite"), "revoke-tokens", "--all", "--yes", env=env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "none.sqlite").exists()


def test_a_no_transaction_migration_the_backup_lacks_is_applied_right_after_the_commit(tmp_path):
    """It cannot run inside the restore's transaction: the ones before it do, it and
    the ones after it run right after the commit, as 'db migrate' would."""
    from icn_mcp.db.sqlite.migrations import NO_TRANSACTION_MARKER

    migrations = copy_migrations(tmp_path / "migrations")
    with make_db(tmp_path / "old.sqlite", rows=10, migrations_dir=migrations) as old:
        backup = old.create_backup(tmp_path / "b.sqlite").path
    (migrations / "9001_in_tx.sql").write_text("CREATE TABLE a (id INTEGER PRIMARY KEY);\n")
    (migrations / "9002_outside.sql").write_text(f"{NO_TRANSACTION_MARKER}\nCREATE TABLE b (id INTEGER PRIMARY KEY);\n")
    (migrations / "9003_after.sql").write_text("CREATE TABLE c (id INTEGER PRIMARY KEY);\n")
    with make_db(tmp_path / "live.sqlite", rows=3, migrations_dir=migrations) as live:
        result = live.restore_from_backup(backup)
        assert result.migrations_applied == ["9001_in_tx", "9002_outside", "9003_after"]
        assert result.backup_latest_migration == shipped_versions()[-1]
        assert result.latest_migration == "9003_after" and _count(live) == 10
        names = {r[0] for r in live.connection().execute("SELECT name FROM sqlite_schema")}
        assert {"a", "b", "c"} <= names


def test_restore_leaves_checkpointing_to_litestream_when_it_owns_it(tmp_path):
    """With a replica (``wal_autocheckpoint=0``: Litestream owns checkpointing) a
    restore writes only to the WAL, which Litestream then ships: a checkpoint of ours
    would move pages into the database file behind Litestream's back."""
    path = tmp_path / "live" / "icn-mcp.sqlite"
    make_db(path, rows=200).close()  # closing checkpoints: everything in the file
    with Database(path, wal_autocheckpoint=0) as db:
        backup = Path(db.create_backup(tmp_path / "b.sqlite").path)
        with db.write_transaction() as conn:
            conn.execute("DELETE FROM numbers WHERE n > 100")
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        db.restore_from_backup(backup, backup_dir=tmp_path / "safety")
        assert _count(db) == 200
        # The database file is untouched: the restored content is in the WAL.
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        assert Path(f"{path}-wal").stat().st_size > 0
