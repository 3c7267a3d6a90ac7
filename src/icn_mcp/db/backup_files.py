"""Backup files and results, the same on every backend.

The contents differ (a SQLite file, a ``pg_dump`` custom-format archive); what this
module holds does not: how backups are named (``icn-mcp-<UTC time><suffix>``, safety
copies ``icn-mcp-pre-restore-...``), the JSON manifest beside each one
(``<backup>.json``), where backups go by default, the temporary files they are built
in, and the results that create, verify and restore return. :mod:`icn_mcp.db.sqlite.backup`
and :mod:`icn_mcp.db.postgres.backup` both import it; it imports neither.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BackupResult",
    "BackupVerification",
    "RestoreResult",
    "backup_dir_for",
    "manifest_path",
    "BACKUP_DIR_NAME",
    "BACKUP_PREFIX",
    "SAFETY_BACKUP_PREFIX",
    "MANIFEST_SUFFIX",
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_VERSION",
    "NAME_TIME_FORMAT",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "FILE_MODE",
]

#: Where backups go by default: this folder beside the database file (SQLite) or in
#: ``MCP_DB_DIR`` (PostgreSQL).
BACKUP_DIR_NAME = "backups"
BACKUP_PREFIX = "icn-mcp-"
#: Safety copies made by restore; never pruned, because their name differs.
SAFETY_BACKUP_PREFIX = "icn-mcp-pre-restore-"
MANIFEST_SUFFIX = ".json"
MANIFEST_FORMAT = "icn-mcp-backup"
MANIFEST_FORMAT_VERSION = 1
#: The UTC time in a backup's name: sorts in creation order.
NAME_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
TEMP_PREFIX = ".icn-mcp-backup-"
TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o600


# -- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    """A published backup: where it is and what it holds."""

    path: str
    manifest_path: str
    size_bytes: int
    sha256: str
    created_at: str
    source_path: str
    latest_migration: str | None
    row_counts: dict[str, int | None]
    check: str
    #: Seconds spent in each phase: copy, check, hash, sync (and total).
    timings_s: dict[str, float] = field(default_factory=dict)
    #: Older backups removed by ``keep``.
    pruned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BackupVerification:
    """What a backend's ``verify_backup`` found; ``ok`` is True only when ``problems`` is empty.

    ``unknown_migrations`` are applied in the backup but have no file here (the
    backup comes from a newer schema); ``changed_migrations`` have a different
    checksum than their file. ``manifest_ok`` is None when there is no manifest.
    """

    path: str
    ok: bool
    problems: list[str]
    size_bytes: int | None = None
    header_ok: bool = False
    page_size: int | None = None
    journal_mode: str | None = None
    integrity: str | None = None
    migrations_ok: bool | None = None
    latest_migration: str | None = None
    applied_migrations: list[str] = field(default_factory=list)
    unknown_migrations: list[str] = field(default_factory=list)
    changed_migrations: list[str] = field(default_factory=list)
    manifest_path: str | None = None
    manifest_ok: bool | None = None
    sha256: str | None = None
    created_at: str | None = None
    row_counts: dict[str, int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did: from where, the safety copy, and what the database holds now."""

    database: str
    backup_path: str
    #: None when there was nothing to keep (no database, or an empty file).
    safety_backup_path: str | None
    backup_created_at: str | None
    #: The backup's own latest migration, before the missing ones were applied.
    backup_latest_migration: str | None
    #: The database's latest migration now, after applying ``migrations_applied``.
    latest_migration: str | None
    migrations_applied: list[str]
    row_counts: dict[str, int | None]
    integrity: str
    #: True when the backup had no manifest and was restored on purpose without it.
    without_manifest: bool
    #: True when the database did not exist and was created from the backup.
    database_created: bool
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- paths ----------------------------------------------------------------------------


def backup_dir_for(db_path: str | os.PathLike[str]) -> Path:
    """``backups/`` beside the database file ``db_path``.

    The default whatever set the path (MCP_DB_DIR, MCP_DB_PATH or ``--db``): never
    a directory relative to the current one, which changes with where a command runs.
    """
    return Path(os.path.abspath(os.fspath(db_path))).parent / BACKUP_DIR_NAME


def manifest_path(backup: str | os.PathLike[str]) -> Path:
    """The manifest beside ``backup``: its name plus ``.json``."""
    backup = Path(backup)
    return backup.with_name(backup.name + MANIFEST_SUFFIX)
