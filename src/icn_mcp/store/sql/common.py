"""The :class:`Queries` contract and the statements both backends run as written.

Statements here use ``?`` and ``:name`` placeholders and nothing engine-specific;
:mod:`icn_mcp.store.sql.postgres` rewrites the placeholders once, at import. What
differs between engines (claims, lease expiry, index hints, dependency lists, the
clock) is a method or attribute each backend defines in its own module.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Callable, ClassVar, TypeVar

from icn_mcp.db.timestamps import format_ts
from icn_mcp.store.models import TASK_COLUMNS

__all__ = ["Queries", "PORTABLE"]

T = TypeVar("T")

# A token usable now or refreshable later: not revoked, not expired beyond the grace
# window (``expires_at > now - grace``). An agent is active while it has one.
_LIVE_TOKEN = """
    SELECT 1 FROM agent_tokens t
    WHERE t.agent_id = agents.id AND t.revoked_at IS NULL AND t.expires_at > :cutoff
"""

#: Columns of a task that the claim checks read.
CLAIM_COLUMNS = "status, claimed_by, attempt, max_attempts, lease_expires_at, lease_s"

#: Statements both engines run as written (name -> SQL with ``?``/``:name``).
PORTABLE: dict[str, str] = {
    # -- agents and tokens
    #: Has an agent ever been registered (with a token)? Migration 0005's one row.
    "BOOTSTRAPPED": "SELECT 1 FROM agent_bootstrap",
    "RECORD_BOOTSTRAP": (
        "INSERT INTO agent_bootstrap (id, first_agent_id, registered_at) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING"
    ),
    #: Active agents for stats: live tokens, or local (token-less, see ensure_local_agent).
    "ACTIVE_AGENT_COUNT": f"""
        SELECT count(*) FROM agents
        WHERE revoked_at IS NULL AND (local = 1 OR EXISTS ({_LIVE_TOKEN}))
    """,
    "TOKEN_LOOKUP": """
        SELECT a.id, a.name, a.kind, a.version, a.created_at, a.revoked_at AS agent_revoked_at,
               t.expires_at, t.revoked_at
        FROM agent_tokens t JOIN agents a ON a.id = t.agent_id
        WHERE t.token_hash = ?
    """,
    "INSERT_AGENT": "INSERT INTO agents (id, name, kind, version, created_at) VALUES (?, ?, ?, ?, ?)",
    "FIND_LOCAL_AGENT": "SELECT id, created_at FROM agents WHERE local = 1 AND name = ? AND revoked_at IS NULL",
    "INSERT_LOCAL_AGENT": ("INSERT INTO agents (id, name, kind, version, created_at, local) VALUES (?, ?, ?, ?, ?, 1)"),
    "UPDATE_LOCAL_AGENT": "UPDATE agents SET kind = ?, version = ? WHERE id = ?",
    "INSERT_TOKEN": "INSERT INTO agent_tokens (token_hash, agent_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
    "REVOKE_TOKEN": "UPDATE agent_tokens SET revoked_at = ? WHERE token_hash = ?",
    "AGENT_REVOKED_AT": "SELECT revoked_at FROM agents WHERE id = ?",
    "REVOKE_AGENT": "UPDATE agents SET revoked_at = ? WHERE id = ?",
    "REVOKE_AGENT_TOKENS": "UPDATE agent_tokens SET revoked_at = ? WHERE agent_id = ? AND revoked_at IS NULL",
    "REVOKE_ALL_TOKENS": "UPDATE agent_tokens SET revoked_at = ? WHERE revoked_at IS NULL",
    "REMOVE_LAPSED_AGENTS": (
        f"UPDATE agents SET revoked_at = :now WHERE revoked_at IS NULL AND local = 0 AND NOT EXISTS ({_LIVE_TOKEN})"
    ),
    "DELETE_DEAD_TOKENS": "DELETE FROM agent_tokens WHERE revoked_at IS NOT NULL OR expires_at <= ?",
    # -- tasks
    "TASK_BY_IDEMPOTENCY_KEY": f"SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = ?",
    "INSERT_TASK": f"""
        INSERT INTO tasks (title, description, status, priority, created_by, created_at,
                           updated_at, depends_on, blocking_deps, max_attempts, idempotency_key)
        VALUES (:title, :description, 'open', :priority, :created_by, :now, :now,
                :depends_on, :blocking_deps, :max_attempts, :idempotency_key)
        RETURNING {TASK_COLUMNS}
    """,
    "TASK_BY_ID": f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?",
    "LIST_TASKS": f"SELECT {TASK_COLUMNS} FROM tasks WHERE id > ? ORDER BY id LIMIT ?",
    "LIST_TASKS_BY_STATUS": f"SELECT {TASK_COLUMNS} FROM tasks WHERE status = ? AND id > ? ORDER BY id LIMIT ?",
    "TASK_STATUS_ROW": "SELECT id, status, attempt, lease_expires_at, claimed_by FROM tasks WHERE id = ?",
    "LATEST_RUN": "SELECT * FROM runs WHERE task_id = ? ORDER BY id DESC LIMIT 1",
    "RUNS_OF_TASK": "SELECT * FROM runs WHERE task_id = ? ORDER BY id",
    "INSERT_RUN": (
        "INSERT INTO runs (task_id, agent_id, attempt, status, notes, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING *"
    ),
    "TOUCH_TASK": "UPDATE tasks SET updated_at = ? WHERE id = ?",
    "RENEW_LEASE": "UPDATE tasks SET lease_expires_at = ?, updated_at = ? WHERE id = ?",
    "COMPLETE_TASK": (
        "UPDATE tasks SET status = 'completed', lease_expires_at = NULL, lease_s = NULL, updated_at = ? WHERE id = ?"
    ),
    "RELEASE_DEPENDENTS": """
        UPDATE tasks SET blocking_deps = blocking_deps - 1, updated_at = :now
        WHERE id IN (SELECT task_id FROM task_dependencies WHERE depends_on_id = :task_id)
    """,
    "FAIL_TASK": (
        "UPDATE tasks SET status = ?, claimed_by = ?, lease_expires_at = NULL, lease_s = NULL, updated_at = ? "
        "WHERE id = ?"
    ),
    "INSERT_ARTIFACT": (
        "INSERT INTO artifacts (task_id, kind, path, meta, created_at, added_by, attempt) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *"
    ),
    "ARTIFACTS_OF_TASK": "SELECT * FROM artifacts WHERE task_id = ? ORDER BY id",
    "CLAIM_ROW": f"SELECT {CLAIM_COLUMNS} FROM tasks WHERE id = ?",
    #: Did this agent hold an attempt of this task that expired? (``runs_task`` index:
    #: the runs of one task, a handful.) The current attempt never has an expired run.
    "HELD_AN_EXPIRED_ATTEMPT": ("SELECT 1 FROM runs WHERE task_id = ? AND agent_id = ? AND status = 'expired' LIMIT 1"),
    "TASK_EXISTS": "SELECT 1 FROM tasks WHERE id = ?",
    # -- stats
    "TASK_STATUS_COUNTS": "SELECT status, count(*) AS n FROM tasks GROUP BY status",
    "COUNT_RUNS": "SELECT count(*) FROM runs",
    "COUNT_ARTIFACTS": "SELECT count(*) FROM artifacts",
    # -- the operator dashboard (store/dashboard.py)
    "DASHBOARD_NEIGHBOURS": (
        "SELECT depends_on_id FROM task_dependencies WHERE task_id = :id "
        "UNION SELECT task_id FROM task_dependencies WHERE depends_on_id = :id"
    ),
    "DASHBOARD_OPEN_IDS": "SELECT id FROM tasks WHERE status IN ('open', 'claimed') ORDER BY id LIMIT ?",
    "DASHBOARD_OPEN_COUNT": "SELECT count(*) FROM tasks WHERE status IN ('open', 'claimed')",
    "DASHBOARD_DEPENDENCIES": "SELECT depends_on_id FROM task_dependencies WHERE task_id = ? ORDER BY depends_on_id",
    "DASHBOARD_NODE": (
        "SELECT id, title, status, priority, claimed_by, attempt, max_attempts, lease_expires_at "
        "FROM tasks WHERE id = ?"
    ),
}

# One row per agent: its live tokens through the agent_tokens_agent index, its newest
# report through runs_agent (one probe each; 'expired' runs are written by the store
# when a lease runs out, not reported by the agent, and are skipped). ``{runs_agent}``
# is where a backend names the index.
DASHBOARD_AGENTS = """
    SELECT a.id, a.name, a.kind, a.version, a.created_at, a.revoked_at, a.local,
           (SELECT count(*) FROM agent_tokens t
             WHERE t.agent_id = a.id AND t.revoked_at IS NULL AND t.expires_at > :now)
               AS tokens_active,
           (SELECT r.created_at FROM runs r {runs_agent}
             WHERE r.agent_id = a.id AND r.status <> 'expired'
             ORDER BY r.id DESC LIMIT 1) AS last_report_at
    FROM agents a
    ORDER BY a.revoked_at IS NOT NULL, a.name, a.id
"""

# The claims held now, through the tasks_status index. A claim writes no run; a held
# task's updated_at is its claim or a later change by that claim (a heartbeat).
DASHBOARD_HELD = (
    "SELECT claimed_by AS agent_id, id, updated_at FROM tasks {tasks_status} WHERE status = 'claimed' ORDER BY id"
)


class Queries(abc.ABC):
    """One backend's statements and ways: the store's only view of the engine.

    Attributes named as the keys of :data:`PORTABLE` hold those statements in the
    backend's placeholder style. The methods below hold what differs.
    """

    backend: ClassVar[str]

    BOOTSTRAPPED: str
    RECORD_BOOTSTRAP: str
    ACTIVE_AGENT_COUNT: str
    TOKEN_LOOKUP: str
    INSERT_AGENT: str
    FIND_LOCAL_AGENT: str
    INSERT_LOCAL_AGENT: str
    UPDATE_LOCAL_AGENT: str
    INSERT_TOKEN: str
    REVOKE_TOKEN: str
    AGENT_REVOKED_AT: str
    REVOKE_AGENT: str
    REVOKE_AGENT_TOKENS: str
    REVOKE_ALL_TOKENS: str
    REMOVE_LAPSED_AGENTS: str
    DELETE_DEAD_TOKENS: str
    TASK_BY_IDEMPOTENCY_KEY: str
    INSERT_TASK: str
    TASK_BY_ID: str
    LIST_TASKS: str
    LIST_TASKS_BY_STATUS: str
    TASK_STATUS_ROW: str
    LATEST_RUN: str
    RUNS_OF_TASK: str
    INSERT_RUN: str
    TOUCH_TASK: str
    RENEW_LEASE: str
    COMPLETE_TASK: str
    RELEASE_DEPENDENTS: str
    FAIL_TASK: str
    INSERT_ARTIFACT: str
    ARTIFACTS_OF_TASK: str
    CLAIM_ROW: str
    HELD_AN_EXPIRED_ATTEMPT: str
    TASK_EXISTS: str
    TASK_STATUS_COUNTS: str
    COUNT_RUNS: str
    COUNT_ARTIFACTS: str
    DASHBOARD_NEIGHBOURS: str
    DASHBOARD_OPEN_IDS: str
    DASHBOARD_OPEN_COUNT: str
    DASHBOARD_DEPENDENCIES: str
    DASHBOARD_NODE: str
    #: The dashboard's agents (``:now``) and the claims held now (backend's index hints).
    DASHBOARD_AGENTS: str
    DASHBOARD_HELD: str

    # -- connections and transactions ----------------------------------------------

    @abc.abstractmethod
    def wrap(self, conn: Any) -> Any:
        """A connection of ``db.read_transaction()`` as the statements here expect it."""

    @abc.abstractmethod
    def read(self, db: Any) -> AbstractContextManager[Any]:
        """A connection for reads (statements run with ``conn.execute(sql, params)``)."""

    @abc.abstractmethod
    def write(self, db: Any, fn: Callable[[Any], T]) -> T:
        """``fn(conn)`` in a write transaction, retried as the backend retries."""

    @abc.abstractmethod
    def locking_write(self, db: Any, fn: Callable[[Any], T]) -> T:
        """``fn(conn)`` for work that locks the task rows it decides on (claims,
        reports, artifacts of a claim): on PostgreSQL ``READ COMMITTED``, correct
        statement by statement because :attr:`CLAIM_ROW` and the claim lock their rows,
        and free of the serialization failures SERIALIZABLE gives concurrent claimers."""

    # -- time -----------------------------------------------------------------------

    @abc.abstractmethod
    def now(self, conn: Any, clock: Callable[[], datetime]) -> datetime:
        """The moment that decides ownership in this transaction: the store's clock on
        SQLite (one host), the database server's ``now()`` on PostgreSQL (many hosts)."""

    # -- what differs ---------------------------------------------------------------

    @abc.abstractmethod
    def claim(self, conn: Any, agent_id: str, lease_s: float, clock: Callable[[], datetime]) -> Any:
        """Claim the next claimable task (requeueing expired leases first when any
        wait); its row as :data:`TASK_COLUMNS`, or None."""

    def claim_at_once(self, db: Any, agent_id: str, lease_s: float) -> Any:
        """The usual claim as a transaction of one statement, when the backend has
        such a shortcut: the claimed row, or None when it claimed nothing (nothing
        claimable, an expired lease waiting to be requeued, an agent that may not
        claim), and :meth:`claim` in a :meth:`locking_write` then decides. None here:
        a SQLite transaction costs no round trip."""
        return None

    def report_at_once(
        self, db: Any, task_id: int, agent_id: str, attempt: int | None, status: str, notes: str | None
    ) -> Any:
        """An accepted report as one round trip, when the backend has such a shortcut:
        the run's row, or None when it wrote nothing (no current claim of ``attempt``
        by ``agent_id``, or no shortcut), and the report's transaction then decides
        and names the reason. None here: a SQLite transaction costs no round trip."""
        return None

    def locked_claim_row(self, conn: Any, task_id: int, clock: Callable[[], datetime]) -> tuple[Any, datetime]:
        """``(the task's CLAIM_ROW or None, this transaction's now)``, the row locked
        until commit where the backend locks rows (:attr:`CLAIM_ROW`)."""
        moment = self.now(conn, clock)
        return conn.execute(self.CLAIM_ROW, (task_id,)).fetchone(), moment

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
        """An accepted report's writes (the run, the task's new state, dependents
        released on completion); the run's row."""
        now = format_ts(moment)
        run_row = conn.execute(self.INSERT_RUN, (task_id, agent_id, task["attempt"], status, notes, now)).fetchall()[0]
        if status == "claimed":
            conn.execute(self.TOUCH_TASK, (now, task_id))
        elif status == "in_progress":
            conn.execute(self.RENEW_LEASE, (format_ts(moment, plus_s=task["lease_s"]), now, task_id))
        elif status == "completed":
            conn.execute(self.COMPLETE_TASK, (now, task_id))
            conn.execute(self.RELEASE_DEPENDENTS, {"now": now, "task_id": task_id})
        else:  # failed
            final = task["attempt"] >= task["max_attempts"]
            conn.execute(self.FAIL_TASK, ("failed" if final else "open", agent_id if final else None, now, task_id))
        return run_row

    @abc.abstractmethod
    def next_lease_expiry(self, conn: Any) -> str | None:
        """The earliest lease expiry of a claimed task (stored text), or None."""

    @abc.abstractmethod
    def end_leases_of_revoked_agents(self, conn: Any, now: str) -> None:
        """Expire now the unexpired leases held by revoked agents."""

    @abc.abstractmethod
    def dependency_statuses(self, conn: Any, deps: list[int]) -> list[tuple[int, str | None]]:
        """``(id, status or None when unknown)`` for each dependency id."""

    @abc.abstractmethod
    def insert_dependencies(self, conn: Any, task_id: int, deps: list[int]) -> None:
        """The dependency edges of a new task."""
