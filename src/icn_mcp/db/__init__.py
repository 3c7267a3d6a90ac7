"""The persistence core of icn-mcp: one contract, two backends.

Knows nothing about agents or tasks. :class:`BaseDatabase` is the contract
(transactions with retry, locks, migrations, backup, info); :class:`Database` is the
embedded SQLite backend, and ``MCP_DB_URL=postgresql://...`` selects PostgreSQL
(:mod:`icn_mcp.db.postgres`, ``pip install 'icn-mcp[postgres]'``). Typical use::

    from icn_mcp.db import Database

    with Database("var/icn-mcp.sqlite") as db:        # opens and migrates
        db.run_in_transaction(lambda conn: conn.execute("INSERT ..."))

or, in an application configured from the environment, :func:`get_db` (either
backend, from the settings) or :func:`open_database`.
"""

from icn_mcp.db.backup_files import BackupResult, BackupVerification, RestoreResult
from icn_mcp.db.base import BaseDatabase
from icn_mcp.db.keyed_locks import KeyedLocks, with_lock
from icn_mcp.db.leases import AdvisoryLease
from icn_mcp.db.migration_files import (
    AppliedMigration,
    DryRunResult,
    FailedMigration,
    MigrationPlan,
    MigrationState,
)
from icn_mcp.db.process import (
    close_db,
    create_backup,
    create_backup_async,
    get_database_info,
    get_database_info_async,
    get_db,
    open_database,
    restore_from_backup,
    restore_from_backup_async,
    verify_backup,
    verify_backup_async,
)
from icn_mcp.db.sqlite.database import Database

__all__ = [
    "BaseDatabase",
    "Database",
    "open_database",
    "get_db",
    "close_db",
    "with_lock",
    "KeyedLocks",
    "AdvisoryLease",
    "MigrationPlan",
    "MigrationState",
    "AppliedMigration",
    "FailedMigration",
    "DryRunResult",
    "create_backup",
    "create_backup_async",
    "verify_backup",
    "verify_backup_async",
    "restore_from_backup",
    "restore_from_backup_async",
    "get_database_info",
    "get_database_info_async",
    "BackupResult",
    "BackupVerification",
    "RestoreResult",
]
