"""Database diagnostics: size, tables, indexes, migrations, last backup, health.

:func:`get_database_info` returns plain data with stable keys, so ``icn-mcp db info
--json``, a health endpoint and an MCP tool can all share it.

Row counts are exact ``count(*)`` per table, all inside one read transaction on a
dedicated connection (a consistent snapshot that never blocks writers in WAL mode).
``count(*)`` without a WHERE clause is SQLite's ``OP_Count``: it walks the leaf
pages of the smallest b-tree that covers the table (a small index when there is one)
and adds up their cell counts without decoding a single row, so it costs one read of
that b-tree. Sizes come from one aggregate ``dbstat`` query when the virtual table
is compiled in, else they are estimated (see ``size_method``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icn_mcp.db.sqlite import backup as _backup
from icn_mcp.db.sqlite import migrations as _migrations
from icn_mcp.db.sqlite.catalog import count_rows, quote_identifier, user_tables
from icn_mcp.errors import DatabaseError

if TYPE_CHECKING:
    from icn_mcp.db.sqlite.database import Database

__all__ = ["get_database_info", "quote_identifier", "count_rows", "user_tables"]

log = logging.getLogger("icn_mcp.db.info")

SIZE_METHOD_DBSTAT = "dbstat"
SIZE_METHOD_ESTIMATE = "estimate"


def _dbstat_sizes(conn: sqlite3.Connection) -> dict[str, int] | None:
    """Bytes used by each b-tree (table or index), or None without dbstat."""
    try:
        rows = conn.execute("SELECT name, pgsize FROM dbstat WHERE aggregate = 1").fetchall()
    except sqlite3.OperationalError as exc:  # "no such table: dbstat"
        log.debug("dbstat unavailable, estimating sizes: %s", exc)
        return None
    return {name: int(size) for name, size in rows}


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _missing_database(path: str, cause: str, *, hint: str | None = None) -> DatabaseError:
    return DatabaseError(f"database {path}: {cause}", hint=hint)


def get_database_info(*, db: Database, backup_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Everything an operator wants to know about ``db``, as plain data.

    :func:`icn_mcp.db.get_database_info` calls this for the process-wide database.

    Keys (stable): ``path``, ``size_bytes``, ``wal_size_bytes``, ``page_size``,
    ``page_count``, ``freelist_count``, ``journal_mode``, ``sqlite_version``,
    ``size_method`` (``"dbstat"`` or ``"estimate"``), ``tables`` (``name``,
    ``row_count``, ``size_bytes``), ``indexes`` (``name``, ``table``, ``size_bytes``),
    ``migrations`` (``version``, ``checksum``, ``applied_at``, ``execution_ms``, ...),
    ``failed_migrations``, ``last_backup`` (``path``, ``created_at``, ``size_bytes``;
    None when there is none), ``backup_temp_files`` (temporary files of backups in
    the backup directory: ``path``, ``size_bytes``, ``state`` = ``in_progress``,
    ``orphan`` or ``unknown``; see :func:`icn_mcp.db.sqlite.backup.list_temp_files`),
    ``health`` (``ok``, ``latency_ms``, ``error``) and
    ``elapsed_ms`` (how long gathering this took).

    ``backup_dir`` is where to look for the last backup (default: ``backups/``
    beside the database).
    """
    started = time.perf_counter()
    health = db.check_health()
    # Read-only and never created: a deleted database is reported, not recreated
    # empty (and 0644) by a plain connect.
    # A database opened read-only (inspection) already has the right connection, one
    # that also works where SQLite cannot create the -shm (a read-only directory).
    own = not getattr(db, "read_only", False)
    conn = _backup._open_live(db, "ro", _missing_database) if own else db.connection()
    try:
        conn.execute("BEGIN")  # one snapshot for every count and size below
        try:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            freelist_count = conn.execute("PRAGMA freelist_count").fetchone()[0]
            journal_mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            counts = count_rows(conn)
            indexes = conn.execute(
                "SELECT name, tbl_name FROM sqlite_schema WHERE type = 'index' ORDER BY name"
            ).fetchall()
            sizes = _dbstat_sizes(conn)
            history = _migrations.read_history(conn)
            failures = _migrations.read_failures(conn)
        finally:
            conn.execute("ROLLBACK")
    finally:
        if own:
            conn.close()

    if sizes is not None:
        size_method = SIZE_METHOD_DBSTAT
        table_sizes: dict[str, int | None] = {name: sizes.get(name, 0) for name in counts}
        index_sizes: dict[str, int | None] = {name: sizes.get(name, 0) for name, _ in indexes}
    else:
        # Without dbstat: share the pages in use among tables by row count. Crude
        # (rows differ in width, indexes are folded into their tables), but cheap.
        size_method = SIZE_METHOD_ESTIMATE
        used = (page_count - freelist_count) * page_size
        total_rows = sum(n for n in counts.values() if n)
        table_sizes = {
            name: (round(used * n / total_rows) if total_rows and n else 0) if n is not None else None
            for name, n in counts.items()
        }
        index_sizes = {name: None for name, _ in indexes}

    directory = Path(backup_dir) if backup_dir is not None else _backup.default_backup_dir(db)
    latest = _backup.latest_backup(directory)
    return {
        "path": str(db.path),
        "size_bytes": _file_size(db.path),
        "wal_size_bytes": _file_size(Path(f"{db.path}-wal")),
        "page_size": page_size,
        "page_count": page_count,
        "freelist_count": freelist_count,
        "journal_mode": journal_mode,
        "sqlite_version": sqlite3.sqlite_version,
        "size_method": size_method,
        "tables": [{"name": name, "row_count": n, "size_bytes": table_sizes[name]} for name, n in counts.items()],
        "indexes": [{"name": name, "table": table, "size_bytes": index_sizes[name]} for name, table in indexes],
        "migrations": [asdict(m) for m in history.values()],
        "failed_migrations": [asdict(f) for f in failures],
        "last_backup": latest,
        "backup_temp_files": _backup.list_temp_files(directory),
        "health": {
            "ok": health["ok"],
            "latency_ms": health["latency_ms"],
            "error": health["error"],
        },
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }
