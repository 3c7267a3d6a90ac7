"""The psycopg import, done once and lazily, with one clear error when it is missing."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from icn_mcp.errors import DatabaseError

__all__ = ["load", "EXTRA_HINT", "DEAD_PEER_SETTINGS"]

EXTRA_HINT = "pip install 'icn-mcp[postgres]'"

#: Libpq settings on every connection so that a peer gone silent (a host cut off, a
#: server powered off) is noticed in seconds, not after TCP's ~15 minutes of
#: retransmissions: keepalive probes after 5 s idle (every 2 s, 3 tries), and data
#: sent but not acknowledged for 5 s (a statement sent into a dead link) breaks the
#: connection. The request then fails (or is retried, when it had not reached
#: COMMIT) instead of hanging with its worker thread.
DEAD_PEER_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 5_000,
}


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
