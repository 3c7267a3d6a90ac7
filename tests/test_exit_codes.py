"""Exit codes follow the README's rule for every command (issue 9 item 22).

0 ok; 1 the operation failed (a database or backup that does not exist or is not
valid, a failed check, a port in use); 2 bad usage or a bad setting (an unknown option,
a malformed or out-of-range value, a path of the wrong kind: a directory where a file
belongs). The table covers every command of the CLI, enumerated from click, so a new
command fails `test_the_table_covers_every_command` until its cases are added here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from icn_mcp.cli import main
from tests.helpers import run_cli


def _commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, prefix + (name,))
        else:
            found.append(prefix + (name,))
    return found


#: For each command: its required arguments, and the exit code when the database does
#: not exist (None: not applicable, the command does not use it).
COMMANDS: dict[tuple[str, ...], tuple[tuple[str, ...], int | None]] = {
    ("db", "backup"): ((), 1),
    ("db", "info"): ((), 1),
    ("db", "migrate"): ((), 0),  # creates it
    ("db", "restore"): (("BACKUP", "--yes"), None),  # restoring onto no database: issue 9 item 1
    ("db", "status"): ((), 0),  # reports it does not exist yet
    ("db", "verify"): ((), 1),
    ("db", "verify-backup"): (("BACKUP",), None),
    ("serve",): (("--port", "0"), None),
    ("agent", "revoke-tokens"): (("--all", "--yes"), 1),
    ("agent", "register"): (("x", "--kind", "ops"), None),  # creates the database
    ("db", "replicate"): ((), None),  # needs MCP_REPLICA_URL first (exit 2 without)
    ("db", "replica"): ((), None),
}
DB_COMMANDS = [c for c in COMMANDS if c[0] == "db"]


def test_the_table_covers_every_command() -> None:
    assert set(_commands()) == set(COMMANDS)


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, verified backup file (made once: the cases only read it)."""
    top = tmp_path_factory.mktemp("backup")
    env = {"MCP_DB_DIR": str(top / "src")}
    assert run_cli("db", "migrate", env=env).returncode == 0
    made = run_cli("db", "backup", str(top / "good.sqlite"), env=env)
    assert made.returncode == 0, made.stderr
    return top / "good.sqlite"


def _invoke(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """The CLI in-process (fast), with exactly ``env`` as its MCP_* settings."""
    clean = {k: None for k in os.environ if k.startswith("MCP_")}
    result = CliRunner().invoke(main, args, env={**clean, **env}, catch_exceptions=False)
    return result.exit_code, result.stderr


def _args(
    command: tuple[str, ...], backup: Path, *, extra: tuple[str, ...] = (), db_option: tuple[str, ...] = ()
) -> list[str]:
    required = [str(backup) if a == "BACKUP" else a for a in COMMANDS[command][0]]
    group, *rest = command
    return [group, *db_option, *rest, *required, *extra]


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_a_bad_setting_exits_2_naming_it(tmp_path: Path, backup: Path, command: tuple[str, ...]) -> None:
    env = {"MCP_DB_DIR": str(tmp_path / "var"), "MCP_DB_RETRIES": "-1"}
    code, err = _invoke(_args(command, backup), env)
    assert code == 2 and err.startswith("error: MCP_DB_RETRIES='-1' is not valid"), err


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_an_unknown_option_exits_2(tmp_path: Path, backup: Path, command: tuple[str, ...]) -> None:
    code, err = _invoke(_args(command, backup, extra=("--no-such-option",)), {"MCP_DB_DIR": str(tmp_path / "var")})
    assert code == 2 and "No such option" in err


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_a_directory_as_the_database_exits_2_from_the_setting_and_the_option(
    tmp_path: Path, backup: Path, command: tuple[str, ...]
) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    code, err = _invoke(_args(command, backup), {"MCP_DB_PATH": str(directory)})
    assert code == 2 and f"MCP_DB_PATH='{directory}' is not valid" in err, err
    if command in DB_COMMANDS:
        code, err = _invoke(_args(command, backup, db_option=("--db", str(directory))), {})
        assert code == 2 and "is a directory" in err, err
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("command", [c for c in COMMANDS if COMMANDS[c][1] is not None], ids=" ".join)
def test_a_missing_database(tmp_path: Path, backup: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "none" / "hq.sqlite"
    code, err = _invoke(_args(command, backup, db_option=("--db", str(path))), {})
    assert code == COMMANDS[command][1], err
    if code == 1:
        assert f"database {path} does not exist" in err and not path.parent.exists()


@pytest.mark.parametrize("command", [("db", "verify-backup"), ("db", "restore")], ids=" ".join)
def test_a_backup_path_gives_the_same_code_from_every_command(tmp_path: Path, command: tuple[str, ...]) -> None:
    """A missing file: 1 from both (restore said 2, verify-backup 1); a directory: 2 from both."""
    env = {"MCP_DB_DIR": str(tmp_path / "var")}
    missing = tmp_path / "no-such-backup.sqlite"
    code, err = _invoke(_args(command, missing), env)
    assert code == 1 and err.startswith(f"error: backup {missing} does not exist"), err
    code, err = _invoke(_args(command, tmp_path), env)
    assert code == 2 and err.startswith(f"error: {tmp_path} is a directory, not a backup file"), err
    assert not (tmp_path / "var").exists()  # nothing created on the way


def test_a_file_that_is_not_a_database_exits_1_from_every_db_command(tmp_path: Path, backup: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("hello " * 100)
    for command in DB_COMMANDS:
        if command == ("db", "verify-backup"):
            code, err = _invoke(["db", "verify-backup", str(path)], {})
        elif command == ("db", "restore"):
            continue  # restoring over a non-database: db/backup.py's rules (recovery)
        elif command in (("db", "replicate"), ("db", "replica")):
            # With a replica configured: Litestream would retry a non-database forever.
            replica = {"MCP_REPLICA_URL": (tmp_path / "replica").as_uri()}
            code, err = _invoke(_args(command, backup, db_option=("--db", str(path))), replica)
        else:
            code, err = _invoke(_args(command, backup, db_option=("--db", str(path))), {})
        assert code == 1, (command, err)


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])
def test_a_host_that_cannot_be_listened_on_exits_2_with_a_hint_about_the_host(tmp_path: Path, host: str) -> None:
    for args, env in ((("serve", "--port", "0"), {"MCP_HOST": host}), (("serve", "--host", host, "--port", "0"), {})):
        result = run_cli(*args, env={"MCP_DB_DIR": str(tmp_path / "var"), **env})
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]
        assert errors[0].startswith(f"error: cannot listen on {host}:0")
        assert "MCP_HOST" in errors[1] and "port" not in errors[1].lower(), errors


@pytest.mark.parametrize("host", ["999.1.1.1", "bad_host!", "-x", "a..b"])
def test_a_malformed_host_is_a_bad_setting(tmp_path: Path, host: str) -> None:
    code, err = _invoke(["serve", "--port", "0"], {"MCP_DB_DIR": str(tmp_path / "var"), "MCP_HOST": host})
    assert code == 2 and err.startswith(f"error: MCP_HOST={host!r} is not valid"), err
    code, err = _invoke(["serve", "--host", host, "--port", "0"], {"MCP_DB_DIR": str(tmp_path / "var")})
    assert code == 2 and err.startswith(f"error: --host={host!r} is not valid"), err


def test_a_port_in_use_exits_1_with_a_hint_about_the_port(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run_cli("serve", "--port", str(port), env={"MCP_DB_DIR": str(tmp_path / "var")})
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert errors[0].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "port" in errors[1]
