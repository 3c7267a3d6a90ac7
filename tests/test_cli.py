"""The icn-mcp command as a user runs it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import click

from icn_mcp.cli import main
from tests.helpers import run_cli, shipped_versions, write_migration


def test_every_command_has_help_text() -> None:
    def walk(command: click.Command, path: str) -> None:
        assert command.help, f"'{path}' has no help text"
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(main, "icn-mcp")
    result = run_cli("db", "--help")
    assert result.returncode == 0 and "migrate" in result.stdout and "verify" in result.stdout


def test_migrate_status_verify_on_a_fresh_directory(tmp_path: Path) -> None:
    env = {"MCP_DB_DIR": str(tmp_path / "var")}
    status = run_cli("db", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert "does not exist yet" in status.stdout and "pending" in status.stdout
    assert not (tmp_path / "var").exists()  # status never creates the database

    migrate = run_cli("db", "migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    shipped = shipped_versions()
    assert all(f"applied {v}" in migrate.stdout for v in shipped)

    again = run_cli("db", "migrate", env=env)
    assert not again.stdout.startswith("applied ") and f"up to date ({len(shipped)} migrations applied)" in again.stdout

    data = json.loads(run_cli("db", "status", "--json", env=env).stdout)
    assert data["exists"] is True and data["counts"]["applied"] == len(shipped)
    assert data["migrations"][0]["state"] == "applied"

    verify = run_cli("db", "verify", env=env)
    assert verify.returncode == 0 and verify.stdout.startswith("ok:")


def test_verify_names_the_tampered_migration_and_both_checksums(tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    migrations.mkdir()
    path = write_migration(migrations, "0001_base.sql", "CREATE TABLE base (id INTEGER);\n")
    db = str(tmp_path / "db.sqlite")
    assert run_cli("db", "--db", db, "--migrations-dir", str(migrations), "migrate").returncode == 0
    path.write_text("CREATE TABLE base (id INTEGER, sneaky TEXT);\n")
    result = run_cli("db", "--db", db, "--migrations-dir", str(migrations), "verify")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: migration 0001_base was changed after it was applied")
    assert "stored checksum" in first and "current file" in first
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 2
    # migrate refuses too, and status shows it as changed.
    assert run_cli("db", "--db", db, "--migrations-dir", str(migrations), "migrate").returncode == 1
    status = run_cli("db", "--db", db, "--migrations-dir", str(migrations), "status")
    assert "changed" in status.stdout


def test_failed_migration_is_reported_and_shown_in_status(tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    migrations.mkdir()
    write_migration(migrations, "0001_bad.sql", "CREATE TABLE a (x);\nINSERT INTO nope VALUES (1);\n")
    args = ("db", "--db", str(tmp_path / "db.sqlite"), "--migrations-dir", str(migrations))
    result = run_cli(*args, "migrate")
    assert result.returncode == 1
    assert "migration 0001_bad failed at statement 2 (line 2" in result.stderr
    assert "Traceback" not in result.stderr
    status = run_cli(*args, "status")
    assert "failed" in status.stdout and "no such table: nope" in status.stdout
    dry = run_cli(*args, "migrate", "--dry-run")
    assert dry.returncode == 1 and "would FAIL" in dry.stdout


def test_bad_setting_is_a_usage_error_of_one_line(tmp_path: Path) -> None:
    result = run_cli("db", "status", env={"MCP_DB_BUSY_TIMEOUT_MS": "forever"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: MCP_DB_BUSY_TIMEOUT_MS='forever' is not valid: expected an integer from 0 to 86400000 (milliseconds)"
    )


def test_bad_usage_exits_2() -> None:
    assert run_cli("db", "no-such-command").returncode == 2


def test_verify_of_a_missing_database_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("db", "--db", str(tmp_path / "none.sqlite"), "verify")
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "none.sqlite").exists()


def test_a_non_database_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("hello " * 1000)
    result = run_cli("db", "--db", str(path), "migrate")
    assert result.returncode == 1
    assert "cannot be used as an SQLite database" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("hello " * 1000)
    result = run_cli("--debug", "db", "--db", str(path), "migrate")
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_a_reader_closing_the_pipe_early_is_not_reported_as_an_error(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    env["MCP_DB_DIR"] = str(tmp_path / "var")
    assert run_cli("db", "migrate", env={"MCP_DB_DIR": env["MCP_DB_DIR"]}).returncode == 0
    # `icn-mcp db status | head -0`: the reader is gone before the first write (closing
    # our end at once, long before the interpreter has started, makes that certain).
    proc = subprocess.Popen(
        [sys.executable, "-m", "icn_mcp", "db", "status"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "unexpected" not in err and "Traceback" not in err and "BrokenPipe" not in err


def test_verify_fails_naming_a_migration_recorded_as_failed_until_it_is_applied(tmp_path: Path) -> None:
    """Issue 9 item 17: `db verify` exited 0 while a migration was recorded as failed."""
    migrations = tmp_path / "m"
    migrations.mkdir()
    write_migration(migrations, "0001_a.sql", "CREATE TABLE a (x);\n")
    bad = write_migration(migrations, "0002_bad.sql", "CREATE TABLE b (x);\nINSERT INTO nope VALUES (1);\n")
    args = ("db", "--db", str(tmp_path / "db.sqlite"), "--migrations-dir", str(migrations))
    assert run_cli(*args, "migrate").returncode == 1
    verify = run_cli(*args, "verify")
    assert verify.returncode == 1
    first = verify.stderr.splitlines()[0]
    assert first.startswith("error: migration 0002_bad failed at ") and "has not been applied since" in first
    assert "no such table: nope" in first and len(verify.stderr.splitlines()) == 2
    assert "0002_bad at " in run_cli(*args, "info").stdout
    assert "(not applied since)" in run_cli(*args, "info").stdout
    status = run_cli(*args, "status")
    assert "0002_bad  failed" in status.stdout and "no such table: nope" in status.stdout
    assert "warning: 0002_bad failed and has not been applied since" in status.stdout
    # edited but not yet applied: still unproven, verify still fails and status says so
    bad.write_text("CREATE TABLE b (x);\n")
    again = run_cli(*args, "verify")
    assert again.returncode == 1 and "0002_bad failed at" in again.stderr
    assert "(the file changed since)" in run_cli(*args, "status").stdout
    data = json.loads(run_cli(*args, "status", "--json").stdout)
    assert [m["failed_at"] is not None for m in data["migrations"]] == [False, True]
    # applied: verify passes
    assert run_cli(*args, "migrate").returncode == 0
    assert run_cli(*args, "verify").returncode == 0
    assert "(applied since)" in run_cli(*args, "info").stdout


def test_agent_register_prints_a_working_token_and_refuses_bad_input(tmp_path: Path) -> None:
    from icn_mcp.db import Database
    from icn_mcp.store import Store

    env = {"MCP_DB_DIR": str(tmp_path / "var")}
    first = run_cli("agent", "register", "ops-bot", "--kind", "ops", "--version", "1.2", env=env)
    assert first.returncode == 0, first.stderr
    fields = dict(line.split(None, 1) for line in first.stdout.splitlines())
    assert set(fields) == {"id", "token", "token_expires_at"}
    assert "shown only this once" in first.stderr
    second = run_cli("agent", "register", "planner-bot", "--kind", "planner", "--json", env=env)
    assert second.returncode == 0, second.stderr
    data = json.loads(second.stdout)
    with Database(tmp_path / "var" / "icn-mcp.sqlite") as db:
        store = Store(db)
        assert store.authenticate(fields["token"]).id == fields["id"]
        assert store.authenticate(data["token"]).name == "planner-bot"
        assert fields["token"] not in (tmp_path / "var" / "icn-mcp.sqlite").read_bytes().decode("latin-1")

    bad = run_cli("agent", "register", "bad name!", "--kind", "wizard", env=env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: invalid input: name: ") and "kind: one of" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert run_cli("agent", "register", "x", env=env).returncode == 2  # --kind is required
