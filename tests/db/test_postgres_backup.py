"""PostgreSQL backups: pg_dump + manifest, verify in a scratch database, restore."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest

from icn_mcp.errors import RestoreError
from tests import pg
from tests.helpers import run_cli

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: The PostgreSQL migrations the package ships, in order.
SHIPPED = sorted(
    p.stem for p in (Path(__file__).parents[2] / "src" / "icn_mcp" / "migrations" / "postgres").glob("*.sql")
)


def _open(url: str, **options: Any) -> Any:
    from icn_mcp.db.postgres import PostgresDatabase

    return PostgresDatabase(url, pool_min=1, pool_max=3, **options)


@pytest.fixture
def source(pg_url: str) -> Iterator[Any]:
    db = _open(pg_url)
    db.run_in_transaction(
        lambda c: c.cursor().executemany(
            "INSERT INTO agents (id, name, kind, created_at) VALUES (%s, %s, 'ops', now())",
            [(f"a{i}", f"agent {i}") for i in range(5)],
        )
    )
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def other_url() -> Iterator[str]:
    admin = pg.admin_url()
    assert admin is not None
    url = pg.create_database(admin)
    try:
        yield url
    finally:
        pg.drop_database(admin, url)


def _agents(db: Any) -> list[str]:
    with db.read_transaction() as conn:
        return [r[0] for r in conn.execute("SELECT id FROM agents ORDER BY id").fetchall()]


def test_backup_verify_and_restore_into_an_empty_database(source: Any, other_url: str, tmp_path: Path) -> None:
    result = source.create_backup(backup_dir=tmp_path / "backups")
    backup = Path(result.path)
    assert backup.name.startswith("icn-mcp-") and backup.suffix == ".pgdump"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    manifest = json.loads(Path(result.manifest_path).read_text())
    assert manifest["row_counts"]["agents"] == 5 and manifest["latest_migration"] == SHIPPED[-1]
    assert manifest["sha256"] == result.sha256 and manifest["server_version"]
    assert [p.name for p in backup.parent.iterdir() if p.name.startswith(".")] == []  # no temp left

    verification = source.verify_backup(backup)
    assert verification.ok, verification.problems
    assert verification.row_counts["agents"] == 5 and verification.migrations_ok

    target = _open(other_url, migrate=False)  # the disaster-recovery case: nothing there
    try:
        restored = target.restore_from_backup(backup, backup_dir=tmp_path / "backups")
        assert restored.safety_backup_path is None and restored.migrations_applied == []
        assert _agents(target) == [f"a{i}" for i in range(5)]
        assert target.verify_migrations().to_dict()["counts"]["applied"] == len(SHIPPED)
    finally:
        target.close()
    info = source.get_database_info(backup_dir=tmp_path / "backups")
    assert info["last_backup"]["path"] == str(backup)


def test_a_truncated_dump_fails_verification_and_is_never_restored(source: Any, tmp_path: Path) -> None:
    backup = Path(source.create_backup(backup_dir=tmp_path).path)
    data = backup.read_bytes()
    broken = tmp_path / "broken.pgdump"
    broken.write_bytes(data[: len(data) // 2])
    verification = source.verify_backup(broken)
    assert not verification.ok and "pg_restore" in verification.problems[0]
    # Without its manifest the damage is found by pg_restore; with it, by the checksum.
    os.link(backup, tmp_path / "copy.pgdump")
    Path(tmp_path / "copy.pgdump.json").write_text(Path(f"{backup}.json").read_text())
    with open(tmp_path / "copy.pgdump", "r+b") as f:
        f.truncate(len(data) - 100)
    assert not source.verify_backup(tmp_path / "copy.pgdump").ok
    before = _agents(source)
    with pytest.raises(RestoreError, match="failed verification"):
        source.restore_from_backup(broken, backup_dir=tmp_path)
    assert _agents(source) == before


def test_restore_over_data_keeps_a_safety_dump_first(source: Any, tmp_path: Path) -> None:
    backup = source.create_backup(backup_dir=tmp_path).path
    source.run_in_transaction(
        lambda c: c.execute("INSERT INTO agents (id, name, kind, created_at) VALUES ('late', 'late', 'ops', now())")
    )
    restored = source.restore_from_backup(backup, backup_dir=tmp_path)
    assert "late" not in _agents(source) and len(_agents(source)) == 5
    safety = Path(restored.safety_backup_path)
    assert safety.name.startswith("icn-mcp-pre-restore-") and safety.exists()
    assert source.verify_backup(safety).row_counts["agents"] == 6  # the replaced content


def test_cli_backup_and_verify_backup_on_postgresql(source: Any, pg_url: str, tmp_path: Path) -> None:
    env = {"MCP_DB_URL": pg_url, "MCP_BACKUP_DIR": str(tmp_path / "b")}
    made = run_cli("db", "backup", env=env)
    assert made.returncode == 0, made.stderr
    path = made.stdout.split()[3]  # "backed up to PATH (size)"
    checked = run_cli("db", "verify-backup", path, env=env)
    assert checked.returncode == 0 and checked.stdout.startswith("ok:"), checked.stderr
    info = run_cli("db", "info", "--json", env=env)
    assert json.loads(info.stdout)["last_backup"]["path"] == path


def test_cli_restore_onto_a_new_empty_database(source: Any, other_url: str, tmp_path: Path) -> None:
    """The disaster-recovery path: a new server, an empty database, `db restore --yes`."""
    backup = source.create_backup(backup_dir=tmp_path).path
    restored = run_cli("db", "restore", backup, "--yes", env={"MCP_DB_URL": other_url, "MCP_BACKUP_DIR": str(tmp_path)})
    assert restored.returncode == 0, restored.stderr
    assert "no safety copy was needed" in restored.stdout and "agents 5" in restored.stdout
    target = _open(other_url, migrate=False)
    try:
        assert _agents(target) == [f"a{i}" for i in range(5)]
    finally:
        target.close()


# -- concurrent backups into one directory (the SQLite side: test_backup_hardening.py) --

PRUNE_ROUNDS = 6
PRUNE_WORKERS = 3


def _pg_backup_rounds(url: str, directory: str, barrier: Any, results: Any) -> None:
    """One process: PRUNE_ROUNDS times, start a keep=1 backup together with the others."""
    try:
        db = _open(url)
        try:
            for _ in range(PRUNE_ROUNDS):
                barrier.wait(timeout=120)
                made = db.create_backup(backup_dir=directory, keep=1)
                results.put((made.path, made.pruned))
                barrier.wait(timeout=120)  # the parent counts what is left
        finally:
            db.close()
    except BaseException as exc:  # report, never hang the parent at the barrier
        results.put(("error", repr(exc)))
        barrier.abort()
        raise


def test_concurrent_keep_1_backups_never_leave_zero_and_never_delete_a_newer_one(
    source: Any, pg_url: str, tmp_path: Path
) -> None:
    from icn_mcp.db.postgres.backup import list_backups
    from tests.db.backup_support import concurrent_keep_1_rounds

    directory = tmp_path / "backups"
    concurrent_keep_1_rounds(
        _pg_backup_rounds,
        (pg_url, str(directory)),
        workers=PRUNE_WORKERS,
        rounds=PRUNE_ROUNDS,
        directory=directory,
        list_backups=list_backups,
    )


#: Every backup of the tests below starts at this moment: icn-mcp-20261202T040744.217151Z.
FROZEN_MOMENT = (2026, 12, 2, 4, 7, 44, 217151)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The PostgreSQL backup module, its clock stopped at FROZEN_MOMENT."""
    from datetime import UTC, datetime

    from icn_mcp.db.postgres import backup as pg_backup

    moment = datetime(*FROZEN_MOMENT, tzinfo=UTC)
    monkeypatch.setattr(pg_backup, "utc_now", lambda: moment)
    return pg_backup


