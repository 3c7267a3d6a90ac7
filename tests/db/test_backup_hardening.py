"""create_backup under races and crashes (issue 9): concurrent pruning, killed backups'
temporary files, the default directory, a PATH ending in '/'."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.db.sqlite import backup as backup_module
from icn_mcp.db.sqlite.backup import BACKUP_NAME, list_backups
from tests.db.backup_support import concurrent_keep_1_rounds, make_db
from tests.helpers import run_cli


@pytest.fixture
def db(tmp_path):
    database = make_db(tmp_path / "live" / "icn-mcp.sqlite", rows=300)
    yield database
    database.close()


# -- concurrent pruning (item 2) ------------------------------------------------------

ROUNDS = 30
WORKERS = 3


def _backup_rounds(db_path: str, directory: str, barrier, results) -> None:
    """One process: ROUNDS times, start a keep=1 backup together with the others."""
    try:
        with Database(db_path, migrate=False) as db:
            for _ in range(ROUNDS):
                barrier.wait(timeout=120)
                made = db.create_backup(backup_dir=directory, keep=1, check="none")
                results.put((made.path, made.pruned))
                barrier.wait(timeout=120)  # the parent counts what is left
    except BaseException as exc:  # report, never hang the parent at the barrier
        results.put(("error", repr(exc)))
        barrier.abort()
        raise


@pytest.mark.slow
def test_concurrent_keep_1_backups_never_leave_zero_and_never_delete_a_newer_one(db, tmp_path):
    directory = tmp_path / "backups"
    concurrent_keep_1_rounds(
        _backup_rounds,
        (str(db.path), str(directory)),
        workers=WORKERS,
        rounds=ROUNDS,
        directory=directory,
        list_backups=list_backups,
    )


def test_a_backup_in_use_by_its_maker_is_not_pruned(db, tmp_path):
    """The per-file lock: a published backup whose maker has not returned is skipped."""
    import fcntl

    directory = tmp_path / "backups"
    first = db.create_backup(backup_dir=directory)
    fd = os.open(first.path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as create_backup holds it until it returns
        second = db.create_backup(backup_dir=directory, keep=1)
        assert second.pruned == [] and Path(first.path).exists()
    finally:
        os.close(fd)
    third = db.create_backup(backup_dir=directory, keep=1)
    assert set(third.pruned) == {first.path, second.path}


def test_two_backups_started_in_the_same_microsecond_both_publish(db, tmp_path, monkeypatch):
    """Three processes starting backups together once picked one timestamped name: the
    later one failed with "appeared while the backup was being written". A default name
    is ours to choose: the later backup takes the next free one."""
    import threading
    from datetime import UTC, datetime

    from icn_mcp.db.sqlite.backup import verify_backup

    moment = datetime(2026, 12, 2, 4, 7, 44, 217151, tzinfo=UTC)
    monkeypatch.setattr(backup_module, "utc_now", lambda: moment)
    directory = tmp_path / "backups"
    first_checking, second_done = threading.Event(), threading.Event()
    made = {}

    def hold_at_check(phase: str, done: int, total: int) -> None:
        if phase == "check" and done == 0:  # its name chosen, nothing published yet
            first_checking.set()
            assert second_done.wait(60)

    def first() -> None:
        made["first"] = db.create_backup(backup_dir=directory, check="none", progress=hold_at_check)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_checking.wait(60)
    try:
        made["second"] = db.create_backup(backup_dir=directory, check="none")
    finally:
        second_done.set()
        thread.join(60)
    assert set(made) == {"first", "second"}
    names = sorted(Path(result.path).name for result in made.values())
    assert names == ["icn-mcp-20261202T040744.217151Z.sqlite", "icn-mcp-20261202T040744.217152Z.sqlite"]
    assert [p.name for p in list_backups(directory)] == names
    for result in made.values():
        assert verify_backup(result.path).ok
        assert json.loads(Path(result.manifest_path).read_text())["file"] == Path(result.path).name


# -- killed backups' temporary files (item 3) -----------------------------------------

PAUSED_BACKUP = r"""
import sys, time
from pathlib import Path
from icn_mcp.db import Database
db_path, directory, ready = sys.argv[1:4]
def progress(phase, done, total):
    if phase == "check":
        Path(ready).touch()
        time.sleep(600)  # killed here, with its temporary file written
with Database(db_path, migrate=False) as db:
    db.create_backup(backup_dir=directory, progress=progress)
