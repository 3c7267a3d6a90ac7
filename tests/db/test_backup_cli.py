"""The CLI commands db backup / restore / info / verify-backup: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from icn_mcp import cli
from tests.db.backup_support import file_state, make_db
from tests.helpers import run_cli


@pytest.fixture
def env(tmp_path):
    """A database at $MCP_DB_DIR/icn-mcp.sqlite with 40 rows."""
    make_db(tmp_path / "var" / "icn-mcp.sqlite", rows=40).close()
    return {"MCP_DB_DIR": str(tmp_path / "var")}


def test_backup_prints_path_and_size_and_prunes(env, tmp_path):
    paths = []
    for _ in range(3):
        result = run_cli("db", "backup", "--keep", "2", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # quiet when not on a terminal
        line = result.stdout.splitlines()[0]
        assert line.startswith("backed up to ") and "bytes)" in line
        paths.append(line.split()[3])
    backups = tmp_path / "var" / "backups"
    assert Path(paths[0]).parent == backups
    assert sorted(p.name for p in backups.glob("icn-mcp-*.sqlite")) == [Path(p).name for p in paths[1:]]
    assert f"pruned {paths[0]}" in result.stdout


def test_backup_failures_exit_1_without_traceback(env, tmp_path):
    taken = tmp_path / "taken.sqlite"
    taken.write_text("mine")
    result = run_cli("db", "backup", str(taken), env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: backup {taken} failed: ") and "Traceback" not in result.stderr
    assert taken.read_text() == "mine"
    missing = run_cli("db", "--db", str(tmp_path / "none.sqlite"), "backup", env=env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "none.sqlite").exists()
    bad = run_cli("db", "backup", "--keep", "-1", env=env)
    assert bad.returncode == 2


def test_backup_dir_and_keep_settings(env, tmp_path):
    env = {**env, "MCP_BACKUP_DIR": str(tmp_path / "elsewhere"), "MCP_BACKUP_KEEP": "1"}
    for _ in range(2):
        assert run_cli("db", "backup", env=env).returncode == 0
    assert len(list((tmp_path / "elsewhere").glob("icn-mcp-*.sqlite"))) == 1
    wrong = run_cli("db", "backup", env={**env, "MCP_BACKUP_KEEP": "many"})
    assert wrong.returncode == 2 and "MCP_BACKUP_KEEP='many'" in wrong.stderr


def test_verify_backup_exit_codes_and_json(env, tmp_path):
    made = run_cli("db", "backup", str(tmp_path / "b.sqlite"), env=env)
    assert made.returncode == 0, made.stderr
    ok = run_cli("db", "verify-backup", str(tmp_path / "b.sqlite"), env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ") and "manifest SHA-256" in ok.stdout
    as_json = run_cli("db", "verify-backup", "--json", str(tmp_path / "b.sqlite"), env=env)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["ok"] is True
    (tmp_path / "text.sqlite").write_text("hello")
    bad = run_cli("db", "verify-backup", str(tmp_path / "text.sqlite"), env=env)
    assert bad.returncode == 1 and "not a valid backup" in bad.stderr and "Traceback" not in bad.stderr
    bad_json = run_cli("db", "verify-backup", "--json", str(tmp_path / "text.sqlite"), env=env)
    assert bad_json.returncode == 1 and json.loads(bad_json.stdout)["ok"] is False


def test_restore_needs_yes_without_a_terminal(env, tmp_path):
    live = tmp_path / "var" / "icn-mcp.sqlite"
    assert run_cli("db", "backup", str(tmp_path / "b.sqlite"), env=env).returncode == 0
    before = file_state(live)
    refused = run_cli("db", "restore", str(tmp_path / "b.sqlite"), env=env)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert file_state(live) == before
    done = run_cli("db", "restore", "--yes", str(tmp_path / "b.sqlite"), env=env)
    assert done.returncode == 0, done.stderr
    assert "restored" in done.stdout and "numbers 40" in done.stdout and "icn-mcp-pre-restore-" in done.stdout
    (tmp_path / "text.sqlite").write_text("hello")
    bad = run_cli("db", "restore", "--yes", str(tmp_path / "text.sqlite"), env=env)
    assert bad.returncode == 1 and "not an SQLite database" in bad.stderr and "Traceback" not in bad.stderr
    assert (
        run_cli("db", "restore", "--yes", str(tmp_path / "absent"), env=env).returncode == 1
    )  # a missing PATH: 1, as from verify-backup (issue 9 item 22)


def test_restore_asks_on_a_terminal(env, tmp_path, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "_is_terminal", lambda stream: True)
    runner = CliRunner()
    made = runner.invoke(cli.main, ["db", "backup", str(tmp_path / "b.sqlite")])
    assert made.exit_code == 0, made.output
    live = tmp_path / "var" / "icn-mcp.sqlite"
    before = file_state(live)
    declined = runner.invoke(cli.main, ["db", "restore", str(tmp_path / "b.sqlite")], input="n\n")
    assert declined.exit_code == 1 and "cancelled" in declined.output
    assert file_state(live) == before
    accepted = runner.invoke(cli.main, ["db", "restore", str(tmp_path / "b.sqlite")], input="y\n")
    assert accepted.exit_code == 0 and "restored" in accepted.output


def test_backup_shows_progress_on_a_terminal(env, tmp_path, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "_is_terminal", lambda stream: True)
    monkeypatch.setattr(cli, "PROGRESS_DELAY_S", 0)
    result = CliRunner().invoke(cli.main, ["db", "backup"])
    assert result.exit_code == 0, result.output
    assert "\rcopy " in result.stderr and "MiB" in result.stderr


@pytest.mark.parametrize("command", ["backup", "restore", "info", "verify-backup"])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli.main, ["db", command, "--help"])
    assert result.exit_code == 0 and len(result.output.splitlines()) > 4
