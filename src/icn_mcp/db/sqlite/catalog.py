"""SQLite catalog helpers shared by info and backup: table names and row counts."""

from __future__ import annotations

import sqlite3

__all__ = ["quote_identifier", "user_tables", "count_rows"]


def quote_identifier(name: str) -> str:
    """``name`` as an SQL identifier: in double quotes, inner quotes doubled.

    Safe for any table name, including ones with quotes, spaces, brackets or
    newlines; a NUL character cannot appear in an SQLite identifier.
    """
    return '"' + name.replace('"', '""') + '"'


def user_tables(conn: sqlite3.Connection) -> list[tuple[str, bool]]:
    """``(name, is_virtual)`` of every table but SQLite's own ``sqlite_*`` ones."""
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name"
    ).fetchall()
    return [(name, (sql or "").lstrip().upper().startswith("CREATE VIRTUAL")) for name, sql in rows]


def count_rows(conn: sqlite3.Connection) -> dict[str, int | None]:
    """Exact row count of every table by name (None for virtual tables).

    Virtual tables are skipped because counting them may call into a module that
    is not loaded here, or scan an external source.
    """
    counts: dict[str, int | None] = {}
    for name, virtual in user_tables(conn):
        if virtual:
            counts[name] = None
            continue
        counts[name] = conn.execute(f"SELECT count(*) FROM {quote_identifier(name)}").fetchone()[0]
    return counts