"""


def _paused_backup(db: Database, directory: Path, ready: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_BACKUP, str(db.path), str(directory), str(ready)])
    while not ready.exists():
        assert proc.poll() is None, "the backup process died early"
        import time

        time.sleep(0.02)
    return proc


@pytest.mark.slow
def test_kill_9_leftovers_are_reported_then_removed_but_a_running_backups_file_is_not(db, tmp_path):
    directory = tmp_path / "backups"
    running = _paused_backup(db, directory, tmp_path / "ready-1")
    try:
        killed = _paused_backup(db, directory, tmp_path / "ready-2")
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        temps = backup_module.list_temp_files(directory)
        assert sorted(t["state"] for t in temps) == ["in_progress", "orphan"]
        orphan = next(t for t in temps if t["state"] == "orphan")
        assert str(killed.pid) in Path(orphan["path"]).name and orphan["size_bytes"] > 0
        info = db.get_database_info(backup_dir=directory)
        assert sorted(t["state"] for t in info["backup_temp_files"]) == ["in_progress", "orphan"]
        shown = run_cli("db", "--db", str(db.path), "info", env={"MCP_BACKUP_DIR": str(directory)})
        assert shown.returncode == 0 and "orphaned (its backup was killed)" in shown.stdout

        db.create_backup(backup_dir=directory)
        left = backup_module.list_temp_files(directory)
        assert [t["state"] for t in left] == ["in_progress"], "the orphan goes, the running one stays"
        assert not Path(orphan["path"]).exists()
    finally:
        running.kill()
        running.wait()
    db.create_backup(backup_dir=directory)
    assert backup_module.list_temp_files(directory) == []
    assert all(BACKUP_NAME.match(n) or n.endswith(".json") for n in os.listdir(directory))


def test_a_reused_pid_does_not_make_a_temp_file_look_alive(tmp_path):
    """Our own pid with another start time: a process that died before we got its pid."""
    directory = tmp_path / "backups"
    directory.mkdir()
    pid = os.getpid()
    host = backup_module._host_tag()
    start = backup_module._process_start(pid)
    assert start is not None, "Linux /proc is needed for the start time"
    mine = directory / f".icn-mcp-backup-{host}-{pid}-{start}-abc.tmp"
    reused = directory / f".icn-mcp-backup-{host}-{pid}-{start + 1}-abc.tmp"
    elsewhere = directory / f".icn-mcp-backup-{'0' * 8}-1-1-abc.tmp"
    legacy = directory / ".icn-mcp-backup-k3j4h5g6.tmp"
    for path in (mine, reused, elsewhere, legacy):
        path.write_bytes(b"x" * 10)
    states = {Path(t["path"]).name: t["state"] for t in backup_module.list_temp_files(directory)}
    assert states == {
        mine.name: "in_progress",
        reused.name: "orphan",
        elsewhere.name: "unknown",
        legacy.name: "unknown",
    }
    assert backup_module.remove_orphan_temp_files(directory) == [str(reused)]


def test_the_free_space_check_counts_the_space_orphans_free(db, tmp_path):
    """On a real full filesystem: an orphan's space is freed before the check."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        orphan = mount_point / f".icn-mcp-backup-{backup_module._host_tag()}-{dead.pid}-1-abc.tmp"
        free = os.statvfs(mount_point).f_bavail * os.statvfs(mount_point).f_frsize
        orphan.write_bytes(b"\0" * (free - 4 * 1024 * 1024))  # 4 MiB left: < the 16 MiB margin
        made = db.create_backup(backup_dir=mount_point)
        assert Path(made.path).exists() and not orphan.exists()
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


# -- default directory and PATH/ (items 8, 20) ------------------------------------------


def test_with_only_mcp_db_path_backups_go_beside_the_database(tmp_path):
    db_path = tmp_path / "data" / "hq.sqlite"
    make_db(db_path, rows=3).close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"MCP_DB_PATH": str(db_path)}
    made = run_cli("db", "backup", env=env, cwd=elsewhere)
    assert made.returncode == 0, made.stderr
    assert Path(made.stdout.split()[3]).parent == tmp_path / "data" / "backups"
    assert os.listdir(elsewhere) == [], "nothing relative to the current directory"
    info = run_cli("db", "info", "--json", env=env, cwd=elsewhere)
    assert info.returncode == 0 and '"last_backup": {' in info.stdout
    restored = run_cli("db", "restore", made.stdout.split()[3], "--yes", env=env, cwd=elsewhere)
    assert restored.returncode == 0, restored.stderr
    assert os.listdir(elsewhere) == []
    assert any(n.startswith("icn-mcp-pre-restore-") for n in os.listdir(tmp_path / "data" / "backups"))


def test_process_wide_backups_go_beside_mcp_db_path(tmp_path, monkeypatch):
    import icn_mcp.db as api

    monkeypatch.setenv("MCP_DB_PATH", str(tmp_path / "data" / "hq.sqlite"))
    monkeypatch.chdir(tmp_path)
    api.close_db()
    try:
        assert Path(api.create_backup().path).parent == tmp_path / "data" / "backups"
    finally:
        api.close_db()
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("suffix", ["/", "/."])
def test_a_path_ending_in_a_slash_is_a_directory(tmp_path, suffix):
    make_db(tmp_path / "var" / "icn-mcp.sqlite", rows=3).close()
    target = tmp_path / "new-dir"
    made = run_cli("db", "backup", f"{target}{suffix}", env={"MCP_DB_DIR": str(tmp_path / "var")})
    assert made.returncode == 0, made.stderr
    assert target.is_dir() and target.stat().st_mode & 0o777 == 0o700
    assert Path(made.stdout.split()[3]).parent == target
    assert BACKUP_NAME.match(Path(made.stdout.split()[3]).name)


