"""Diagnostics of a PostgreSQL database from its catalogs, as plain data.

The keys shared with SQLite's :func:`icn_mcp.db.sqlite.info.get_database_info` mean
the same (``tables`` with ``name``/``row_count``/``size_bytes``, ``indexes``,
``migrations``, ``failed_migrations``, ``health``, ``elapsed_ms``); PostgreSQL adds
``server_version`` and ``pool``. Row counts are exact ``count(*)`` per table inside
one ``REPEATABLE READ`` snapshot: a sequential (or index-only) scan each, about a
second per 10M narrow rows, which is why ``/healthz/db`` caches the result.
Sizes are ``pg_total_relation_size`` (table, TOAST and indexes).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from icn_mcp.db.backup_files import manifest_path
from icn_mcp.db.postgres import backup as _backup
from icn_mcp.db.postgres import migrations as _pg_migrations

if TYPE_CHECKING:
    from icn_mcp.db.postgres.database import PostgresDatabase

__all__ = ["get_database_info"]


def last_backup(backup_dir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """``{"path", "created_at", "size_bytes"}`` of the newest dump in ``backup_dir``."""
    if backup_dir is None:
        return None
    for path in reversed(_backup.list_backups(backup_dir)):
        try:
            size = path.stat().st_size
            manifest = json.loads(manifest_path(path).read_text("utf-8"))
        except (OSError, ValueError):
            continue  # pruned meanwhile, or no manifest: not a published backup
        return {"path": str(path), "created_at": manifest.get("created_at"), "size_bytes": size}
    return None


def get_database_info(db: PostgresDatabase, *, backup_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Everything an operator wants to know about ``db``; stable keys.

    ``last_backup`` is the newest dump in ``backup_dir`` (None without one).
    """
    from psycopg import sql

    started = time.perf_counter()
    health = db.check_health()
    with db.read_transaction() as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        version = conn.execute("SHOW server_version").fetchone()[0]
        tables = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
            "ORDER BY c.relname"
        ).fetchall()
        counts = {
            name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()[0]
            for name, _ in tables
        }
        indexes = conn.execute(
            "SELECT i.relname, t.relname, pg_relation_size(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
            "WHERE t.relnamespace = current_schema()::regnamespace ORDER BY i.relname"
        ).fetchall()
        history = _pg_migrations.read_history(conn)
        failures = _pg_migrations.read_failures(conn)
    return {
        "backend": "postgresql",
        "path": db.target,
        "size_bytes": size,
        "server_version": version,
        "size_method": "pg_total_relation_size",
        "tables": [{"name": name, "row_count": counts[name], "size_bytes": nbytes} for name, nbytes in tables],
        "indexes": [{"name": name, "table": table, "size_bytes": nbytes} for name, table, nbytes in indexes],
        "migrations": [asdict(m) for m in history.values()],
        "failed_migrations": [asdict(f) for f in failures],
        "last_backup": last_backup(backup_dir),
        "pool": db.get_stats(),
        "health": {"ok": health["ok"], "latency_ms": health["latency_ms"], "error": health["error"]},
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }
