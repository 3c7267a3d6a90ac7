"""Tasks with dependencies, claims with leases, runs and artifacts.

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

import base64
import binascii
import json
import sqlite3
from datetime import datetime
from typing import Any, Callable, Iterable

from icn_mcp.db import Database
from icn_mcp.db.timestamps import format_ts, parse_ts
from icn_mcp.errors import Conflict, Forbidden, NotFound, ValidationError
from icn_mcp.store import validation as v
from icn_mcp.store.models import (
    REPORT_STATUSES,
    TASK_COLUMNS,
    TASK_STATUSES,
    Artifact,
    Claim,
    Run,
    Task,
    TaskPage,
    TaskStatus,
)

__all__ = ["TasksMixin", "CLAIM_SQL", "EXPIRED_LEASE_PROBE_SQL"]

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

_RELEASE_DEPENDENTS = """
    UPDATE tasks SET blocking_deps = blocking_deps - 1, updated_at = :now
    WHERE id IN (SELECT task_id FROM task_dependencies WHERE depends_on_id = :task_id)
"""

_INSERT_TASK = f"""
    INSERT INTO tasks (title, description, status, priority, created_by, created_at,
                       updated_at, depends_on, blocking_deps, max_attempts, idempotency_key)
    VALUES (:title, :description, 'open', :priority, :created_by, :now, :now,
            :depends_on, :blocking_deps, :max_attempts, :idempotency_key)
    RETURNING {TASK_COLUMNS}
