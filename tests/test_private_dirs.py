"""Every directory icn-mcp creates is 0700, parents included, whatever the umask (issue 9 item 19).

``mkdir(parents=True, mode=0o700)`` gave 0700 to the leaf only: parents came out 0755
under umask 022 and 0777 under umask 000, and a world-writable parent lets another user
swap the leaf.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from icn_mcp.db.files import make_private_dirs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _levels(top: Path, leaf: Path) -> list[Path]:
    """``leaf`` and each of its parents below ``top``."""
    levels = []
    while leaf != top:
        levels.append(leaf)
        leaf = leaf.parent
    return levels


def _cli_with_umask(umask: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")} | env
    command = f'umask {umask} && exec "$0" -m icn_mcp "$@"'
    return subprocess.run(
        ["sh", "-c", command, sys.executable, *args], env=full, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("umask", ["022", "000"])
def test_database_and_backup_directories_are_0700_at_every_level(tmp_path: Path, umask: str) -> None:
    db_dir = tmp_path / "srv" / "hq" / "var"
    backups = tmp_path / "elsewhere" / "deep" / "backups"
    env = {"MCP_DB_DIR": str(db_dir), "MCP_BACKUP_DIR": str(backups)}
    migrate = _cli_with_umask(umask, "db", "migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    backup = _cli_with_umask(umask, "db", "backup", env=env)
    assert backup.returncode == 0, backup.stderr
    # a backup given as a path in a directory that does not exist yet
    explicit = tmp_path / "by-hand" / "nested" / "one.sqlite"
    by_path = _cli_with_umask(umask, "db", "backup", str(explicit), env=env)
    assert by_path.returncode == 0, by_path.stderr
    created = _levels(tmp_path, db_dir) + _levels(tmp_path, backups) + _levels(tmp_path, explicit.parent)
    assert {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in created} == {
        str(p.relative_to(tmp_path)): "0o700" for p in created
    }


def test_existing_levels_are_left_as_they_are(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    created = make_private_dirs(shared / "a" / "b")
    assert created == [shared / "a", shared / "a" / "b"]
    assert _mode(shared) == 0o755
    assert _mode(shared / "a") == _mode(shared / "a" / "b") == 0o700
    assert make_private_dirs(shared / "a" / "b") == []


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        make_private_dirs(tmp_path / "file" / "sub")


def test_no_directory_is_made_any_other_way() -> None:
    """The helper is the only place src/ creates directories (so no new mkdir escapes)."""
    src = Path(__file__).resolve().parent.parent / "src" / "icn_mcp"
    offenders = []
    for path in src.rglob("*.py"):
        if path.name == "files.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(call in line for call in (".mkdir(", "os.makedirs(", "os.mkdir(")):
                offenders.append(f"{path.relative_to(src)}:{number}: {line.strip()}")
    assert offenders == []
