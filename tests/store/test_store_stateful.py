"""Hypothesis-driven sequences of create / claim / report / expire (moving an injected
clock) keep the claim invariants: a task is held by at most one agent, completed
tasks never return to open, attempts never decrease, and dependencies gate claims."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from icn_mcp.db import Database
from icn_mcp.db.timestamps import format_ts
from icn_mcp.errors import Conflict
from icn_mcp.store import REPORT_STATUSES, Store

from .store_helpers import MAINTAINER_TOKEN, FakeClock

AGENTS = 3


class ClaimMachine(RuleBasedStateMachine):
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="icn-store-")
        self.db = Database(Path(self.dir) / "hq.sqlite")
        self.clock = FakeClock()
        self.store = Store(self.db, clock=self.clock, maintainer_tokens=[MAINTAINER_TOKEN])
        self.agents = [self.store.register_agent("agent-0", "planner").id] + [
            self.store.register_agent(f"agent-{i}", "ops", credential=MAINTAINER_TOKEN).id for i in range(1, AGENTS)
        ]
        self.deps: dict[int, list[int]] = {}
        self.completed: set[int] = set()
        self.attempts: dict[int, int] = {}
        # task -> (agent, attempt, lease_expires_at) of the claims handed out
        self.held: dict[int, tuple[str, int, str]] = {}
        # (task, agent) pairs where the agent's claim ran out and was released: a
        # report of that agent without attempt is ambiguous from then on.
        self.expired_holders: set[tuple[int, str]] = set()

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _rows(self) -> dict[int, dict]:
        rows = self.db.connection().execute("SELECT * FROM tasks").fetchall()
        return {row["id"]: dict(row) for row in rows}

    @initialize(target=tasks)
    def first_tasks(self) -> object:
        return multiple(*(self.create([], priority=0, max_attempts=2) for _ in range(3)))

    @rule(
        target=tasks,
        deps=st.lists(tasks, max_size=3, unique=True),
        priority=st.integers(-2, 2),
        max_attempts=st.integers(1, 3),
    )
    def create(self, deps: list[int], priority: int, max_attempts: int) -> int:
        task = self.store.create_task("t", depends_on=deps, priority=priority, max_attempts=max_attempts)
        self.deps[task.id] = deps
        return task.id

    @rule(agent=st.integers(0, AGENTS - 1), lease_s=st.integers(1, 120))
    def claim(self, agent: int, lease_s: int) -> None:
        now = format_ts(self.clock())
        claim = self.store.claim_next_task(self.agents[agent], lease_s=lease_s)
        # Any claim releases every lease that has run out (recorded as expired runs).
        for held_task, (holder, _, lease) in self.held.items():
            if lease <= now:
                self.expired_holders.add((held_task, holder))
        if claim is None:
            return
        task_id = claim.task_id
        previous = self.held.get(task_id)
        # Held by at most one agent: only an expired claim may be taken over.
        assert previous is None or previous[2] <= now, (task_id, previous, now)
        assert all(dep in self.completed for dep in self.deps[task_id])
        assert task_id not in self.completed
        assert claim.attempt > self.attempts.get(task_id, 0)
        self.held[task_id] = (self.agents[agent], claim.attempt, claim.lease_expires_at)

    @rule(data=st.data(), status=st.sampled_from(REPORT_STATUSES), attempt_delta=st.sampled_from([None, 0, -1, 1]))
    def report(self, data: st.DataObject, status: str, attempt_delta: int | None) -> None:
        # Mostly reports on claims handed out, often by their holder (whose lease may
        # have expired meanwhile): the interesting cases; sometimes anything at all.
        held = sorted(self.held)
        pool = held if held and data.draw(st.booleans()) else sorted(self.deps)
        task_id = data.draw(st.sampled_from(pool))
        if task_id in self.held and data.draw(st.booleans()):
            agent_id = self.held[task_id][0]
        else:
            agent_id = self.agents[data.draw(st.integers(0, AGENTS - 1))]
        row = self._rows()[task_id]
        attempt = None if attempt_delta is None else row["attempt"] + attempt_delta
        if attempt is not None and attempt < 1:  # not a valid attempt: report without one
            attempt, attempt_delta = None, None
        now = format_ts(self.clock())
        should_work = (
            row["status"] == "claimed"
            and row["claimed_by"] == agent_id
            and row["lease_expires_at"] > now
            and attempt_delta in (None, 0)
            and not (attempt_delta is None and (task_id, agent_id) in self.expired_holders)
        )
        try:
            self.store.report_run(task_id, agent_id, status, attempt=attempt)
        except Conflict:
            assert not should_work
            return
        assert should_work
        if status == "completed":
            self.completed.add(task_id)
        if status in ("completed", "failed"):
            self.held.pop(task_id, None)
        elif status == "in_progress":
            agent_id, attempt_now, _ = self.held[task_id]
            lease = self._rows()[task_id]["lease_expires_at"]
            self.held[task_id] = (agent_id, attempt_now, lease)

    @rule(seconds=st.integers(0, 150))
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @invariant()
    def claims_are_consistent(self) -> None:
        rows = self._rows()
        for task_id, row in rows.items():
            if task_id in self.completed:
                assert row["status"] == "completed"
            assert row["attempt"] >= self.attempts.get(task_id, 0)
            self.attempts[task_id] = row["attempt"]
            assert row["attempt"] <= row["max_attempts"]
            unmet = sum(1 for dep in self.deps[task_id] if rows[dep]["status"] != "completed")
            assert row["blocking_deps"] == unmet
            if row["status"] == "claimed":
                assert unmet == 0
                holder = self.held[task_id]
                assert (row["claimed_by"], row["attempt"]) == holder[:2]
            else:
                assert row["lease_expires_at"] is None


ClaimMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestClaimInvariants = ClaimMachine.TestCase
