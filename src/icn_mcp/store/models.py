"""The store's results: dataclasses with ``to_dict()`` returning JSON-ready data.

They are snapshots: changing one changes nothing stored. (Slotted, not frozen: a
frozen dataclass takes several times longer to build, and a Task is built on every
claim.)

Timestamps are strings in the one stored format (:mod:`icn_mcp.db.timestamps`), so a
result serialises exactly as it is stored.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "TASK_COLUMNS",
    "TASK_STATUSES",
    "RUN_STATUSES",
    "REPORT_STATUSES",
    "Agent",
    "RegisteredAgent",
    "Task",
    "TaskPage",
    "Run",
    "TaskStatus",
    "Claim",
    "Artifact",
]

#: Every status a task can have; ``completed`` and ``failed`` are final.
TASK_STATUSES = ("open", "claimed", "completed", "failed")
#: What an agent may report with :meth:`~icn_mcp.store.Store.report_run`.
REPORT_STATUSES = ("claimed", "in_progress", "completed", "failed")
#: Every status a run row can have: the reports, and ``expired`` for a lease that ran
#: out (written by the store when the task is reclaimed).
RUN_STATUSES = REPORT_STATUSES + ("expired",)


#: The columns to select for :meth:`Task.from_row`, in the order of Task's fields.
TASK_COLUMNS = (
    "id, title, description, status, priority, created_by, created_at, updated_at, "
    "depends_on, attempt, max_attempts, claimed_by, lease_expires_at, idempotency_key"
)


class _ToDict:
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (dicts, lists, strings, numbers, None)."""
        return asdict(self)  # type: ignore[call-overload]


@dataclass(slots=True)
class Agent(_ToDict):
    """A registered agent, as an authenticated token shows it."""

    id: str
    name: str
    kind: str
    version: str | None
    created_at: str
    token_expires_at: str | None


@dataclass(slots=True)
class RegisteredAgent(_ToDict):
    """An agent and its fresh bearer token: the only time the raw token is available."""

    id: str
    name: str
    kind: str
    version: str | None
    token: str = field(repr=False)
    token_expires_at: str


@dataclass(slots=True)
class Task(_ToDict):
    """One task. ``attempt`` counts claims (the fencing token); ``claimed_by`` and
    ``lease_expires_at`` describe the current claim while ``status`` is ``claimed``."""

    id: int
    title: str
    description: str | None
    status: str
    priority: int
    created_by: str | None
    created_at: str
    updated_at: str
    depends_on: list[int]
    attempt: int
    max_attempts: int
    claimed_by: str | None
    lease_expires_at: str | None
    idempotency_key: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Task:
        """A task from a row selected as :data:`TASK_COLUMNS` (positional: this sits
        on the claim path, where named access cost more than the rest of it)."""
        deps = row[8]
        return cls(*row[:8], json.loads(deps) if deps else [], *row[9:14])  # type: ignore[call-arg]


@dataclass(slots=True)
class TaskPage(_ToDict):
    """One page of :meth:`~icn_mcp.store.Store.list_tasks`; pass ``next_cursor`` back
    for the next page (None on the last one)."""

    tasks: list[Task]
    next_cursor: str | None


@dataclass(slots=True)
class Run(_ToDict):
    """One report on a task (or an ``expired`` lease), in the order they happened."""

    id: int
    task_id: int
    agent_id: str
    attempt: int
    status: str
    notes: str | None
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Run:
        return cls(
            id=row["id"],
            task_id=row["task_id"],
            agent_id=row["agent_id"],
            attempt=row["attempt"],
            status=row["status"],
            notes=row["notes"],
            created_at=row["created_at"],
        )


@dataclass(slots=True)
class TaskStatus(_ToDict):
    """Where a task stands: its status, attempt and lease, and its latest run.

    ``agent`` is the current claimer while the task is claimed (a claim writes no
    run, so the latest run may be an earlier claimer's), otherwise the agent of the
    latest run (or the last claimer when there is none); ``notes`` are the latest
    run's notes.
    """

    id: int
    status: str
    attempt: int
    lease_expires_at: str | None
    agent: str | None
    notes: str | None
    latest_run: Run | None


@dataclass(slots=True)
class Claim(_ToDict):
    """A claimed task: work on it until ``lease_expires_at`` and report with
    ``attempt``, the fencing token that makes a late report from this claim fail."""

    task_id: int
    title: str
    lease_expires_at: str
    attempt: int
    task: Task


@dataclass(slots=True)
class Artifact(_ToDict):
    """Something a task produced: a ``kind``, a ``path`` and free-form ``meta``.

    ``added_by`` is who added it (an agent id, or ``maintainer:<role>``; None for
    artifacts recorded before migration 0004), ``attempt`` the claim it was added
    under (None when a maintainer added it).
    """

    id: int
    task_id: int
    kind: str
    path: str
    meta: dict[str, Any] | None
    created_at: str
    added_by: str | None = None
    attempt: int | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Artifact:
        meta = row["meta"]
        return cls(
            id=row["id"],
            task_id=row["task_id"],
            kind=row["kind"],
            path=row["path"],
            meta=json.loads(meta) if meta is not None else None,
            created_at=row["created_at"],
            added_by=row["added_by"],
            attempt=row["attempt"],
        )