"""

_CURSOR_PREFIX = "tasks:"


class TasksMixin:
    """The task half of :class:`~icn_mcp.store.Store`."""

    _db: Database
    _clock: Callable[[], datetime]
    default_lease_s: float

    # -- creating and reading -------------------------------------------------------

    def create_task(
        self,
        title: str,
        description: str | None = None,
        created_by: str | None = None,
        depends_on: Iterable[int] | None = (),
        priority: int = 0,
        max_attempts: int = 3,
        idempotency_key: str | None = None,
    ) -> Task:
        """Create an open task; it becomes claimable when all ``depends_on`` completed.

        The task and its dependency edges are written in one transaction. Every
        dependency must exist (the error names the unknown ids). A repeated
        ``idempotency_key`` returns the task first created with it, unchanged.
        Raises ValidationError.
        """
        problems = v.Problems()
        problems.text("title", title, min_len=1, max_len=v.TITLE_MAX, optional=False)
        problems.text("description", description, max_len=v.DESCRIPTION_MAX)
        problems.text("created_by", created_by, max_len=v.CREATED_BY_MAX)
        problems.integer("priority", priority, minimum=v.PRIORITY_MIN, maximum=v.PRIORITY_MAX)
        problems.integer("max_attempts", max_attempts, minimum=1, maximum=v.MAX_ATTEMPTS_MAX)
        problems.text(
            "idempotency_key",
            idempotency_key,
            min_len=1,
            max_len=v.IDEMPOTENCY_KEY_MAX,
            single_line=True,
        )
        deps = v.dependency_ids(problems, () if depends_on is None else depends_on)
        problems.raise_if_any()
        deps_json = json.dumps(deps) if deps else None

        def create(conn: sqlite3.Connection) -> Task:
            if idempotency_key is not None:
                row = conn.execute(
                    f"SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    return Task.from_row(row)
            blocking = 0
            if deps:
                found = conn.execute(
                    "SELECT j.value AS id, t.status FROM json_each(?) AS j LEFT JOIN tasks AS t ON t.id = j.value",
                    (deps_json,),
                ).fetchall()
                unknown = [row["id"] for row in found if row["status"] is None]
                if unknown:
                    raise ValidationError({"depends_on": "unknown task ids: " + ", ".join(map(str, unknown))})
                blocking = sum(1 for row in found if row["status"] != "completed")
            row = conn.execute(
                _INSERT_TASK,
                {
                    "title": title,
                    "description": description,
                    "priority": priority,
                    "created_by": created_by,
                    "now": format_ts(self._clock()),
                    "depends_on": deps_json,
                    "blocking_deps": blocking,
                    "max_attempts": max_attempts,
                    "idempotency_key": idempotency_key,
                },
            ).fetchall()[0]
            if deps:
                conn.execute(
                    "INSERT INTO task_dependencies (task_id, depends_on_id) SELECT ?, value FROM json_each(?)",
                    (row["id"], deps_json),
                )
            return Task.from_row(row)

        return self._db.run_in_transaction(create)

    def get_task(self, task_id: int) -> Task:
        """The task with this id; NotFound if there is none."""
        task_id = v.task_id(task_id)
        row = self._db.connection().execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise NotFound("task", task_id)
        return Task.from_row(row)

    def list_tasks(self, status: str | None = None, limit: int = 50, cursor: str | None = None) -> TaskPage:
        """Tasks in creation (id) order, ``limit`` at a time, optionally of one status.

        Keyset pagination: ``next_cursor`` (an opaque string, None on the last page)
        continues after the last task returned, so pages neither repeat nor skip
        tasks while others are being created.
        """
        problems = v.Problems()
        if status is not None and status not in TASK_STATUSES:
            problems.add("status", "null or one of " + ", ".join(TASK_STATUSES))
        problems.integer("limit", limit, minimum=1, maximum=v.LIST_LIMIT_MAX)
        after = _decode_cursor(problems, cursor)
        problems.raise_if_any()
        conn = self._db.connection()
        if status is None:
            rows = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit + 1),
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE status = ? AND id > ? ORDER BY id LIMIT ?",
                (status, after, limit + 1),
            ).fetchall()
        tasks = [Task.from_row(row) for row in rows[:limit]]
        next_cursor = _encode_cursor(tasks[-1].id) if len(rows) > limit else None
        return TaskPage(tasks=tasks, next_cursor=next_cursor)

    def task_status(self, task_id: int) -> TaskStatus:
        """Status, attempt, lease expiry and the latest run of a task; NotFound.

        While the task is claimed, ``agent`` is its claimer: a claim writes no run,
        so after a reclaim the latest run is the previous claimer's. Otherwise
        ``agent`` is the latest run's agent. ``notes`` and ``latest_run`` are always
        the latest run's.

        A claim whose lease has passed still shows as ``claimed`` (with its past
        ``lease_expires_at``) until the next claim puts it back to open.
        """
        task_id = v.task_id(task_id)
        with self._db.read_transaction() as conn:
            task = conn.execute(
                "SELECT id, status, attempt, lease_expires_at, claimed_by FROM tasks WHERE id = ?",
                (task_id,),
            ).fetchone()
            if task is None:
                raise NotFound("task", task_id)
            run_row = conn.execute(
                "SELECT * FROM runs WHERE task_id = ? ORDER BY id DESC LIMIT 1", (task_id,)
            ).fetchone()
        run = Run.from_row(run_row) if run_row is not None else None
        return TaskStatus(
            id=task["id"],
            status=task["status"],
            attempt=task["attempt"],
            lease_expires_at=task["lease_expires_at"],
            agent=(task["claimed_by"] if task["status"] == "claimed" or run is None else run.agent_id),
            notes=run.notes if run is not None else None,
            latest_run=run,
        )

    def list_runs(self, task_id: int) -> list[Run]:
        """Every run of a task, oldest first (its complete history); NotFound."""
        task_id = v.task_id(task_id)
        with self._db.read_transaction() as conn:
            _require_task(conn, task_id)
            rows = conn.execute("SELECT * FROM runs WHERE task_id = ? ORDER BY id", (task_id,)).fetchall()
        return [Run.from_row(row) for row in rows]

    # -- claiming and reporting -----------------------------------------------------

    def claim_next_task(self, agent_id: str, lease_s: float | None = None) -> Claim | None:
        """Claim the highest-priority, oldest claimable task for ``agent_id``.

        Claimable: open, or claimed with an expired lease, and every dependency
        completed. The task becomes claimed by the agent until now + ``lease_s``
        (default: the store's lease) with its attempt incremented: pass that attempt
        to :meth:`report_run` as the fencing token. Returns None when nothing is
        claimable. NotFound for an unknown agent, Forbidden for a revoked one.
        """
        lease = self.default_lease_s if lease_s is None else v.lease_seconds(lease_s)

        def claim(conn: sqlite3.Connection) -> sqlite3.Row | None:
            # The clock is read here, inside the transaction, after BEGIN IMMEDIATE got
            # the write lock: a claim that waited seconds for the lock must not come
            # back with a lease that ended while it waited (issue 9 item 11).
            moment = self._clock()
            now = format_ts(moment)
            params = {
                "agent_id": agent_id,
                "lease_expires_at": format_ts(moment, plus_s=lease),
                "lease_s": lease,
                "now": now,
            }
            rows = conn.execute(CLAIM_SQL, params).fetchall()
            if rows:
                return rows[0]
            # Nothing claimed: an expired lease to release first, nothing claimable,
            # or an agent that may not claim.
            if conn.execute(EXPIRED_LEASE_PROBE_SQL, (now,)).fetchone() is not None:
                conn.execute(_RECORD_EXPIRED_RUNS, {"now": now})
                conn.execute(_RELEASE_EXPIRED, {"now": now})
                rows = conn.execute(CLAIM_SQL, params).fetchall()
                if rows:
                    return rows[0]
            _require_active_agent(conn, agent_id)
            return None

        row = self._db.run_in_transaction(claim)
        if row is None:
            return None
        task = Task.from_row(row)
        return Claim(
            task_id=task.id,
            title=task.title,
            lease_expires_at=task.lease_expires_at,  # type: ignore[arg-type]
            attempt=task.attempt,
            task=task,
        )

    def next_lease_expiry(self) -> datetime | None:
        """When the earliest lease of a claimed task expires, or None when none is claimed.

        Waiting claims use it to wake when a lease lapses (no commit announces that).
        One probe of the partial index ``tasks_lease``.
        """
        row = (
            self._db.connection()
            .execute("SELECT min(lease_expires_at) FROM tasks INDEXED BY tasks_lease WHERE status = 'claimed'")
            .fetchone()
        )
        return parse_ts(row[0]) if row is not None and row[0] is not None else None

    def report_run(
        self,
        task_id: int,
        agent_id: str,
        status: str,
        notes: str | None = None,
        attempt: int | None = None,
    ) -> Run:
        """Record a report from the agent holding the task's current claim.

        ``status``: ``claimed`` (acknowledged), ``in_progress`` (a heartbeat: renews
        the lease for the claim's lease length), ``completed`` (final; releases
        dependents), or ``failed`` (back to open while attempts remain, else failed
        for good). Refused with Conflict unless ``agent_id`` holds the task's claim,
        its lease has not expired and ``attempt`` (when given) is the current one.
        ``attempt`` may be left out only while the agent never held an earlier
        attempt of this task that expired: such a report could be that attempt's,
        so it is refused as ambiguous. Every accepted report is kept as a run row.
        NotFound, ValidationError.
        """
        task_id = v.task_id(task_id)
        problems = v.Problems()
        if status not in REPORT_STATUSES:
            problems.add("status", "one of " + ", ".join(REPORT_STATUSES))
        problems.text("notes", notes, max_len=v.NOTES_MAX)
        if attempt is not None:
            problems.integer("attempt", attempt, minimum=1, maximum=2**62)
        if not isinstance(agent_id, str) or not agent_id:
            problems.add("agent_id", "an agent id")
        problems.raise_if_any()

        def report(conn: sqlite3.Connection) -> Run:
            # The clock is read inside the transaction (after BEGIN IMMEDIATE took the
            # write lock): a report that waited for the lock is judged at the time it
            # runs, not at the time it asked (issue 9 item 11).
            moment = self._clock()
            now = format_ts(moment)
            task = _require_current_claim(conn, task_id, agent_id, attempt, now)
            run_row = conn.execute(
                "INSERT INTO runs (task_id, agent_id, attempt, status, notes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                (task_id, agent_id, task["attempt"], status, notes, now),
            ).fetchall()[0]
            if status == "claimed":
                conn.execute("UPDATE tasks SET updated_at = ? WHERE id = ?", (now, task_id))
            elif status == "in_progress":
                conn.execute(
                    "UPDATE tasks SET lease_expires_at = ?, updated_at = ? WHERE id = ?",
                    (format_ts(moment, plus_s=task["lease_s"]), now, task_id),
                )
            elif status == "completed":
                conn.execute(
                    "UPDATE tasks SET status = 'completed', lease_expires_at = NULL, "
                    "lease_s = NULL, updated_at = ? WHERE id = ?",
                    (now, task_id),
                )
                conn.execute(_RELEASE_DEPENDENTS, {"now": now, "task_id": task_id})
            else:  # failed
                final = task["attempt"] >= task["max_attempts"]
                conn.execute(
                    "UPDATE tasks SET status = ?, claimed_by = ?, lease_expires_at = NULL, "
                    "lease_s = NULL, updated_at = ? WHERE id = ?",
                    ("failed" if final else "open", agent_id if final else None, now, task_id),
                )
            return Run.from_row(run_row)

        return self._db.run_in_transaction(report)

    # -- artifacts ------------------------------------------------------------------

    def add_artifact(
        self,
        task_id: int,
        kind: str,
        path: str,
        meta: dict[str, Any] | None = None,
        *,
        agent_id: str | None = None,
        attempt: int | None = None,
        added_by: str | None = None,
    ) -> Artifact:
        """Record something a task produced, and who added it.

        ``kind`` is a short label (``file``, ``log``, ``pr``...), ``path`` where to
        find it, ``meta`` a JSON object of anything else. Exactly one of:

        - ``agent_id``: an agent, accepted only while it holds the task's current
          claim (unexpired lease; ``attempt``, when given, the current one), exactly
          like :meth:`report_run`, else Conflict; the claim's attempt is recorded;
        - ``added_by``: someone the caller has already authorised (a maintainer,
          ``maintainer:<role>``, or the local stdio agent), accepted for any task.

        NotFound for an unknown task, ValidationError.
        """
        task_id = v.task_id(task_id)
        problems = v.Problems()
        problems.pattern(
            "kind",
            kind,
            v.ARTIFACT_KIND_PATTERN,
            "1-64 characters: letters, digits, '.', '_', '/' or '-'",
        )
        problems.text("path", path, min_len=1, max_len=v.ARTIFACT_PATH_MAX, optional=False, single_line=True)
        meta_json = v.artifact_meta(problems, meta)
        if (agent_id is None) == (added_by is None):
            problems.add("added_by", "exactly one of agent_id (the claim holder) or added_by")
        else:
            problems.text(
                "agent_id" if agent_id is not None else "added_by",
                agent_id if agent_id is not None else added_by,
                min_len=1,
                max_len=v.CREATED_BY_MAX,
                optional=False,
                single_line=True,
            )
        if attempt is not None:
            problems.integer("attempt", attempt, minimum=1, maximum=v.ATTEMPT_MAX)
        problems.raise_if_any()

        def add(conn: sqlite3.Connection) -> Artifact:
            now = format_ts(self._clock())
            if agent_id is None:
                _require_task(conn, task_id)
                author, recorded_attempt = added_by, None
            else:
                author = agent_id
                # The same rule as a report: the current, unexpired claim (attempt required
                # when this agent held an expired attempt of the task).
                recorded_attempt = int(_require_current_claim(conn, task_id, agent_id, attempt, now)["attempt"])
            row = conn.execute(
                "INSERT INTO artifacts (task_id, kind, path, meta, created_at, added_by, attempt) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (task_id, kind, path, meta_json, now, author, recorded_attempt),
            ).fetchall()[0]
            return Artifact.from_row(row)

        return self._db.run_in_transaction(add)

    def list_artifacts(self, task_id: int) -> list[Artifact]:
        """The artifacts of a task, oldest first; NotFound for an unknown task."""
        task_id = v.task_id(task_id)
        with self._db.read_transaction() as conn:
            _require_task(conn, task_id)
            rows = conn.execute("SELECT * FROM artifacts WHERE task_id = ? ORDER BY id", (task_id,)).fetchall()
        return [Artifact.from_row(row) for row in rows]


#: Columns of a task that :func:`_require_current_claim` returns.
_CLAIM_COLUMNS = "status, claimed_by, attempt, max_attempts, lease_expires_at, lease_s"


def _require_current_claim(
    conn: sqlite3.Connection, task_id: int, agent_id: str, attempt: int | None, now: str
) -> sqlite3.Row:
    """The task's row when ``agent_id`` holds its current, unexpired claim; else
    NotFound or Conflict naming what is stale. Call it inside the write transaction
    that acts on the claim, with ``now`` read after that transaction began.

    Without ``attempt`` the report is taken to be for the current attempt, unless this
    agent held an earlier attempt of the task that ended by its lease running out (an
    ``expired`` run in its name): the report may then be that attempt's late one, and
    only ``attempt`` can tell (issue 9 item 10).
    """
    task = conn.execute(f"SELECT {_CLAIM_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if task is None:
        raise NotFound("task", task_id)
    facts = {"task_id": task_id, "status": task["status"], "attempt": task["attempt"]}
    if task["status"] != "claimed":
        raise Conflict(f"task {task_id} is not claimed (it is {task['status']})", **facts)
    if task["claimed_by"] != agent_id:
        raise Conflict(f"task {task_id} is claimed by another agent", **facts)
    if attempt is not None and attempt != task["attempt"]:
        raise Conflict(
            f"attempt {attempt} of task {task_id} is stale: the current attempt is {task['attempt']}",
            **facts,
        )
    if attempt is None and conn.execute(_HELD_AN_EXPIRED_ATTEMPT, (task_id, agent_id)).fetchone():
        raise Conflict(
            f"attempt is required: this agent held an earlier attempt of task {task_id} "
            f"whose lease expired, so a report without attempt is ambiguous; send the "
            f"attempt from the claim (the current attempt is {task['attempt']})",
            **facts,
        )
    if task["lease_expires_at"] <= now:
        raise Conflict(
            f"the lease on task {task_id} expired at {task['lease_expires_at']}; claim it again",
            lease_expires_at=task["lease_expires_at"],
            **facts,
        )
    return task


#: Did this agent hold an attempt of this task that expired? (``runs_task`` index:
#: the runs of one task, a handful.) The current attempt never has an expired run.
_HELD_AN_EXPIRED_ATTEMPT = "SELECT 1 FROM runs WHERE task_id = ? AND agent_id = ? AND status = 'expired' LIMIT 1"


def _require_task(conn: sqlite3.Connection, task_id: int) -> None:
    if conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
        raise NotFound("task", task_id)


def _require_active_agent(conn: sqlite3.Connection, agent_id: str) -> None:
    row = conn.execute("SELECT revoked_at FROM agents WHERE id = ?", (agent_id,)).fetchone()
    if row is None:
        raise NotFound("agent", agent_id)
    if row["revoked_at"] is not None:
        raise Forbidden(f"agent {agent_id} is revoked")


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def _decode_cursor(problems: v.Problems, cursor: str | None) -> int:
    """The id a cursor continues after (0 for no cursor); problems noted, not raised."""
    if cursor is None:
        return 0
    allowed = "null or a next_cursor value returned by list_tasks"
    if not isinstance(cursor, str) or len(cursor) > 64:
        problems.add("cursor", allowed)
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        problems.add("cursor", allowed)
        return 0
    number = text[len(_CURSOR_PREFIX) :]
    if not text.startswith(_CURSOR_PREFIX) or not number.isdigit() or len(number) > 19:
        problems.add("cursor", allowed)
        return 0
    return int(number)
