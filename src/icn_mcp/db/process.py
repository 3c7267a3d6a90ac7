"""The process-wide database, chosen from the settings, and the functions that use it.

:func:`open_database` is the one place that picks a backend: ``MCP_DB_URL`` set
selects PostgreSQL (:mod:`icn_mcp.db.postgres`, imported only then), otherwise the
SQLite file at ``MCP_DB_PATH``. :func:`get_db` keeps one such database per process.
The module-level :func:`create_backup`, :func:`verify_backup`,
:func:`restore_from_backup` and :func:`get_database_info` work on it with the
``MCP_BACKUP_*`` settings.

This module sits on top of both backends; nothing below it imports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icn_mcp.db.backup_files import BACKUP_DIR_NAME, backup_dir_for
from icn_mcp.db.base import BaseDatabase
from icn_mcp.errors import DatabaseFileError

if TYPE_CHECKING:
    from icn_mcp.config import Settings

__all__ = [
    "open_database",
    "backup_dir_from",
    "get_db",
    "close_db",
    "create_backup",
    "create_backup_async",
    "verify_backup",
    "verify_backup_async",
    "restore_from_backup",
    "restore_from_backup_async",
    "get_database_info",
    "get_database_info_async",
]

log = logging.getLogger("icn_mcp.db")


def open_database(settings: Settings, *, migrate: bool = True, **overrides: Any) -> BaseDatabase:
    """The database ``settings`` describe: PostgreSQL when ``db_url`` is set, else SQLite.

    ``overrides`` replace individual options (``migrations_dir=...``).
    """
    if settings.db_url is not None:
        from icn_mcp.db.postgres import PostgresDatabase  # needs the [postgres] extra

        options = {**settings.postgres_options(), **overrides}
        return PostgresDatabase(settings.db_url, migrate=migrate, **options)
    from icn_mcp.db.sqlite.database import Database

    options = {**settings.database_options(), **overrides}
    return Database(settings.db_path, migrate=migrate, **options)


_global_lock = threading.Lock()
_global_db: BaseDatabase | None = None
_global_pid = 0
_global_checked_at = 0.0
_health_interval_s = 30.0


def _usable(db: BaseDatabase | None) -> bool:
    return db is not None and not db.closed and _global_pid == os.getpid()


def get_db() -> BaseDatabase:
    """The process-wide database from the environment (``MCP_DB_*``).

    Opened and migrated on first use; health-checked at most every
    ``MCP_DB_HEALTH_CHECK_INTERVAL_S`` (30 s). A SQLite database whose check fails is
    closed and reopened (for instance after the file was replaced); a deleted file
    is an error, never silently recreated. A PostgreSQL pool reconnects by itself.
    """
    global _global_db, _global_checked_at, _global_pid, _health_interval_s
    db = _global_db
    if _usable(db) and time.monotonic() - _global_checked_at < _health_interval_s:
        assert db is not None
        return db
    with _global_lock:
        db = _global_db
        if db is not None and _usable(db):
            health = db.check_health()
            _global_checked_at = time.monotonic()
            if health["ok"] or db.backend != "sqlite":
                return db
            path = Path(db.target)
            if not path.exists():
                # Recreating an empty database silently would hide the loss.
                raise getattr(db, "_file_error", None) or DatabaseFileError(str(path), "was deleted")
            log.warning("reopening database %s: %s", db.target, health["error"])
            db.close()
        from icn_mcp.config import Settings  # config is read only at the edges

        settings = Settings.from_env()
        _global_db = open_database(settings)
        _global_pid = os.getpid()
        _health_interval_s = settings.health_check_interval_s
        _global_checked_at = time.monotonic()
        return _global_db


def close_db() -> None:
    """Close the process-wide database; safe to call twice."""
    global _global_db
    with _global_lock:
        if _global_db is not None:
            _global_db.close()
            _global_db = None


def _after_fork_in_child() -> None:
    # The parent may have held the lock at the moment of the fork.
    global _global_lock
    _global_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def backup_dir_from(settings: Settings) -> Path:
    """Where backups go: ``MCP_BACKUP_DIR``; else on SQLite ``backups/`` beside the
    database file (however its path was given: never a directory relative to wherever
    the command runs), on PostgreSQL ``backups/`` in ``MCP_DB_DIR``."""
    if settings.backup_dir is not None:
        return settings.backup_dir
    if settings.db_url is None:
        return backup_dir_for(settings.db_path)
    return Path(os.path.abspath(settings.db_dir)) / BACKUP_DIR_NAME


def _backup_defaults() -> dict[str, Any]:
    from icn_mcp.config import Settings

    settings = Settings.from_env()
    return {
        "backup_dir": backup_dir_from(settings),
        "keep": settings.backup_keep,
        "check": settings.backup_check.lower(),
    }


def _without_none(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def create_backup(path: str | os.PathLike[str] | None = None, **options: Any) -> Any:
    """A verified backup of the process-wide database (``MCP_BACKUP_DIR/KEEP/CHECK``)."""
    return get_db().create_backup(path, **{**_backup_defaults(), **_without_none(options)})


def verify_backup(path: str | os.PathLike[str], **options: Any) -> Any:
    """Check a backup against the process-wide database's migrations."""
    return get_db().verify_backup(path, **options)


def restore_from_backup(path: str | os.PathLike[str], **options: Any) -> Any:
    """Restore the process-wide database from ``path`` (safety copy in MCP_BACKUP_DIR).

    On SQLite with no database file yet (a new machine), the database is created from
    the backup: opening it first would create an empty one only to keep a safety
    copy of it.
    """
    from icn_mcp.config import Settings

    settings = Settings.from_env()
    if settings.db_url is None and not settings.db_path.exists():
        from icn_mcp.db.sqlite.backup import restore_new_database

        return restore_new_database(
            path,
            settings.db_path,
            migrations_dir=settings.migrations_dir,
            **_without_none({k: options.get(k) for k in ("check", "without_manifest")}),
        )
    defaults = _backup_defaults()
    merged = {"backup_dir": defaults["backup_dir"], **_without_none(options)}
    return get_db().restore_from_backup(path, **merged)


def get_database_info(**options: Any) -> dict[str, Any]:
    """Diagnostics of the process-wide database (last backup looked up in MCP_BACKUP_DIR)."""
    merged = {"backup_dir": _backup_defaults()["backup_dir"], **_without_none(options)}
    return get_db().get_database_info(**merged)


async def create_backup_async(path: str | os.PathLike[str] | None = None, **options: Any) -> Any:
    """:func:`create_backup` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(create_backup, path, **options)


async def verify_backup_async(path: str | os.PathLike[str], **options: Any) -> Any:
    """:func:`verify_backup` in a worker thread."""
    return await asyncio.to_thread(verify_backup, path, **options)


async def restore_from_backup_async(path: str | os.PathLike[str], **options: Any) -> Any:
    """:func:`restore_from_backup` in a worker thread."""
    return await asyncio.to_thread(restore_from_backup, path, **options)


async def get_database_info_async(**options: Any) -> dict[str, Any]:
    """:func:`get_database_info` in a worker thread."""
    return await asyncio.to_thread(get_database_info, **options)
