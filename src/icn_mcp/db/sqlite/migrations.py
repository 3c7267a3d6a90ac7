"""Migrations on SQLite: split, apply, rehearse, and the history tables.

Files, checksums, the history records and the plan are the same on every backend and
live in :mod:`icn_mcp.db.migration_files` (re-exported here, so existing imports keep
working). This module is what is SQLite's own.

Each file runs statement by statement inside one ``BEGIN IMMEDIATE`` transaction
together with its row in ``schema_migrations``, so a failing statement leaves no trace
of the ones before it. (``executescript()`` is never used: on Python 3.11 it commits any
open transaction first.) Statements end where :func:`sqlite3.complete_statement` says
so (:func:`split_statements`).

A file whose first line is ``-- icn-mcp: no-transaction`` runs in autocommit mode,
statement by statement, for the few statements SQLite refuses inside a transaction
(VACUUM, ``PRAGMA journal_mode``, ``PRAGMA foreign_keys``). Such a file is not atomic.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
import time
from typing import TYPE_CHECKING, Iterable, Iterator

from icn_mcp.db.migration_files import (
    CHECKSUM_ALGORITHM,
    FAILURES_TABLE,
    HISTORY_TABLE,
    MIGRATION_NAME,
    NO_TRANSACTION_MARKER,
    AppliedMigration,
    DryRunResult,
    FailedMigration,
    MigrationFile,
    MigrationPlan,
    MigrationState,
    Statement,
    applier_id,
    checksum,
    default_migrations_dir,
    discover,
    normalise,
    plan_from,
    skip_comments,
    strip_comments,
)
from icn_mcp.db.timestamps import format_ts, utc_now
from icn_mcp.errors import ChecksumMismatch, MigrationError

if TYPE_CHECKING:
    from icn_mcp.db.sqlite.database import Database

__all__ = [
    # re-exported from icn_mcp.db.migration_files
    "CHECKSUM_ALGORITHM",
    "NO_TRANSACTION_MARKER",
    "HISTORY_TABLE",
    "FAILURES_TABLE",
    "MIGRATION_NAME",
    "Statement",
    "MigrationFile",
    "AppliedMigration",
    "FailedMigration",
    "MigrationState",
    "MigrationPlan",
    "DryRunResult",
    "default_migrations_dir",
    "checksum",
    "normalise",
    "discover",
    "plan_from",
    # SQLite's own
    "split_statements",
    "file_statements",
    "ensure_history_tables",
    "create_history_tables",
    "read_history",
    "read_failures",
    "plan",
    "apply",
    "apply_in_transaction",
    "dry_run",
]

log = logging.getLogger("icn_mcp.db.migrations")


# Statements SQLite refuses, or silently ignores, inside a transaction, and statements
# that would end ours early. Matched against the statement with comments removed.
_NOT_IN_TRANSACTION = re.compile(
    r"""^(?:
        VACUUM\b
      | (?:BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b
      | (?:ATTACH|DETACH)\b
      | PRAGMA\s+(?:[A-Za-z_][A-Za-z0-9_]*\s*\.\s*)?
            (?:journal_mode|foreign_keys|locking_mode|page_size|auto_vacuum|wal_checkpoint)\b
    )""",
    re.IGNORECASE | re.VERBOSE,
)

_HISTORY_COLUMNS = {
    # Added in place to a table that has only the original (TypeScript) columns.
    "description": "TEXT",
    "checksum_algorithm": "TEXT NOT NULL DEFAULT 'sha256'",
    "execution_ms": "REAL",
    "applied_by": "TEXT",
    "success": "INTEGER NOT NULL DEFAULT 1",
}


def split_statements(text: str) -> list[Statement]:
    """Split SQL text into statements, with the line on which each one starts.

    Boundaries are the semicolons at which :func:`sqlite3.complete_statement` says the
    text so far is complete, so semicolons inside strings, comments and trigger bodies
    do not split. Comment-only chunks are dropped. Text left after the last statement
    that is more than comments is an error.
    """
    statements: list[Statement] = []
    start = 0
    pos = 0
    while True:
        semi = text.find(";", pos)
        if semi < 0:
            break
        chunk = text[start : semi + 1]
        pos = semi + 1
        if not sqlite3.complete_statement(chunk):
            continue
        first = skip_comments(text, start)
        if first < semi:  # more than comments before the semicolon
            statements.append(
                Statement(
                    index=len(statements) + 1,
                    line=text.count("\n", 0, first) + 1,
                    sql=chunk.strip(),
                )
            )
        start = pos
    rest = skip_comments(text, start)
    if rest < len(text):
        line = text.count("\n", 0, rest) + 1
        raise ValueError(f"incomplete statement at line {line} (missing ';' at the end?)")
    return statements


@functools.lru_cache(maxsize=256)
def file_statements(mf: MigrationFile) -> list[Statement]:
    """The statements of ``mf`` as SQLite splits them (:func:`split_statements`).

    Raises :class:`MigrationError` for a malformed file and, in a transactional file,
    for a statement that cannot run inside the migration's transaction. Parsed once
    per file (the list is shared: do not change it), so a migration parsed before its
    write lock is taken is not parsed again while the lock is held.
    """
    try:
        found = split_statements(mf.text)
    except ValueError as exc:
        raise MigrationError(f"migration {mf.version} ({mf.path}): {exc}", version=mf.version) from None
    if mf.transactional:
        for st in found:
            if _NOT_IN_TRANSACTION.match(strip_comments(st.sql)):
                raise MigrationError(
                    f"migration {mf.version} ({mf.path}) statement {st.index} "
                    f"at line {st.line} cannot run inside the migration's "
                    f"transaction: {st.first_line}",
                    version=mf.version,
                    statement_index=st.index,
                    line=st.line,
                    statement=st.sql,
                    hint=f"put '{NO_TRANSACTION_MARKER}' on the file's first line "
                    "to run it outside a transaction (it is then not atomic), or "
                    "remove the statement: each migration already runs in one "
                    "transaction, with foreign keys off and checked before COMMIT",
                )
    return found


# -- history ------------------------------------------------------------------------


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _history_ready(conn: sqlite3.Connection) -> bool:
    if not _table_exists(conn, FAILURES_TABLE):
        return False
    columns = {row[1] for row in conn.execute(f'PRAGMA table_info("{HISTORY_TABLE}")')}
    return bool(columns) and set(_HISTORY_COLUMNS) <= columns


def ensure_history_tables(db: Database) -> None:
    """Create the tracking tables, or add our columns to an existing (older) one."""
    if _history_ready(db.connection()):
        return
    with db.write_transaction() as conn:
        create_history_tables(conn)


def create_history_tables(conn: sqlite3.Connection) -> None:
    """Inside the caller's transaction: the tracking tables, with all our columns."""
    if _history_ready(conn):
        return
    conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{HISTORY_TABLE}" ('
        "version TEXT PRIMARY KEY, applied_at TEXT NOT NULL, checksum TEXT NOT NULL)"
    )
    columns = {row[1] for row in conn.execute(f'PRAGMA table_info("{HISTORY_TABLE}")')}
    for name, decl in _HISTORY_COLUMNS.items():
        if name not in columns:
            conn.execute(f'ALTER TABLE "{HISTORY_TABLE}" ADD COLUMN "{name}" {decl}')
    conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{FAILURES_TABLE}" ('
        "id INTEGER PRIMARY KEY, version TEXT NOT NULL, checksum TEXT NOT NULL, "
        "failed_at TEXT NOT NULL, statement_index INTEGER, line INTEGER, "
        "statement TEXT, error TEXT NOT NULL, applied_by TEXT)"
    )


def read_history(conn: sqlite3.Connection) -> dict[str, AppliedMigration]:
    """Applied migrations by version, oldest first; empty when nothing was tracked."""
    if not _table_exists(conn, HISTORY_TABLE):
        return {}
    columns = {row[1] for row in conn.execute(f'PRAGMA table_info("{HISTORY_TABLE}")')}
    wanted = ["version", "checksum", "applied_at"] + [
        c for c in ("description", "checksum_algorithm", "execution_ms", "applied_by") if c in columns
    ]
    where = "WHERE success = 1" if "success" in columns else ""
    rows = conn.execute(f'SELECT {", ".join(wanted)} FROM "{HISTORY_TABLE}" {where} ORDER BY version').fetchall()
    history: dict[str, AppliedMigration] = {}
    for row in rows:
        values = dict(zip(wanted, row, strict=True))
        values["applied_at"] = str(values["applied_at"])
        history[values["version"]] = AppliedMigration(**values)
    return history


def read_failures(conn: sqlite3.Connection) -> list[FailedMigration]:
    """Every recorded failure, oldest first."""
    if not _table_exists(conn, FAILURES_TABLE):
        return []
    rows = conn.execute(
        "SELECT version, checksum, failed_at, statement_index, line, statement, error, "
        f'applied_by FROM "{FAILURES_TABLE}" ORDER BY id'
    ).fetchall()
    return [FailedMigration(*row) for row in rows]