def test_two_backups_with_the_same_timestamp_both_publish(source: Any, tmp_path: Path, frozen_clock: Any) -> None:
    directory = tmp_path / "backups"
    first = source.create_backup(backup_dir=directory)
    second = source.create_backup(backup_dir=directory)
    names = [Path(first.path).name, Path(second.path).name]
    assert names == ["icn-mcp-20261202T040744.217151Z.pgdump", "icn-mcp-20261202T040744.217152Z.pgdump"]
    for result in (first, second):
        assert source.verify_backup(result.path).ok
        assert json.loads(Path(result.manifest_path).read_text())["file"] == Path(result.path).name


def test_a_name_taken_after_it_was_chosen_moves_on_and_the_other_file_is_untouched(
    source: Any, tmp_path: Path, frozen_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's backup of the same microsecond publishes the name first."""
    pg_backup = frozen_clock
    directory = tmp_path / "backups"
    taken = directory / "icn-mcp-20261202T040744.217151Z.pgdump"
    real_sha256 = pg_backup._sha256

    def sha256_then_the_other_backup_publishes(path: Path) -> tuple[str, int]:
        taken.write_bytes(b"the other process's dump")
        return real_sha256(path)

    monkeypatch.setattr(pg_backup, "_sha256", sha256_then_the_other_backup_publishes)
    made = source.create_backup(backup_dir=directory)
    assert Path(made.path).name == "icn-mcp-20261202T040744.217152Z.pgdump"
    assert taken.read_bytes() == b"the other process's dump"
    assert json.loads(Path(made.manifest_path).read_text())["file"] == Path(made.path).name
    assert source.verify_backup(made.path).ok


def test_two_backups_to_one_path_at_once_leave_the_first_whole(
    source: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The later backup fails at the link; its cleanup once removed the first one's
    manifest temporary file (named after the final name), and then the first backup
    failed too and removed its published dump: nothing left."""
    import threading

    from icn_mcp.db import backup_files
    from icn_mcp.db.postgres import backup as pg_backup
    from icn_mcp.errors import BackupError

    target = tmp_path / "one.pgdump"
    first_writing_manifest, second_done = threading.Event(), threading.Event()
    real_publish, real_dump = backup_files.publish_backup, pg_backup.json.dump
    second_thread: list[threading.Thread] = []

    def publish_after_the_first(*args: Any) -> Path:
        if threading.current_thread() in second_thread:
            assert first_writing_manifest.wait(60)
        return real_publish(*args)

    def dump_while_the_second_fails(obj: Any, fh: Any, **kw: Any) -> None:
        if threading.current_thread() not in second_thread and "sha256" in obj:
            first_writing_manifest.set()
            assert second_done.wait(60)
        real_dump(obj, fh, **kw)

    monkeypatch.setattr(backup_files, "publish_backup", publish_after_the_first)
    monkeypatch.setattr(pg_backup.json, "dump", dump_while_the_second_fails)
    outcome: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            outcome[name] = source.create_backup(target)
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome[name] = exc
        finally:
            if name == "second":
                second_done.set()

    second = threading.Thread(target=run, args=("second",))
    second_thread.append(second)
    first = threading.Thread(target=run, args=("first",))
    first.start()
    second.start()
    first.join(120)
    second.join(120)
    assert isinstance(outcome["second"], BackupError)
    assert "appeared while the backup was being written" in str(outcome["second"])
    made = outcome["first"]
    assert not isinstance(made, BaseException), made
    assert made.path == str(target)
    assert source.verify_backup(target).ok
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_path_ending_in_a_slash_is_a_directory_on_postgresql(source: Any, tmp_path: Path) -> None:
    made = source.create_backup(f"{tmp_path / 'new'}/")
    assert Path(made.path).parent == tmp_path / "new"
    assert (tmp_path / "new").is_dir()
    (tmp_path / "file").write_text("mine")
    from icn_mcp.errors import BackupError

    with pytest.raises(BackupError, match="PATH ends with a slash"):
        source.create_backup(f"{tmp_path / 'file'}/")
    assert (tmp_path / "file").read_text() == "mine"
