"""Helpers shared by the test suite: the CLI, worker processes, migration files."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

WORKERS = Path(__file__).parent / "workers"


def write_migration(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql, encoding="utf-8")
    return path


def run_worker(name: str, *args: object, **kwargs: object) -> subprocess.Popen[str]:
    """Start ``tests/workers/<name>.py`` as a real process (stdout piped, text)."""
    return subprocess.Popen(
        [sys.executable, str(WORKERS / f"{name}.py"), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m icn_mcp ARGS`` as a user would, in a clean environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "icn_mcp", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        input=input,
        timeout=120,
    )


def shipped_versions() -> list[str]:
    """The versions of the migrations shipped in the package, in order."""
    from icn_mcp.db.sqlite.migrations import default_migrations_dir, discover

    return [m.version for m in discover(default_migrations_dir())]


def fill_disk(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem has not one byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler
