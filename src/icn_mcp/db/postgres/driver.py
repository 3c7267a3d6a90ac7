"""The psycopg import, done once and lazily, with one clear error when it is missing."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from icn_mcp.errors import DatabaseError

__all__ = ["load", "EXTRA_HINT"]

EXTRA_HINT = "pip install 'icn-mcp[postgres]'"


def load() -> tuple[ModuleType, Any]:
    """``(psycopg, psycopg_pool.ConnectionPool)``, or DatabaseError naming the extra."""
    try:
        import psycopg
        from psycopg_pool import ConnectionPool
    except ImportError as exc:
        raise DatabaseError(
            f"MCP_DB_URL selects PostgreSQL, which needs the 'postgres' extra "
            f"({exc.name or 'psycopg'} is not installed): {EXTRA_HINT}"
        ) from None
    return psycopg, ConnectionPool
