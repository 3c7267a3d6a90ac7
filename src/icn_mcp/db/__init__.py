"""The persistence core of icn-mcp: SQLite connections, migrations, transactions, locks.

Knows nothing about agents or tasks. Typical use::

    from icn_mcp.db import Database

    with Database("var/icn-mcp.sqlite") as db:        # opens and migrates
        db.run_in_transaction(lambda conn: conn.execute("INSERT ..."))

or, in an application configured from the environment, :func:`get_db`.
"""

from icn_mcp.db.sqlite.backup import (
    BackupResult,
    BackupVerification,
    RestoreResult,
    create_backup,
    create_backup_async,
    restore_from_backup,
    restore_from_backup_async,
    verify_backup,
    verify_backup_async,
)
from icn_mcp.db.sqlite.database import Database, close_db, get_db
from icn_mcp.db.sqlite.info import get_database_info, get_database_info_async
from icn_mcp.db.sqlite.locks import AdvisoryLease, KeyedLocks, with_lock
from icn_mcp.db.sqlite.migrations import (
    AppliedMigration,
    DryRunResult,
    FailedMigration,
    MigrationPlan,
    MigrationState,
)

__all__ = [
    "Database",
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
