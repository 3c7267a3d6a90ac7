"""The store's SQL on PostgreSQL: many hosts, row locks, the server's clock.

Every moment that decides ownership (claim time, lease expiry, token expiry) is the
database server's ``now()`` (the transaction's start on the server), never a host's
clock: hosts sharing one database may disagree about the time, the server does not
(DESIGN.md guarantee 10). Timestamps still read back as icn-mcp's fixed-width UTC
text (the loader of :mod:`icn_mcp.db.postgres.database`).

Claims run under ``READ COMMITTED`` (SERIALIZABLE makes concurrent claimers of
different rows conflict on the index range they read: bench/bench_pg_transactions.py)
as one ``UPDATE ... WHERE id = (SELECT ... ORDER BY priority DESC, created_at, id
LIMIT 1 FOR UPDATE SKIP LOCKED)``: the subquery's terms are those of the partial
index ``tasks_claim_order`` (migration 0002), so it reads the first index entry no
other claimer holds. The same statement claims nothing while an expired lease that no
other claimer is releasing waits (so an expired claim of higher priority is not
passed over); the claimer then records the expired claims as ``expired`` runs and
puts them back in one statement that locks them ``SKIP LOCKED`` (each expired claim
is released by exactly one claimer), and claims again. Reports and an agent's
artifacts also run under READ COMMITTED, with the task row locked ``FOR UPDATE``
before the claim is checked; everything else runs in SERIALIZABLE transactions,
retried by the database layer.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator, TypeVar

from icn_mcp.db.timestamps import format_ts, parse_ts
from icn_mcp.store.models import TASK_COLUMNS
from icn_mcp.store.sql.common import CLAIM_COLUMNS, DASHBOARD_AGENTS, DASHBOARD_HELD, PORTABLE, Queries

__all__ = ["PostgresQueries", "CLAIM_SQL", "REQUEUE_EXPIRED_SQL", "to_pyformat"]

T = TypeVar("T")

_TEXT_TS = """to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

#: The claim: one statement, the first unlocked entry of ``tasks_claim_order``.
CLAIM_SQL = f"""
    UPDATE tasks SET
        status = 'claimed',
        claimed_by = %(agent_id)s,
        attempt = attempt + 1,
        lease_expires_at = now() + make_interval(secs => %(lease_s)s::float8),
        lease_s = %(lease_s)s::float8,
        updated_at = now()
    WHERE id = (
        SELECT id FROM tasks
        WHERE status = 'open' AND blocking_deps = 0
        ORDER BY priority DESC, created_at, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    AND EXISTS (SELECT 1 FROM agents WHERE id = %(agent_id)s AND revoked_at IS NULL)
    AND NOT EXISTS (
        SELECT 1 FROM tasks AS expired
        WHERE expired.status = 'claimed' AND expired.lease_expires_at <= now()
        FOR UPDATE SKIP LOCKED
    )
    RETURNING {TASK_COLUMNS}
"""

#: Is there an expired lease no other claimer is releasing? (``tasks_lease``.)
EXPIRED_LEASE_PROBE_SQL = (
    "SELECT 1 FROM tasks WHERE status = 'claimed' AND lease_expires_at <= now() LIMIT 1 FOR UPDATE SKIP LOCKED"
)

#: Record the expired claims as ``expired`` runs and put them back to open (or failed,
#: out of attempts), in one statement over the rows it could lock.
REQUEUE_EXPIRED_SQL = f"""
    WITH expired AS (
        SELECT id, claimed_by, attempt, lease_expires_at FROM tasks
        WHERE status = 'claimed' AND lease_expires_at <= now()
        ORDER BY lease_expires_at, id
        FOR UPDATE SKIP LOCKED
    ), recorded AS (
        INSERT INTO runs (task_id, agent_id, attempt, status, notes, created_at)
        SELECT id, claimed_by, attempt, 'expired',
               'lease expired at ' || {_TEXT_TS.format(col="lease_expires_at")}, now()
        FROM expired ORDER BY lease_expires_at, id
    )
    UPDATE tasks SET
        status = CASE WHEN tasks.attempt >= tasks.max_attempts THEN 'failed' ELSE 'open' END,
        claimed_by = CASE WHEN tasks.attempt >= tasks.max_attempts THEN tasks.claimed_by END,
        lease_expires_at = NULL,
        lease_s = NULL,
        updated_at = now()
    FROM expired WHERE tasks.id = expired.id
"""

_NEXT_LEASE_EXPIRY = "SELECT min(lease_expires_at) FROM tasks WHERE status = 'claimed'"