# -- plan ---------------------------------------------------------------------------


def plan(conn: sqlite3.Connection, files: Iterable[MigrationFile]) -> MigrationPlan:
    """Compare ``files`` with the history in ``conn``; touches nothing."""
    return plan_from(read_history(conn), read_failures(conn), files)


# -- apply --------------------------------------------------------------------------


def _execute_all(conn: sqlite3.Connection, mf: MigrationFile) -> None:
    """Run every statement of ``mf``; a failure becomes a detailed MigrationError."""
    for st in file_statements(mf):
        try:
            conn.execute(st.sql)
        except sqlite3.Error as exc:
            raise MigrationError(
                f"migration {mf.version} failed at statement {st.index} (line {st.line}: {st.first_line}): {exc}",
                version=mf.version,
                statement_index=st.index,
                line=st.line,
                statement=st.sql,
                sqlite_error=str(exc),
                hint=f"fix {mf.path}; nothing of this migration was kept"
                if mf.transactional
                else f"fix {mf.path}; it is a no-transaction migration, so statements before the failing one were kept",
            ) from exc


def _record_failure(db: Database, mf: MigrationFile, error: MigrationError) -> None:
    try:
        with db.write_transaction() as conn:
            conn.execute(
                f'INSERT INTO "{FAILURES_TABLE}" (version, checksum, failed_at, '
                "statement_index, line, statement, error, applied_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    mf.version,
                    mf.checksum,
                    format_ts(utc_now()),
                    error.statement_index,
                    error.line,
                    error.statement,
                    error.sqlite_error or str(error),
                    applier_id(),
                ),
            )
    except Exception:  # the original failure matters more than its record
        log.exception("could not record the failure of migration %s", mf.version)


def _insert_history(conn: sqlite3.Connection, mf: MigrationFile, elapsed_ms: float, *, success: bool = True) -> None:
    conn.execute(
        f'INSERT INTO "{HISTORY_TABLE}" (version, applied_at, checksum, description, '
        "checksum_algorithm, execution_ms, applied_by, success) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            mf.version,
            format_ts(utc_now()),
            mf.checksum,
            mf.description,
            CHECKSUM_ALGORITHM,
            round(elapsed_ms, 3),
            applier_id(),
            1 if success else 0,
        ),
    )


def _check_foreign_keys(conn: sqlite3.Connection, mf: MigrationFile) -> None:
    """Refuse a migration that leaves rows pointing at nothing (SQLite's procedure)."""
    violations = conn.execute("PRAGMA foreign_key_check").fetchall()
    if violations:
        table, rowid, parent, _ = violations[0]
        message = (
            f"FOREIGN KEY check failed: {len(violations)} row(s) point at nothing, "
            f"first {table} rowid {rowid} -> {parent}"
        )
        raise MigrationError(
            f"migration {mf.version} failed: {message}",
            version=mf.version,
            sqlite_error=message,
            hint=f"fix {mf.path}; nothing of this migration was kept",
        )


