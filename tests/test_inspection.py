"""Inspection commands open read-only and never create or change the file (issue 9 item 18).

`db status`, `db info` and `db verify` turned a 0-byte file into an empty WAL database,
and a read-only database could not be inspected at all ("Permission denied", with a
hint blaming the directory).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from icn_mcp.db import Database
from icn_mcp.errors import DatabaseError
from tests.helpers import run_cli

INSPECTIONS = [("status",), ("status", "--json"), ("info",), ("info", "--json"), ("verify",)]
NOBODY = 65534


def _fingerprint(directory: Path) -> dict[str, tuple[int, str, float]]:
    """Every file in ``directory``: mode, content hash and mtime."""
    result = {}
    for path in sorted(directory.iterdir()):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        result[path.name] = (st.st_mode, digest, st.st_mtime_ns)
    return result


@pytest.mark.parametrize("content", [b"", b"hello " * 100], ids=["empty", "text"])
@pytest.mark.parametrize("args", INSPECTIONS, ids=" ".join)
def test_a_file_that_is_not_a_database_is_reported_and_left_alone(
    tmp_path: Path, content: bytes, args: tuple[str, ...]
) -> None:
    path = tmp_path / "hq.sqlite"
    path.write_bytes(content)
    before = _fingerprint(tmp_path)
    result = run_cli("db", "--db", str(path), *args)
    assert result.returncode == 1, result
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: {path} is not an SQLite database"), first
    if not content:
        assert "empty (0 bytes)" in first
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 2
    assert _fingerprint(tmp_path) == before  # no -wal, no -shm, not converted


@pytest.mark.parametrize("args", INSPECTIONS, ids=" ".join)
def test_a_missing_database_is_reported_without_creating_anything(tmp_path: Path, args: tuple[str, ...]) -> None:
    path = tmp_path / "var" / "hq.sqlite"
    result = run_cli("db", "--db", str(path), *args)
    if args[0] == "status":
        assert result.returncode == 0 and ("does not exist yet" in result.stdout or '"exists": false' in result.stdout)
    else:
        assert result.returncode == 1 and f"database {path} does not exist" in result.stderr
    assert not (tmp_path / "var").exists()


def test_a_rollback_journal_database_is_not_converted_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    before = _fingerprint(tmp_path)
    for args in INSPECTIONS:
        result = run_cli("db", "--db", str(path), *args)
        assert "Traceback" not in result.stderr, result.stderr
    # bytes 18-19 say 1 (rollback journal) or 2 (WAL); a read-write open made them 2
    assert _fingerprint(tmp_path) == before


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is 0700, root's)."""
    base = Path(tempfile.mkdtemp(prefix="icn-settings-ro-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for root, dirs, _files in os.walk(base):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o700)
        shutil.rmtree(base)


def _as_other_user(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``icn-mcp ARGS`` as a user who does not own the files (root bypasses modes)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")} | env
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes cannot be tested")
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        full["HOME"] = "/"
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", "import icn_mcp"], env=full, capture_output=True, text=True, timeout=60
        )
        if probe.returncode != 0:
            pytest.skip(f"uid {NOBODY} cannot run this interpreter: {probe.stderr.strip()[:200]}")
    return subprocess.run(
        [*prefix, sys.executable, "-m", "icn_mcp", *args], env=full, capture_output=True, text=True, timeout=120
    )


def _read_only_database(shared_dir: Path, *, directory_read_only: bool) -> Path:
    directory = shared_dir / "var"
    path = directory / "hq.sqlite"
    assert run_cli("db", "--db", str(path), "migrate").returncode == 0
    if os.geteuid() == 0:  # the other user owns it but may only read it
        for item in (directory, path):
            os.chown(item, NOBODY, NOBODY)
    path.chmod(0o400)
    directory.chmod(0o500 if directory_read_only else 0o700)
    return path


@pytest.mark.parametrize("directory_read_only", [False, True], ids=["file-0400", "dir-0500"])
def test_a_read_only_database_can_be_inspected_and_is_not_changed(shared_dir: Path, directory_read_only: bool) -> None:
    path = _read_only_database(shared_dir, directory_read_only=directory_read_only)
    before = _fingerprint(path.parent)
    env = {"MCP_BACKUP_DIR": str(shared_dir / "backups")}
    for args in INSPECTIONS:
        result = _as_other_user("db", "--db", str(path), *args, env=env)
        assert result.returncode == 0, (args, result.stderr)
    assert "ok:" in _as_other_user("db", "--db", str(path), "verify", env=env).stdout
    assert _fingerprint(path.parent) == before  # untouched, and no -wal/-shm left beside it


def test_writing_a_read_only_database_blames_the_file_not_the_directory(shared_dir: Path) -> None:
    path = _read_only_database(shared_dir, directory_read_only=False)
    result = _as_other_user("db", "--db", str(path), "migrate", env={})
    assert result.returncode == 1
    hint = result.stderr.splitlines()[-1]
    assert hint.startswith("hint: the database file is read-only for this user"), result.stderr
    assert "directory" not in hint and "db status" in hint


def test_a_read_only_database_object_refuses_writes_by_name(tmp_path: Path) -> None:
    path = tmp_path / "hq.sqlite"
    Database(path).close()
    with Database(path, read_only=True) as db:
        assert db.migration_plan().applied
        with pytest.raises(DatabaseError, match="opened read-only"):
            db.run_in_transaction(lambda conn: conn.execute("CREATE TABLE x (y)"))
        with pytest.raises(DatabaseError, match="opened read-only"):
            with db.write_transaction():
                pass


def test_inspecting_a_writable_database_leaves_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "hq.sqlite"
    assert run_cli("db", "--db", str(path), "migrate").returncode == 0
    before = _fingerprint(tmp_path)
    for args in INSPECTIONS:
        result = run_cli("db", "--db", str(path), *args, env={"MCP_BACKUP_DIR": str(tmp_path / "b")})
        assert result.returncode == 0, (args, result.stderr)
    assert _fingerprint(tmp_path) == before


@pytest.mark.parametrize("content", [b"", b"hello " * 100], ids=["empty", "text"])
def test_a_backup_of_a_file_that_is_not_a_database_leaves_it_alone(tmp_path: Path, content: bytes) -> None:
    """`db backup` only reads the database: it turned a 0-byte file into a 4096-byte one."""
    path = tmp_path / "hq.sqlite"
    path.write_bytes(content)
    before = _fingerprint(tmp_path)
    result = run_cli("db", "--db", str(path), "backup", str(tmp_path / "b.sqlite"))
    assert result.returncode == 1 and f"{path} is not an SQLite database" in result.stderr
    assert _fingerprint(tmp_path) == before
