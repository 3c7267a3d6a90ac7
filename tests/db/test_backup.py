"""create_backup: consistent snapshots under load, clean failures, names, pruning."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from icn_mcp.db.sqlite import backup as backup_module
from icn_mcp.db.sqlite.backup import BACKUP_NAME, manifest_path, prune_backups
from icn_mcp.errors import BackupError
from tests.db.backup_support import SQLITE3_CLI, WRITER_SCRIPT, file_state, make_db
from tests.helpers import shipped_versions


@pytest.fixture
def db(tmp_path):
    database = make_db(tmp_path / "live" / "icn-mcp.sqlite", rows=300)
    yield database
    database.close()


def _snapshot_numbers(path: Path) -> tuple[int, int | None, int | None]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*), min(n), max(n) FROM numbers").fetchone()
    finally:
        conn.close()


@pytest.mark.slow
def test_backup_while_another_process_commits_holds_a_gap_free_prefix(tmp_path):
    """A writer PROCESS commits rows 1, 2, 3, ... while three backups are taken.

    Each backup must hold exactly rows 1..k for some k (no gap: a snapshot of one
    moment), pass integrity_check, be a self-contained rollback-journal file, and
    open with the stock sqlite3 tool. The writer goes on committing meanwhile.
    """
    db = make_db(tmp_path / "icn-mcp.sqlite")
    with db.write_transaction() as conn:  # some bulk, so the copy is not instant
        conn.execute("CREATE TABLE filler (b BLOB)")
        conn.executemany("INSERT INTO filler VALUES (randomblob(4000))", [()] * 1500)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(db.path), str(ready), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert writer.poll() is None, "writer died"
            assert time.monotonic() < deadline, "writer never got going"
            time.sleep(0.01)
        results = [db.create_backup() for _ in range(3)]
    finally:
        stop.touch()
        committed = int(writer.communicate(timeout=60)[0])
    assert writer.returncode == 0
    db.close()

    highest = 0
    for result in results:
        path = Path(result.path)
        count, low, high = _snapshot_numbers(path)
        assert count >= 200 and low == 1 and high == count, f"{path}: not a gap-free prefix"
        assert high >= highest  # later backups never go back in time
        highest = high
        assert result.row_counts["numbers"] == count
        assert not Path(f"{path}-wal").exists() and not Path(f"{path}-journal").exists()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        conn.close()
        if SQLITE3_CLI is None:
            continue
        out = subprocess.run(
            [SQLITE3_CLI, str(path), "PRAGMA integrity_check; SELECT count(*), max(n) FROM numbers;"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        assert out == ["ok", f"{count}|{count}"]
        assert not Path(f"{path}-wal").exists()
    assert committed > highest  # the writer kept committing through the backups


@pytest.mark.skipif(SQLITE3_CLI is None, reason="the stock sqlite3 command-line tool is not installed")
def test_sqlite3_cli_is_available_for_the_concurrency_test():
    """Makes the silent skip inside the concurrency test visible when sqlite3 is missing."""
    assert os.access(SQLITE3_CLI, os.X_OK)


def test_backup_files_are_private_and_the_manifest_describes_the_file(db):
    result = db.create_backup()
    path, manifest = Path(result.path), Path(result.manifest_path)
    assert path.parent == db.path.parent / "backups"
    assert BACKUP_NAME.match(path.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(manifest.read_text())
    assert data["sha256"] == result.sha256 == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert data["size_bytes"] == path.stat().st_size
    assert data["source_path"] == str(db.path)
    assert data["sqlite_version"] == sqlite3.sqlite_version
    assert data["latest_migration"] == shipped_versions()[-1]
    assert data["row_counts"]["numbers"] == 300
    assert data["created_at"] == result.created_at
    assert sorted(os.listdir(path.parent)) == sorted([path.name, manifest.name])


def test_two_backups_in_the_same_microsecond_get_distinct_ordered_names(db, monkeypatch):
    frozen = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    monkeypatch.setattr(backup_module, "utc_now", lambda: frozen)
    first, second = db.create_backup(), db.create_backup()
    assert first.path != second.path
    assert Path(first.path).name == "icn-mcp-20260102T030405.678901Z.sqlite"
    assert sorted([second.path, first.path]) == [first.path, second.path]


def test_explicit_path_and_directory(db, tmp_path):
    target = tmp_path / "elsewhere" / "nightly.sqlite"
    result = db.create_backup(target)
    assert result.path == str(target) and target.exists()
    with pytest.raises(BackupError) as info:
        db.create_backup(target)
    assert "already exists" in str(info.value) and info.value.path == str(target)
    into_dir = db.create_backup(tmp_path / "elsewhere")
    assert Path(into_dir.path).parent == tmp_path / "elsewhere"
    with pytest.raises(BackupError):
        db.create_backup(db.path)


def _only_originals_left(directory: Path, before: set[str]) -> None:
    assert set(os.listdir(directory)) == before, "a failed backup left files behind"


def _failing(real, exc: OSError, *, on_call: int = 1):
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise exc
        return real(*args, **kwargs)

    return fake


@pytest.mark.parametrize(
    "target, error, on_call",
    [
        ("link", OSError(errno.ENOSPC, "No space left on device"), 1),  # publishing the backup
        ("link", OSError(errno.EROFS, "Read-only file system"), 2),  # publishing the manifest
        ("fsync", OSError(errno.EIO, "Input/output error"), 1),  # syncing the copy
        ("fsync", OSError(errno.ENOSPC, "No space left on device"), 3),  # syncing the directory
        ("_make_temp", OSError(errno.EACCES, "Permission denied"), 1),  # read-only directory
    ],
)
def test_failure_at_any_step_leaves_nothing_behind(db, monkeypatch, target, error, on_call):
    """Injected in-process: os.link / os.fsync / the temporary file's creation raise the OSError
    a full or read-only filesystem gives (root ignores directory permissions, so a
    real read-only directory cannot be used here)."""
    directory = db.path.parent / "backups"
    directory.mkdir(mode=0o700)
    (directory / "keep-me.txt").write_text("user file")
    before_files = set(os.listdir(directory))
    before_live = file_state(db.path)
    module = {"link": os, "fsync": os, "_make_temp": backup_module}[target]
    monkeypatch.setattr(module, target, _failing(getattr(module, target), error, on_call=on_call))
    with pytest.raises(BackupError) as info:
        db.create_backup()
    monkeypatch.undo()
    assert info.value.path.startswith(str(directory))
    assert error.strerror in info.value.cause and errno.errorcode[error.errno] in info.value.cause
    assert info.value.path in str(info.value)
    _only_originals_left(directory, before_files)
    assert file_state(db.path) == before_live


@pytest.mark.parametrize("which", ["backup", "manifest"])
def test_a_file_appearing_at_the_final_name_is_never_overwritten(db, tmp_path, monkeypatch, which):
    """The explicit PATH was free when checked, but a foreign file (another backup
    to the same PATH, a user's copy) appears there before the backup is published:
    the backup fails naming the path, and the foreign file is left as it was."""
    target = tmp_path / "out" / "b.sqlite"
    target.parent.mkdir()
    foreign = target if which == "backup" else manifest_path(target)
    real = backup_module._write_out

    def write_out_then_race(path):  # runs after the free-name check, before publishing
        real(path)
        foreign.write_bytes(b"someone else's file")

    monkeypatch.setattr(backup_module, "_write_out", write_out_then_race)
    with pytest.raises(BackupError) as info:
        db.create_backup(target)
    assert info.value.path == str(target) and str(foreign) in info.value.cause
    assert foreign.read_bytes() == b"someone else's file"
    assert os.listdir(target.parent) == [foreign.name], "our files were all removed"


def test_backup_of_a_deleted_database_is_refused_and_does_not_recreate_it(db, tmp_path):
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db.path}{suffix}").unlink(missing_ok=True)
    target = tmp_path / "out"
    with pytest.raises(BackupError) as info:
        db.create_backup(target / "b.sqlite", backup_dir=target)
    assert info.value.path == str(db.path) and "missing" in info.value.cause
    assert not db.path.exists(), "the live path must not be recreated"
    assert not target.exists() or os.listdir(target) == [], "nothing published"
    with pytest.raises(BackupError):  # the default location as well
        db.create_backup()
    assert not db.path.exists()
    assert not (db.path.parent / "backups").exists() or os.listdir(db.path.parent / "backups") == []


def test_a_database_without_migration_history_is_never_published(tmp_path):
    from icn_mcp.db import Database

    with Database(tmp_path / "bare.sqlite", migrate=False) as bare:
        with pytest.raises(BackupError) as info:
            bare.create_backup(tmp_path / "b.sqlite")
        assert "no migration history" in info.value.cause
    assert sorted(os.listdir(tmp_path)) == ["bare.sqlite"]


def test_disk_full_during_the_sqlite_copy_leaves_nothing_behind(db, monkeypatch):
    """SQLite reports SQLITE_FULL mid-copy (simulated with max_page_count on the copy)."""
    real = backup_module._open_destination

    def tiny(path):
        conn = real(path)
        conn.execute("PRAGMA max_page_count = 5")
        return conn

    monkeypatch.setattr(backup_module, "_open_destination", tiny)
    directory = db.path.parent / "backups"
    before_live = file_state(db.path)
    with pytest.raises(BackupError) as info:
        db.create_backup()
    assert "full" in info.value.cause and info.value.hint
    assert os.listdir(directory) == []
    assert file_state(db.path) == before_live


def test_not_enough_free_space_is_refused_before_writing(db, monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 1, 4096

    monkeypatch.setattr(backup_module.os, "statvfs", lambda path: Tiny())
    with pytest.raises(BackupError) as info:
        db.create_backup()
    assert "not enough free space" in info.value.cause
    assert os.listdir(db.path.parent / "backups") == []


def test_pruning_keeps_exactly_n_and_never_touches_other_files(db):
    directory = db.path.parent / "backups"
    directory.mkdir(mode=0o700)
    strangers = [
        "icn-mcp-notes.sqlite",
        "mine.sqlite",
        "icn-mcp-20200101T000000Z.sqlite",
        "icn-mcp-pre-restore-20200101T000000.000000Z.sqlite",
    ]
    for name in strangers:
        (directory / name).write_text("not ours to delete")
    made = [db.create_backup(keep=3) for _ in range(5)]
    ours = sorted(p.name for p in directory.iterdir() if BACKUP_NAME.match(p.name))
    assert ours == [Path(r.path).name for r in made[-3:]]
    assert all((directory / name).exists() for name in strangers)
    assert all(manifest_path(directory / name).exists() for name in ours)
    assert not any(manifest_path(r.path).exists() for r in made[:2])
    assert made[3].pruned == [made[0].path] and made[4].pruned == [made[1].path]
    # keep=1 never removes the one just made, nor one named after it (another
    # process's newer backup, or a clock set back): only older ones go.
    future = directory / "icn-mcp-29991231T235959.999999Z.sqlite"
    future.write_text("x")
    last = db.create_backup(keep=1)
    assert Path(last.path).exists() and future.exists()
    assert sorted(last.pruned) == sorted(r.path for r in made[-3:])
    assert prune_backups(directory, 1, protect=last.path) == []
    assert prune_backups(directory, 1) == [last.path]  # by hand: all but the newest name


def test_async_backup_runs_off_the_event_loop(db):
    """The progress callback waits for an event that only the running loop can set:
    if the backup ran on the loop's thread it would wait in vain."""
    loop_ran = threading.Event()
    threads = set()

    def progress(phase, done, total):
        threads.add(threading.current_thread())
        assert loop_ran.wait(10), "the event loop was blocked during the backup"

    async def main():
        task = asyncio.ensure_future(db.create_backup_async(progress=progress))
        await asyncio.sleep(0)
        loop_ran.set()
        return await task

    result = asyncio.run(main())
    assert Path(result.path).exists()
    assert threading.main_thread() not in threads


def test_module_level_functions_use_the_process_wide_database(tmp_path, monkeypatch):
    """icn_mcp.db.create_backup() etc. work on get_db() with the MCP_* settings."""
    import icn_mcp.db as api

    for name in [k for k in os.environ if k.startswith("MCP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MCP_DB_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MCP_BACKUP_KEEP", "1")
    api.close_db()
    try:
        first = api.create_backup()
        second = asyncio.run(api.create_backup_async())
        assert Path(second.path).parent == tmp_path / "var" / "backups"
        assert second.pruned == [first.path]
        assert api.verify_backup(second.path).ok
        assert api.get_database_info()["last_backup"]["path"] == second.path
        assert api.restore_from_backup(second.path).integrity == "ok"
    finally:
        api.close_db()