@contextlib.contextmanager
def _foreign_keys_off(conn: sqlite3.Connection) -> Iterator[None]:
    """Foreign keys off around one migration, as SQLite's docs prescribe for schema changes.

    With them on, the standard table rebuild (CREATE new, copy, DROP old, RENAME)
    makes DROP TABLE an implicit DELETE that cascades into every child table and
    empties it, silently. They are checked with foreign_key_check before COMMIT
    instead. The pragma cannot change inside a transaction, hence outside.
    """
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        conn.execute("PRAGMA foreign_keys = ON")


def _apply_one(db: Database, mf: MigrationFile) -> bool:
    """Apply ``mf`` unless another process already did; True if we applied it."""
    file_statements(mf)  # parse (and refuse bad statements) before taking the write lock
    if not mf.transactional:
        return _apply_outside_transaction(db, mf)
    with _foreign_keys_off(db.connection()), db.write_transaction() as conn:
        # Re-read while holding the write lock: another process may have won the race.
        row = conn.execute(f'SELECT checksum FROM "{HISTORY_TABLE}" WHERE version = ?', (mf.version,)).fetchone()
        if row is not None:
            if row[0] != mf.checksum:
                raise ChecksumMismatch(mf.version, row[0], mf.checksum)
            return False
        started = time.perf_counter()
        _execute_all(conn, mf)
        _check_foreign_keys(conn, mf)
        _insert_history(conn, mf, (time.perf_counter() - started) * 1000)
    return True


#: How long a process waits for another one that is running a no-transaction migration.
NO_TRANSACTION_WAIT_S = 60.0


def _apply_outside_transaction(db: Database, mf: MigrationFile) -> bool:
    """Run a no-transaction migration once across processes.

    Its history row is claimed first (success = 0) so that other processes wait for
    it instead of running it again; the statements run in autocommit mode; the row is
    then marked done, or removed if a statement failed.
    """
    deadline = time.monotonic() + NO_TRANSACTION_WAIT_S
    while True:
        with db.write_transaction() as conn:
            row = conn.execute(
                f'SELECT checksum, success, applied_by, applied_at FROM "{HISTORY_TABLE}" WHERE version = ?',
                (mf.version,),
            ).fetchone()
            if row is None:
                _insert_history(conn, mf, 0.0, success=False)
                break
            if row[1] == 1:
                if row[0] != mf.checksum:
                    raise ChecksumMismatch(mf.version, row[0], mf.checksum)
                return False
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"no-transaction migration {mf.version} was started by {row[2]} at {row[3]} and has not finished",
                version=mf.version,
                hint="if that process is gone, check the schema by hand, then delete its "
                "row from schema_migrations (success = 0) to run it again",
            )
        time.sleep(0.05)  # another process is running it: wait for its outcome
    conn = db.connection()
    started = time.perf_counter()
    try:
        _execute_all(conn, mf)
    except MigrationError:
        with db.write_transaction() as wconn:
            wconn.execute(f'DELETE FROM "{HISTORY_TABLE}" WHERE version = ?', (mf.version,))
        raise
    elapsed_ms = (time.perf_counter() - started) * 1000
    with db.write_transaction() as wconn:
        wconn.execute(
            f'UPDATE "{HISTORY_TABLE}" SET success = 1, execution_ms = ? WHERE version = ?',
            (round(elapsed_ms, 3), mf.version),
        )
    return True


