"""Shared fixtures: real SQLite files in tmp_path, fresh PostgreSQL databases, a clean
MCP_* environment; with CI=true a skipped PostgreSQL test is a failure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests import pg


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


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database of this test's own, dropped afterwards."""
    admin = pg.admin_url()
    if admin is None:
        pytest.skip(pg.SKIP_REASON)
    url = pg.create_database(admin)
    try:
        yield url
    finally:
        pg.drop_database(admin, url)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (CI=true), a PostgreSQL test that was skipped fails instead.

    An expected failure (xfail: a known product bug) is reported as skipped too, but
    it ran: it stays an xfail.
    """
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and os.environ.get("CI", "").lower() == "true"
        and item.get_closest_marker("postgres") is not None
    ):
        report.outcome = "failed"
        report.longrepr = f"PostgreSQL test skipped in CI (CI=true): {report.longrepr}"


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
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a full-disk test: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            # Still busy (a process we started holds a file): detach it now.
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)
