"""The store's SQL on SQLite: one writer, ``BEGIN IMMEDIATE``, the host's clock.

Claiming is one ``BEGIN IMMEDIATE`` transaction whose work is one indexed ``UPDATE
... WHERE id = (SELECT ... LIMIT 1) RETURNING``: the partial index
``tasks_claim_order`` holds exactly the claimable rows (open, no unmet dependency) in
claim order, so the first index entry is the task to claim at any table size. The
same statement probes ``tasks_lease`` for an expired lease and claims nothing if
there is one; then (rarely) the expired claims are recorded as ``expired`` runs and
put back to open (or failed, when out of attempts), which makes them claimable
through the same index, and the claim runs again. docs/store.md has the details.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator, TypeVar

from icn_mcp.db.timestamps import format_ts
from icn_mcp.store.models import TASK_COLUMNS
from icn_mcp.store.sql.common import DASHBOARD_AGENTS, DASHBOARD_HELD, PORTABLE, Queries

__all__ = ["SqliteQueries", "CLAIM_SQL", "EXPIRED_LEASE_PROBE_SQL"]

T = TypeVar("T")

#: Is there any expired lease? One probe of ``tasks_lease``; normally finds nothing.
#: (Left to itself the planner picks ``tasks_status`` and walks every claimed row.)
EXPIRED_LEASE_PROBE_SQL = (
    "SELECT 1 FROM tasks INDEXED BY tasks_lease WHERE status = 'claimed' AND lease_expires_at <= ? LIMIT 1"
)

_RECORD_EXPIRED_RUNS = """
    INSERT INTO runs (task_id, agent_id, attempt, status, notes, created_at)
    SELECT id, claimed_by, attempt, 'expired', 'lease expired at ' || lease_expires_at, :now
    FROM tasks INDEXED BY tasks_lease
    WHERE status = 'claimed' AND lease_expires_at <= :now
    ORDER BY lease_expires_at, id
"""

# An expired claim counts as a failed attempt: back to open while attempts remain.
_RELEASE_EXPIRED = """
    UPDATE tasks SET
        status = CASE WHEN attempt >= max_attempts THEN 'failed' ELSE 'open' END,
        claimed_by = CASE WHEN attempt >= max_attempts THEN claimed_by END,
        lease_expires_at = NULL,
        lease_s = NULL,
        updated_at = :now
    WHERE id IN (
        SELECT id FROM tasks INDEXED BY tasks_lease
        WHERE status = 'claimed' AND lease_expires_at <= :now
    )
"""

#: The claim itself. The WHERE terms of the subquery are exactly those of the
#: partial index ``tasks_claim_order``, so SQLite reads its first entry and stops.
#: It claims nothing while an expired lease waits to be released (one probe of
#: ``tasks_lease``), so that an expired claim of higher priority is not passed over.
#: ``INDEXED BY`` because without statistics the planner prefers ``tasks_status``
#: (status = ?) and then sorts every open task; if the index were ever missing the
#: statement fails loudly instead of silently scanning.
CLAIM_SQL = f"""
    UPDATE tasks SET
        status = 'claimed',
        claimed_by = :agent_id,
        attempt = attempt + 1,
        lease_expires_at = :lease_expires_at,
        lease_s = :lease_s,
        updated_at = :now
    WHERE id = (
        SELECT id FROM tasks INDEXED BY tasks_claim_order
        WHERE status = 'open' AND blocking_deps = 0
        ORDER BY priority DESC, created_at, id
        LIMIT 1
    )
    AND EXISTS (SELECT 1 FROM agents WHERE id = :agent_id AND revoked_at IS NULL)
    AND NOT EXISTS (
        SELECT 1 FROM tasks INDEXED BY tasks_lease
        WHERE status = 'claimed' AND lease_expires_at <= :now
    )
    RETURNING {TASK_COLUMNS}
"""

_NEXT_LEASE_EXPIRY = "SELECT min(lease_expires_at) FROM tasks INDEXED BY tasks_lease WHERE status = 'claimed'"

_END_LEASES_OF_REVOKED_AGENTS = (
    "UPDATE tasks SET lease_expires_at = :now, updated_at = :now WHERE id IN ("
    " SELECT id FROM tasks INDEXED BY tasks_lease"
    " WHERE status = 'claimed' AND lease_expires_at > :now"
    " AND claimed_by IN (SELECT id FROM agents WHERE revoked_at IS NOT NULL))"
)


class SqliteQueries(Queries):
    """SQLite: statements as written, the store's clock, ``BEGIN IMMEDIATE`` writes."""

    backend = "sqlite"
    DASHBOARD_AGENTS = DASHBOARD_AGENTS.format(runs_agent="INDEXED BY runs_agent")
    DASHBOARD_HELD = DASHBOARD_HELD.format(tasks_status="INDEXED BY tasks_status")

    def wrap(self, conn: Any) -> Any:
        return conn

    @contextmanager
    def read(self, db: Any) -> Iterator[Any]:
        # The thread's own connection in autocommit: a single read needs no snapshot.
        yield db.connection()

    def write(self, db: Any, fn: Callable[[Any], T]) -> T:
        return db.run_in_transaction(fn)

    def locking_write(self, db: Any, fn: Callable[[Any], T]) -> T:
        return db.run_in_transaction(fn)

    def now(self, conn: Any, clock: Callable[[], datetime]) -> datetime:
        # One host: its clock, read inside the transaction (after BEGIN IMMEDIATE got the
        # write lock), so work that waited for the lock is judged when it runs.
        return clock()

    def claim(self, conn: Any, agent_id: str, lease_s: float, clock: Callable[[], datetime]) -> Any:
        moment = clock()
        now = format_ts(moment)
        params = {
            "agent_id": agent_id,
            "lease_expires_at": format_ts(moment, plus_s=lease_s),
            "lease_s": lease_s,
            "now": now,
        }
        rows = conn.execute(CLAIM_SQL, params).fetchall()
        if rows:
            return rows[0]
        # Nothing claimed: an expired lease to release first, nothing claimable, or an
        # agent that may not claim (the caller tells which).
        if conn.execute(EXPIRED_LEASE_PROBE_SQL, (now,)).fetchone() is not None:
            conn.execute(_RECORD_EXPIRED_RUNS, {"now": now})
            conn.execute(_RELEASE_EXPIRED, {"now": now})
            rows = conn.execute(CLAIM_SQL, params).fetchall()
            if rows:
                return rows[0]
        return None

    def next_lease_expiry(self, conn: Any) -> str | None:
        row = conn.execute(_NEXT_LEASE_EXPIRY).fetchone()
        return row[0] if row is not None else None

    def end_leases_of_revoked_agents(self, conn: Any, now: str) -> None:
        conn.execute(_END_LEASES_OF_REVOKED_AGENTS, {"now": now})

    def dependency_statuses(self, conn: Any, deps: list[int]) -> list[tuple[int, str | None]]:
        rows = conn.execute(
            "SELECT j.value AS id, t.status FROM json_each(?) AS j LEFT JOIN tasks AS t ON t.id = j.value",
            (json.dumps(deps),),
        ).fetchall()
        return [(row["id"], row["status"]) for row in rows]

    def insert_dependencies(self, conn: Any, task_id: int, deps: list[int]) -> None:
        conn.execute(
            "INSERT INTO task_dependencies (task_id, depends_on_id) SELECT ?, value FROM json_each(?)",
            (task_id, json.dumps(deps)),
        )


for _name, _sql in PORTABLE.items():
    setattr(SqliteQueries, _name, _sql)
