"""The exported names are exactly the public ones, and each is documented."""

from __future__ import annotations

import icn_mcp.db
import icn_mcp.errors

EXPECTED_DB = {
    "Database",
    "get_db",
    "close_db",
    "with_lock",
    "KeyedLocks",
    "AdvisoryLease",
    # the contract and the backend choice (issue 10)
    "BaseDatabase",
    "open_database",
    "MigrationPlan",
    "MigrationState",
    "AppliedMigration",
    "FailedMigration",
    "DryRunResult",
    # backup.py and info.py (issue 3), each with an async variant for servers
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
}


def test_db_exports_exactly_the_public_names() -> None:
    assert set(icn_mcp.db.__all__) == EXPECTED_DB
    for name in icn_mcp.db.__all__:
        assert getattr(icn_mcp.db, name).__doc__, f"{name} has no docstring"


def test_every_error_derives_from_the_root_and_is_exported() -> None:
    for name in icn_mcp.errors.__all__:
        cls = getattr(icn_mcp.errors, name)
        assert issubclass(cls, icn_mcp.errors.IcnMcpError)
        assert cls.__doc__
        assert name in icn_mcp.errors.__doc__, f"{name} missing from the error tree"