_END_LEASES_OF_REVOKED_AGENTS = """
    UPDATE tasks SET lease_expires_at = %(now)s, updated_at = %(now)s
    WHERE status = 'claimed' AND lease_expires_at > %(now)s
      AND claimed_by IN (SELECT id FROM agents WHERE revoked_at IS NOT NULL)
"""

#: The dependencies of a new task, locked FOR SHARE until it commits: a dependency
#: completing meanwhile waits, then (READ COMMITTED, a fresh snapshot per statement)
#: its release of dependents sees the new edge; one that completed first is read as
#: completed. Either way the new task's blocking_deps is right.
_DEPENDENCY_STATUSES = "SELECT id, status FROM tasks WHERE id = ANY(%s::bigint[]) ORDER BY id FOR SHARE"

_INSERT_DEPENDENCIES = "INSERT INTO task_dependencies (task_id, depends_on_id) SELECT %s, unnest(%s::bigint[])"

#: A report's lock and clock in one statement: the task's claim columns, locked until
#: commit, and the transaction's time.
_LOCKED_CLAIM_ROW = f"SELECT now() AS now, {CLAIM_COLUMNS} FROM tasks WHERE id = %s FOR UPDATE"

#: An accepted report's writes as one statement (run with the row already locked by
#: :data:`_LOCKED_CLAIM_ROW`, so its snapshot, taken after that lock was granted, sees
#: every dependency edge committed before: see _DEPENDENCY_STATUSES). The task's own
#: row and its dependents' rows are different rows (a task never depends on itself).
_RECORD_RUN = """
    INSERT INTO runs (task_id, agent_id, attempt, status, notes, created_at)
    VALUES (%(task_id)s, %(agent_id)s, %(attempt)s, %(status)s, %(notes)s, %(now)s)
    RETURNING *
"""
_REPORT_WRITES = {
    "claimed": "WITH touched AS (UPDATE tasks SET updated_at = %(now)s WHERE id = %(task_id)s)",
    "in_progress": """WITH renewed AS (
        UPDATE tasks SET lease_expires_at = %(lease_until)s, updated_at = %(now)s WHERE id = %(task_id)s
    )""",
    "completed": """WITH completed AS (
        UPDATE tasks SET status = 'completed', lease_expires_at = NULL, lease_s = NULL, updated_at = %(now)s
        WHERE id = %(task_id)s
    ), released AS (
        UPDATE tasks SET blocking_deps = blocking_deps - 1, updated_at = %(now)s
        WHERE id IN (SELECT task_id FROM task_dependencies WHERE depends_on_id = %(task_id)s)
    )""",
    "failed": """WITH failed AS (
        UPDATE tasks SET status = %(next_status)s, claimed_by = %(keep_claimer)s, lease_expires_at = NULL,
            lease_s = NULL, updated_at = %(now)s
        WHERE id = %(task_id)s
    )""",
}
_REPORT_SQL = {status: writes + _RECORD_RUN for status, writes in _REPORT_WRITES.items()}

#: A report that names its attempt, in one statement (migration 0008): its run when the
#: agent holds that attempt's current, unexpired claim; no row (and nothing written)
#: otherwise.
_REPORT_IF_CURRENT = "SELECT * FROM icn_mcp_report_if_current(%s, %s, %s, %s, %s)"

_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


def to_pyformat(sql: str) -> str:
    """``?`` -> ``%s`` and ``:name`` -> ``%(name)s`` (for the portable statements,
    which contain neither ``%`` nor ``::``)."""
    if "%" in sql or "::" in sql:
        raise ValueError("a portable statement may not contain '%' or '::'")
    return _NAMED.sub(r"%(\1)s", sql.replace("?", "%s"))


class Row:
    """A result row read by position or by column name, as ``sqlite3.Row`` is."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: tuple[Any, ...], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        return list(self._index)


#: Column name -> position, per result shape (the column names, from libpq): building
#: ``cursor.description`` for every statement cost more than the rest of the row work.
_INDEXES: dict[tuple[bytes | None, ...], dict[str, int]] = {}


def _row_factory(cursor: Any) -> Callable[[Any], Row]:
    result = cursor.pgresult
    names = tuple(result.fname(i) for i in range(result.nfields)) if result is not None else ()
    index = _INDEXES.get(names)
    if index is None:
        index = _INDEXES[names] = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(tuple(values), index)


class PgConnection:
    """A pooled psycopg connection whose ``execute`` returns rows as :class:`Row`."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any = None) -> Any:
        cursor = self.raw.cursor(row_factory=_row_factory)
        cursor.execute(sql, params)
        return cursor