def test_a_path_ending_in_a_slash_that_names_a_file_is_refused(db, tmp_path):
    from icn_mcp.errors import BackupError

    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(BackupError) as info:
        db.create_backup(f"{tmp_path / 'a-file'}/")
    assert "not a directory" in str(info.value)
    assert (tmp_path / "a-file").read_text() == "mine"


# -- siblings ---------------------------------------------------------------------------


def test_removing_an_orphan_that_is_another_name_of_a_backup_keeps_the_backup(db, tmp_path, monkeypatch):
    """A backup killed between publishing (link) and removing its temp name leaves a
    second name of the published backup: removing it must not empty the backup."""
    directory = tmp_path / "backups"
    monkeypatch.setattr(backup_module, "REMOVE_STEP_BYTES", 4096)  # shrink in small steps
    made = db.create_backup(backup_dir=directory)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = directory / f".icn-mcp-backup-{backup_module._host_tag()}-{dead.pid}-1-abc.tmp"
    os.link(made.path, orphan)
    before = Path(made.path).read_bytes()
    assert backup_module.remove_orphan_temp_files(directory) == [str(orphan)]
    assert Path(made.path).read_bytes() == before and db.verify_backup(made.path).ok


def test_pruning_a_backup_with_a_hard_link_elsewhere_keeps_the_other_name_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(backup_module, "REMOVE_STEP_BYTES", 4096)  # shrink in small steps
    with make_db(tmp_path / "live.sqlite", rows=300) as db:
        first = db.create_backup(backup_dir=tmp_path / "backups")
        kept = tmp_path / "my-copy.sqlite"
        os.link(first.path, kept)
        before = kept.read_bytes()
        second = db.create_backup(backup_dir=tmp_path / "backups", keep=1)
    assert second.pruned == [first.path]
    assert kept.read_bytes() == before


@pytest.mark.parametrize("group", ["db", "agent"])
def test_a_database_path_ending_in_a_slash_is_refused_not_created_as_a_file(tmp_path, group):
    command = ["migrate"] if group == "db" else ["revoke-tokens", "--all", "--yes"]
    result = run_cli(group, "--db", f"{tmp_path / 'x'}/", *command)
    assert result.returncode == 2 and "names a directory" in result.stderr
    assert not (tmp_path / "x").exists()


def test_module_level_restore_on_a_machine_without_a_database(tmp_path, monkeypatch):
    import icn_mcp.db as api

    with make_db(tmp_path / "old.sqlite", rows=4) as old:
        backup = old.create_backup(tmp_path / "b.sqlite").path
    monkeypatch.setenv("MCP_DB_DIR", str(tmp_path / "new"))
    api.close_db()
    try:
        result = api.restore_from_backup(backup)
        assert result.database_created and result.safety_backup_path is None
        assert api.get_db().connection().execute("SELECT count(*) FROM numbers").fetchone()[0] == 4
    finally:
        api.close_db()
    assert not (tmp_path / "new" / "backups").exists()


def test_verify_backup_refuses_a_file_with_a_wal_beside_it(db, tmp_path):
    made = Path(db.create_backup(tmp_path / "b.sqlite").path)
    Path(f"{made}-wal").write_bytes(b"\1" * 100)
    result = db.verify_backup(made)
    assert not result.ok and "-wal" in result.problems[0] and "self-contained" in result.problems[0]


def test_a_timestamped_name_lost_to_a_backup_that_then_failed_still_moves_on(tmp_path, monkeypatch):
    """The other backup published the name and then removed it (its manifest step
    failed): the name is free again by the time we look, but ours must not fail."""
    from datetime import UTC, datetime

    from icn_mcp.db import backup_files
    from icn_mcp.errors import BackupError

    moment = datetime(2026, 12, 2, 4, 7, 44, 217151, tzinfo=UTC)
    tmp = tmp_path / ".icn-mcp-backup-x.tmp"
    tmp.write_bytes(b"ours")
    final, name_moment = backup_files.free_name(tmp_path, "icn-mcp-", ".sqlite", moment)
    real_publish = backup_files.publish_file
    calls = []

    def lost_once(source, target, named):
        calls.append(target.name)
        if len(calls) == 1:  # EEXIST, and the other file gone again by now
            raise BackupError(str(named), f"{target} appeared while the backup was being written")
        real_publish(source, target, named)

    monkeypatch.setattr(backup_files, "publish_file", lost_once)
    published = backup_files.publish_backup(tmp, final, "icn-mcp-", ".sqlite", name_moment)
    assert calls == ["icn-mcp-20261202T040744.217151Z.sqlite", "icn-mcp-20261202T040744.217152Z.sqlite"]
    assert published.read_bytes() == b"ours" and not tmp.exists()
    # A name the caller gave is never changed.
    other = tmp_path / ".icn-mcp-backup-y.tmp"
    other.write_bytes(b"theirs")
    calls.clear()
    with pytest.raises(BackupError, match="appeared"):
        backup_files.publish_backup(other, tmp_path / "given.sqlite", "icn-mcp-", ".sqlite", None)
    assert other.exists() and not (tmp_path / "given.sqlite").exists()