def apply(
    db: Database,
    files: list[MigrationFile],
    *,
    allow_missing: bool = False,
    allow_out_of_order: bool = False,
) -> list[str]:
    """Apply every pending migration in order; the versions this call applied.

    Refuses to start (touching nothing) when an applied file changed, an applied file
    is missing or a new file sorts before the latest applied one, unless allowed.
    """
    ensure_history_tables(db)
    current = plan(db.connection(), files)
    problems = current.problems(allow_missing=allow_missing, allow_out_of_order=allow_out_of_order)
    if problems:
        raise problems[0]
    if not current.pending:
        return []
    by_version = {mf.version: mf for mf in files}
    applied: list[str] = []
    for item in current.pending:
        mf = by_version[item.version]
        try:
            did = db.run_in_transaction_retrying(functools.partial(_apply_one, db, mf))
        except MigrationError as exc:
            if exc.sqlite_error is not None:  # the file's content failed, not its history
                log.error(
                    "migration %s failed: file %s, statement %s, line %s (%s): %s",
                    mf.version,
                    mf.path,
                    exc.statement_index,
                    exc.line,
                    (exc.statement or "").splitlines()[0] if exc.statement else "",
                    exc.sqlite_error,
                )
                _record_failure(db, mf, exc)
            raise
        if did:
            log.info("applied migration %s", mf.version)
            applied.append(mf.version)
    return applied


def apply_in_transaction(
    conn: sqlite3.Connection,
    files: list[MigrationFile],
    *,
    allow_missing: bool = False,
    allow_out_of_order: bool = False,
) -> list[str]:
    """Apply pending migrations on ``conn``, inside the caller's write transaction.

    For a caller that must publish data and schema as ONE commit (a restore: no
    other connection may see restored data under the old schema). Foreign keys must
    be off on ``conn``; each migration is checked with foreign_key_check. Stops
    before the first no-transaction migration (it cannot run inside a transaction);
    the caller applies the rest after its commit with :func:`apply`. Returns the
    versions applied; any failure raises and the caller rolls everything back.
    """
    create_history_tables(conn)
    current = plan(conn, files)
    problems = current.problems(allow_missing=allow_missing, allow_out_of_order=allow_out_of_order)
    if problems:
        raise problems[0]
    by_version = {mf.version: mf for mf in files}
    applied: list[str] = []
    for item in current.pending:
        mf = by_version[item.version]
        if not mf.transactional:
            break
        started = time.perf_counter()
        _execute_all(conn, mf)
        _check_foreign_keys(conn, mf)
        _insert_history(conn, mf, (time.perf_counter() - started) * 1000)
        applied.append(mf.version)
    return applied


def dry_run(target: Database | sqlite3.Connection, files: list[MigrationFile]) -> list[DryRunResult]:
    """Apply the pending migrations inside one transaction and roll it back.

    ``target`` is a database or a connection in autocommit mode (the CLI passes a
    scratch copy, so a dry run never touches the file). Everything, the history tables
    included, happens inside the rolled-back transaction: a dry run leaves no trace.
    Stops at the first failure (later files depend on earlier ones). No-transaction
    migrations, and everything after one, cannot be rehearsed and are reported skipped.
    """
    conn = target if isinstance(target, sqlite3.Connection) else target.connection()
    by_version = {mf.version: mf for mf in files}
    results: list[DryRunResult] = []
    with _foreign_keys_off(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not _history_ready(conn):
                create_history_tables(conn)
            pending = plan(conn, files).pending
            blocked = False
            for item in pending:
                mf = by_version[item.version]
                if blocked or not mf.transactional:
                    blocked = True
                    results.append(DryRunResult(mf.version, False, 0, "not rehearsed", True))
                    continue
                try:
                    _execute_all(conn, mf)
                    _check_foreign_keys(conn, mf)
                except MigrationError as exc:
                    try:
                        count = len(file_statements(mf))
                    except MigrationError:  # the file itself is what failed (its parse)
                        count = 0
                    results.append(DryRunResult(mf.version, False, count, str(exc)))
                    blocked = True
                    continue
                results.append(DryRunResult(mf.version, True, len(file_statements(mf))))
                if not conn.in_transaction:  # e.g. RAISE(ROLLBACK) in a trigger ended it
                    break
        finally:
            # A statement may have ended the transaction itself (INSERT OR ROLLBACK,
            # RAISE(ROLLBACK), a full disk); a bare ROLLBACK would then hide the report.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    return results
