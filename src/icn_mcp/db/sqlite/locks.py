"""The SQL of advisory locks (leases) on SQLite; the logic is in :mod:`icn_mcp.db.leases`.

A lease is one row in ``advisory_locks`` with an owner and an expiry, taken inside
``BEGIN IMMEDIATE``; an expired lease may be taken over, so a holder killed with -9
loses the lock when its lease ends.
"""

from __future__ import annotations

from typing import Any

from icn_mcp.db.timestamps import format_ts, utc_now

__all__ = ["SQLiteLeaseSQL"]

# -- advisory locks ----------------------------------------------------------------


_ACQUIRE_SQL = """
INSERT INTO advisory_locks (name, owner, acquired_at, expires_at)
VALUES (?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    owner = excluded.owner,
    acquired_at = excluded.acquired_at,
    expires_at = excluded.expires_at
WHERE advisory_locks.expires_at <= excluded.acquired_at
   OR advisory_locks.owner = excluded.owner
RETURNING owner
"""


class SQLiteLeaseSQL:
    """``advisory_locks`` statements for SQLite (inside ``BEGIN IMMEDIATE``).

    Times come from this host's clock: every writer of one SQLite file is on the
    same machine, so they share it.
    """

    def take(self, conn: Any, name: str, owner: str, ttl_s: float) -> tuple[str, str] | None:
        now = utc_now()
        acquired_at, expires_at = format_ts(now), format_ts(now, plus_s=ttl_s)
        row = conn.execute(_ACQUIRE_SQL, (name, owner, acquired_at, expires_at)).fetchone()
        return None if row is None else (acquired_at, expires_at)

    def holder(self, conn: Any, name: str) -> tuple[str, str] | None:
        row = conn.execute("SELECT owner, expires_at FROM advisory_locks WHERE name = ?", (name,)).fetchone()
        return None if row is None else (row[0], row[1])

    def renew(self, conn: Any, name: str, owner: str, ttl_s: float) -> str | None:
        now = utc_now()
        expires_at = format_ts(now, plus_s=ttl_s)
        updated = conn.execute(
            "UPDATE advisory_locks SET expires_at = ? WHERE name = ? AND owner = ? AND expires_at > ?",
            (expires_at, name, owner, format_ts(now)),
        ).rowcount
        return expires_at if updated == 1 else None

    def release(self, conn: Any, name: str, owner: str) -> int:
        return int(conn.execute("DELETE FROM advisory_locks WHERE name = ? AND owner = ?", (name, owner)).rowcount)
