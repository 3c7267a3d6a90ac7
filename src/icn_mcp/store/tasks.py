"""Tasks with dependencies, claims with leases, runs and artifacts.

The SQL lives per backend in :mod:`icn_mcp.store.sql` (``self._sql``): on SQLite a
claim is one ``BEGIN IMMEDIATE`` transaction over the partial index
``tasks_claim_order``; on PostgreSQL one ``FOR UPDATE SKIP LOCKED`` statement over
the same index, timed by the server's clock. docs/store.md has the details.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any, Callable, Iterable

from icn_mcp.db.timestamps import format_ts, parse_ts
from icn_mcp.errors import Conflict, Forbidden, NotFound, ValidationError
from icn_mcp.store import validation as v
from icn_mcp.store.models import (
    REPORT_STATUSES,
    TASK_STATUSES,
    Artifact,
    Claim,
    Run,
    Task,
    TaskPage,
    TaskStatus,
)
from icn_mcp.store.sql import Queries
from icn_mcp.store.sql.sqlite import CLAIM_SQL, EXPIRED_LEASE_PROBE_SQL

__all__ = ["TasksMixin", "CLAIM_SQL", "EXPIRED_LEASE_PROBE_SQL"]

_CURSOR_PREFIX = "tasks:"


class TasksMixin:
    """The task half of :class:`~icn_mcp.store.Store`."""

    _db: Any
    _sql: Queries
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

        sql = self._sql

        def create(conn: Any) -> Task:
            if idempotency_key is not None:
                row = conn.execute(sql.TASK_BY_IDEMPOTENCY_KEY, (idempotency_key,)).fetchone()
                if row is not None:
                    return Task.from_row(row)
            blocking = 0
            if deps:
                found = sql.dependency_statuses(conn, deps)
                unknown = [dep for dep, status in found if status is None]
                if unknown:
                    raise ValidationError({"depends_on": "unknown task ids: " + ", ".join(map(str, unknown))})
                blocking = sum(1 for _, status in found if status != "completed")
            row = conn.execute(
                sql.INSERT_TASK,
                {
                    "title": title,
                    "description": description,
                    "priority": priority,
                    "created_by": created_by,
                    "now": format_ts(sql.now(conn, self._clock)),
                    "depends_on": deps_json,
                    "blocking_deps": blocking,
                    "max_attempts": max_attempts,
                    "idempotency_key": idempotency_key,
                },
            ).fetchall()[0]
            if deps:
                sql.insert_dependencies(conn, row["id"], deps)
            return Task.from_row(row)

        return sql.write(self._db, create)

    def get_task(self, task_id: int) -> Task:
        """The task with this id; NotFound if there is none."""
        task_id = v.task_id(task_id)
        with self._sql.read(self._db) as conn:
            row = conn.execute(self._sql.TASK_BY_ID, (task_id,)).fetchone()
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
        with self._sql.read(self._db) as conn:
            if status is None:
                rows = conn.execute(self._sql.LIST_TASKS, (after, limit + 1)).fetchall()
            else:
                rows = conn.execute(self._sql.LIST_TASKS_BY_STATUS, (status, after, limit + 1)).fetchall()
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
        with self._db.read_transaction() as raw:
            conn = self._sql.wrap(raw)
            task = conn.execute(self._sql.TASK_STATUS_ROW, (task_id,)).fetchone()
            if task is None:
                raise NotFound("task", task_id)
            run_row = conn.execute(self._sql.LATEST_RUN, (task_id,)).fetchone()
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
        with self._db.read_transaction() as raw:
            conn = self._sql.wrap(raw)
            _require_task(self._sql, conn, task_id)
            rows = conn.execute(self._sql.RUNS_OF_TASK, (task_id,)).fetchall()
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

        sql = self._sql

        def claim(conn: Any) -> Any:
            # The clock is read inside the transaction, after it began (SQLite: after
            # BEGIN IMMEDIATE got the write lock; PostgreSQL: the server's now()): a
            # claim that waited for the lock must not come back with a lease that ended
            # while it waited (issue 9 item 11).
            row = sql.claim(conn, agent_id, lease, self._clock)
            if row is None:
                # Nothing claimable, or an agent that may not claim.
                _require_active_agent(sql, conn, agent_id)
            return row

        # On PostgreSQL the usual claim is one statement (one round trip); the
        # transaction below handles what it leaves: expired leases to requeue, nothing
        # claimable, an agent that may not claim.
        row = sql.claim_at_once(self._db, agent_id, lease)
        if row is None:
            row = sql.locking_write(self._db, claim)
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
        with self._sql.read(self._db) as conn:
            earliest = self._sql.next_lease_expiry(conn)
        return parse_ts(earliest) if earliest is not None else None

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

        sql = self._sql
        # On PostgreSQL an accepted report with its attempt is one round trip; anything
        # else (a stale claim and its reason, no attempt given) takes the transaction below.
        row = sql.report_at_once(self._db, task_id, agent_id, attempt, status, notes)
        if row is not None:
            return Run.from_row(row)

        def report(conn: Any) -> Run:
            # The clock is read inside the transaction (SQLite: after BEGIN IMMEDIATE took
            # the write lock; PostgreSQL: the server's now()): a report that waited for
            # the lock is judged at the time it runs, not at the time it asked (issue 9
            # item 11).
            task, moment = _require_current_claim(sql, conn, task_id, agent_id, attempt, self._clock)
            return Run.from_row(sql.record_report(conn, task, task_id, agent_id, status, notes, moment))

        return sql.locking_write(self._db, report)

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

        sql = self._sql

        def add(conn: Any) -> Artifact:
            if agent_id is None:
                now = format_ts(sql.now(conn, self._clock))
                _require_task(sql, conn, task_id)
                author, recorded_attempt = added_by, None
            else:
                author = agent_id
                # The same rule as a report: the current, unexpired claim (attempt required
                # when this agent held an expired attempt of the task).
                task, moment = _require_current_claim(sql, conn, task_id, agent_id, attempt, self._clock)
                now = format_ts(moment)
                recorded_attempt = int(task["attempt"])
            row = conn.execute(
                sql.INSERT_ARTIFACT, (task_id, kind, path, meta_json, now, author, recorded_attempt)
            ).fetchall()[0]
            return Artifact.from_row(row)

        return sql.locking_write(self._db, add)

    def list_artifacts(self, task_id: int) -> list[Artifact]:
        """The artifacts of a task, oldest first; NotFound for an unknown task."""
        task_id = v.task_id(task_id)
        with self._db.read_transaction() as raw:
            conn = self._sql.wrap(raw)
            _require_task(self._sql, conn, task_id)
            rows = conn.execute(self._sql.ARTIFACTS_OF_TASK, (task_id,)).fetchall()
        return [Artifact.from_row(row) for row in rows]


def _require_current_claim(
    sql: Queries, conn: Any, task_id: int, agent_id: str, attempt: int | None, clock: Callable[[], datetime]
) -> tuple[Any, datetime]:
    """``(the task's row, now)`` when ``agent_id`` holds its current, unexpired claim;
    else NotFound or Conflict naming what is stale. Call it inside the write
    transaction that acts on the claim: now is read there, after it began (with the
    row, in one statement on PostgreSQL, which locks the row until commit).

    Without ``attempt`` the report is taken to be for the current attempt, unless this
    agent held an earlier attempt of the task that ended by its lease running out (an
    ``expired`` run in its name): the report may then be that attempt's late one, and
    only ``attempt`` can tell (issue 9 item 10).
    """
    task, moment = sql.locked_claim_row(conn, task_id, clock)
    if task is None:
        raise NotFound("task", task_id)
    now = format_ts(moment)
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
    if attempt is None and conn.execute(sql.HELD_AN_EXPIRED_ATTEMPT, (task_id, agent_id)).fetchone():
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
    return task, moment


def _require_task(sql: Queries, conn: Any, task_id: int) -> None:
    if conn.execute(sql.TASK_EXISTS, (task_id,)).fetchone() is None:
        raise NotFound("task", task_id)


def _require_active_agent(sql: Queries, conn: Any, agent_id: str) -> None:
    row = conn.execute(sql.AGENT_REVOKED_AT, (agent_id,)).fetchone()
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
