"""Shared fixtures: real SQLite files in tmp_path and a clean MCP_* environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's MCP_* settings."""
    for name in list(os.environ):
        if name.startswith("MCP_") and name != "MCP_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "icn-mcp.sqlite"


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    """An empty migrations directory for tests that write their own files."""
    path = tmp_path / "migrations"
    path.mkdir()
    return path


#: A small filesystem for full-disk tests: room for a database and a few hundred rows.
SMALL_DISK_SIZE = "8m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs of SMALL_DISK_SIZE at ``tmp_path/disk``, unmounted afterwards.

    Mounting needs root; without it the test is skipped with the reason.
    """
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("cannot mount a small tmpfs for a full-disk test: not root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK_SIZE},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a full-disk test: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            # Still busy (a process we started holds a file): detach it now.
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)