class PostgresQueries(Queries):
    """PostgreSQL: pyformat placeholders, server time, SKIP LOCKED claims."""

    backend = "postgresql"
    # No index hints: PostgreSQL's planner has statistics.
    DASHBOARD_AGENTS = to_pyformat(DASHBOARD_AGENTS.format(runs_agent=""))
    DASHBOARD_HELD = to_pyformat(DASHBOARD_HELD.format(tasks_status=""))

    def wrap(self, conn: Any) -> Any:
        return PgConnection(conn)

    @contextmanager
    def read(self, db: Any) -> Iterator[Any]:
        with db.read_transaction() as conn:
            yield PgConnection(conn)

    def write(self, db: Any, fn: Callable[[Any], T]) -> T:
        return db.run_in_transaction(lambda conn: fn(PgConnection(conn)))

    def locking_write(self, db: Any, fn: Callable[[Any], T]) -> T:
        return db.run_in_transaction(lambda conn: fn(PgConnection(conn)), isolation="read committed")

    def now(self, conn: Any, clock: Callable[[], datetime]) -> datetime:
        # The server's transaction time: every host agrees on it (the store's clock,
        # a host's, is not asked).
        return parse_ts(conn.execute("SELECT now()").fetchone()[0])

    def claim(self, conn: Any, agent_id: str, lease_s: float, clock: Callable[[], datetime]) -> Any:
        params = {"agent_id": agent_id, "lease_s": lease_s}
        row = conn.execute(CLAIM_SQL, params).fetchone()
        if row is not None:
            return row
        if conn.execute(EXPIRED_LEASE_PROBE_SQL).fetchone() is not None:
            conn.execute(REQUEUE_EXPIRED_SQL)
            return conn.execute(CLAIM_SQL, params).fetchone()
        return None

    def claim_at_once(self, db: Any, agent_id: str, lease_s: float) -> Any:
        # The claim statement alone, in autocommit: one round trip. Lost in flight, it
        # raises CommitUnknown (it may have claimed): never re-run blindly.
        params = {"agent_id": agent_id, "lease_s": lease_s}
        return db.run_statement(lambda conn: PgConnection(conn).execute(CLAIM_SQL, params).fetchone())

    def report_at_once(
        self, db: Any, task_id: int, agent_id: str, attempt: int | None, status: str, notes: str | None
    ) -> Any:
        # One statement in autocommit (a function that locks the row, then writes if the
        # claim is current): one round trip. Lost in flight, it raises CommitUnknown.
        if attempt is None:
            return None  # whether this agent held an expired attempt decides: the long way
        params = (task_id, agent_id, attempt, status, notes)
        return db.run_statement(lambda conn: PgConnection(conn).execute(_REPORT_IF_CURRENT, params).fetchone())

    def locked_claim_row(self, conn: Any, task_id: int, clock: Callable[[], datetime]) -> tuple[Any, datetime]:
        row = conn.execute(_LOCKED_CLAIM_ROW, (task_id,)).fetchone()
        if row is None:
            return None, parse_ts(conn.execute("SELECT now()").fetchone()[0])
        return row, parse_ts(row["now"])

    def record_report(
        self,
        conn: Any,
        task: Any,
        task_id: int,
        agent_id: str,
        status: str,
        notes: str | None,
        moment: datetime,
    ) -> Any:
        final = task["attempt"] >= task["max_attempts"]
        params = {
            "task_id": task_id,
            "agent_id": agent_id,
            "attempt": task["attempt"],
            "status": status,
            "notes": notes,
            "now": format_ts(moment),
            "lease_until": format_ts(moment, plus_s=task["lease_s"]) if status == "in_progress" else None,
            "next_status": "failed" if final else "open",
            "keep_claimer": agent_id if final else None,
        }
        return conn.execute(_REPORT_SQL[status], params).fetchone()

    def next_lease_expiry(self, conn: Any) -> str | None:
        row = conn.execute(_NEXT_LEASE_EXPIRY).fetchone()
        return row[0] if row is not None else None

    def end_leases_of_revoked_agents(self, conn: Any, now: str) -> None:
        conn.execute(_END_LEASES_OF_REVOKED_AGENTS, {"now": now})

    def dependency_statuses(self, conn: Any, deps: list[int]) -> list[tuple[int, str | None]]:
        found = {row[0]: row[1] for row in conn.execute(_DEPENDENCY_STATUSES, (deps,)).fetchall()}
        return [(dep, found.get(dep)) for dep in deps]

    def insert_dependencies(self, conn: Any, task_id: int, deps: list[int]) -> None:
        conn.execute(_INSERT_DEPENDENCIES, (task_id, deps))


for _name, _sql in PORTABLE.items():
    setattr(PostgresQueries, _name, to_pyformat(_sql))

#: A report or artifact decides on the task's claim: the row is locked until commit,
#: so no claim, requeue or other report changes it between the check and the write.
PostgresQueries.CLAIM_ROW = PostgresQueries.CLAIM_ROW + " FOR UPDATE"
