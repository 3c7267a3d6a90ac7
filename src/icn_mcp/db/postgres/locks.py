"""The SQL of advisory locks (leases) on PostgreSQL; the logic is in :mod:`icn_mcp.db.leases`.

Every time that decides ownership is the database server's ``now()``, never a
host's clock: hosts whose clocks disagree by seconds can neither steal a live
lease nor keep an expired one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PostgresLeaseSQL"]

_TAKE_SQL = """
INSERT INTO advisory_locks (name, owner, acquired_at, expires_at)
VALUES (%s, %s, now(), now() + make_interval(secs => %s))
ON CONFLICT (name) DO UPDATE SET
    owner = excluded.owner,
    acquired_at = excluded.acquired_at,
    expires_at = excluded.expires_at
WHERE advisory_locks.expires_at <= excluded.acquired_at
   OR advisory_locks.owner = excluded.owner
RETURNING acquired_at, expires_at
"""


class PostgresLeaseSQL:
    """``advisory_locks`` statements for PostgreSQL, timed by the server's clock."""

    def take(self, conn: Any, name: str, owner: str, ttl_s: float) -> tuple[str, str] | None:
        row = conn.execute(_TAKE_SQL, (name, owner, float(ttl_s))).fetchone()
        return None if row is None else (row[0], row[1])

    def holder(self, conn: Any, name: str) -> tuple[str, str] | None:
        row = conn.execute("SELECT owner, expires_at FROM advisory_locks WHERE name = %s", (name,)).fetchone()
        return None if row is None else (row[0], row[1])

    def renew(self, conn: Any, name: str, owner: str, ttl_s: float) -> str | None:
        row = conn.execute(
            "UPDATE advisory_locks SET expires_at = now() + make_interval(secs => %s) "
            "WHERE name = %s AND owner = %s AND expires_at > now() RETURNING expires_at",
            (float(ttl_s), name, owner),
        ).fetchone()
        return None if row is None else row[0]

    def release(self, conn: Any, name: str, owner: str) -> int:
        return int(conn.execute("DELETE FROM advisory_locks WHERE name = %s AND owner = %s", (name, owner)).rowcount)
