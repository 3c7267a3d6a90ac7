"""The persistence core of icn-mcp: SQLite connections, migrations, transactions, locks.

Knows nothing about agents or tasks. Typical use::

    from icn_mcp.db import Database

    with Database("var/icn-mcp.sqlite") as db:        # opens and migrates
        db.run_in_transaction(lambda conn: conn.execute("INSERT ..."))

or, in an application configured from the environment, :func:`get_db`.
"""

from icn_mcp.db.database import Database, close_db, get_db
from icn_mcp.db.locks import AdvisoryLease, KeyedLocks, with_lock
from icn_mcp.db.migrations import (
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
]
