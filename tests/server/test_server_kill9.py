"""kill -9 of the server in the middle of claims loses no acknowledged write (issue 10).

Six agents claim and complete tasks through HTTP; every 200 answer (a claim, a
report) is written down. The server is killed with SIGKILL at a random moment
while they work, three times, and started again on the same database. After each
kill, read straight from the database: every acknowledged claim is still that
agent's live claim (or its completion, when the report was in flight), every
acknowledged report is there, and no task was claimed twice: leases are long, so
any second attempt would be a second live claim. After the last restart the agents
report what they hold and drain the rest: every task completed exactly once. A
claim the server committed but never answered (in flight at the kill) is found
held by the agent that sent it, and that agent can complete it.

On SQLite and on PostgreSQL (``MCP_TEST_DATABASE_URL``).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.serverproc import ServerProcess, bearer

pytestmark = pytest.mark.slow

CLIENTS = 6
TASKS = 240
KILLS = 3
#: No lease runs out during the test: a second attempt of a task is a second live claim.
LEASE_S = 3600
JOIN_TIMEOUT_S = 120.0


@dataclass
class Ledger:
    """Every acknowledged answer, and every request that got none (in flight at a kill)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: (task_id, attempt) -> agent_id, for every claim answered 200.
    claims: dict[tuple[str, int], str] = field(default_factory=dict)
    #: (task_id, attempt) -> agent_id, for every "completed" report answered 200.
    reports: dict[tuple[str, int], str] = field(default_factory=dict)
    #: agent_id -> claims in flight at a kill (sent, never answered).
    unanswered_claims: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    acknowledged: int = 0

    def held_by(self, agent_id: str) -> list[tuple[str, int]]:
        """This agent's acknowledged claims whose report was not acknowledged."""
        with self.lock:
            return [key for key, agent in self.claims.items() if agent == agent_id and key not in self.reports]


def _agent(url: str, agent_id: str, token: str, ledger: Ledger, drain: bool) -> None:
    """Report what this agent holds, then claim and complete until the server dies
    (or, with ``drain``, until nothing is left to claim)."""

    def report(client: httpx.Client, task_id: str, attempt: int, *, resent: bool) -> bool:
        response = client.post("/api/task/run", json={"task_id": task_id, "status": "completed", "attempt": attempt})
        body = response.json()
        if response.status_code == 409 and resent and (body["status"], body["attempt"]) == ("completed", attempt):
            # The report sent before the kill was committed but never answered; the
            # database check shows whose completion it is.
            return True
        if response.status_code != 200:
            ledger.errors.append(f"{agent_id} run {task_id}/{attempt}: {response.status_code} {response.text}")
            return False
        with ledger.lock:
            ledger.reports[(task_id, attempt)] = agent_id
            ledger.acknowledged += 1
        return True

    with httpx.Client(base_url=url, headers=bearer(token), timeout=60.0) as client:
        try:
            for task_id, attempt in ledger.held_by(agent_id):
                if not report(client, task_id, attempt, resent=True):
                    return
            while True:
                try:
                    response = client.post("/api/task/claim", json={"lease_s": LEASE_S})
                except httpx.TransportError:
                    with ledger.lock:
                        ledger.unanswered_claims[agent_id] += 1
                    raise
                if response.status_code != 200:
                    ledger.errors.append(f"{agent_id} claim: {response.status_code} {response.text}")
                    return
                body = response.json()
                if "task_id" not in body:
                    if drain:
                        return
                    ledger.errors.append(f"{agent_id}: nothing left to claim before the kill")
                    return
                with ledger.lock:
                    ledger.claims[(body["task_id"], body["attempt"])] = agent_id
                    ledger.acknowledged += 1
                if not report(client, body["task_id"], body["attempt"], resent=False):
                    return
        except httpx.TransportError:
            if drain:
                ledger.errors.append(f"{agent_id}: the server went away while draining")
            # Otherwise the kill: whatever was in flight is unacknowledged.


def _database_state(
    backend: str, where: str
) -> tuple[dict[str, tuple[str, int, str | None]], list[tuple[str, str, int, str]]]:
    """Read straight from the database (the server is dead): tasks and runs."""
    tasks_sql = "SELECT id, status, attempt, claimed_by FROM tasks"
    runs_sql = "SELECT task_id, agent_id, attempt, status FROM runs ORDER BY id"
    rows: list[list[Any]]
    if backend == "postgresql":
        import psycopg

        with psycopg.connect(where) as conn:
            rows = [conn.execute(tasks_sql).fetchall(), conn.execute(runs_sql).fetchall()]
    else:
        conn = sqlite3.connect(where)
        try:
            rows = [conn.execute(tasks_sql).fetchall(), conn.execute(runs_sql).fetchall()]
        finally:
            conn.close()
    tasks = {str(task_id): (status, attempt, claimed_by) for task_id, status, attempt, claimed_by in rows[0]}
    runs = [(str(task_id), str(agent), attempt, status) for task_id, agent, attempt, status in rows[1]]
    return tasks, runs


def _check_nothing_acknowledged_lost(
    ledger: Ledger, tasks: dict[str, tuple[str, int, str | None]], runs: list[tuple[str, str, int, str]]
) -> None:
    completions = [(task_id, agent, attempt) for task_id, agent, attempt, status in runs if status == "completed"]
    assert max(Counter(task_id for task_id, _, _ in completions).values(), default=0) <= 1, "a task completed twice"
    assert {attempt for _, attempt, _ in tasks.values()} <= {0, 1}, "a task was claimed twice while its lease was live"
    for (task_id, attempt), agent in ledger.reports.items():
        assert (task_id, agent, attempt) in completions, f"acknowledged report of task {task_id} lost"
        assert tasks[task_id][:2] == ("completed", attempt)
    for (task_id, attempt), agent in ledger.claims.items():
        # Still this agent's live claim, or completed by it (a report in flight at a kill).
        assert tasks[task_id] == ("claimed", attempt, agent) or (task_id, agent, attempt) in completions, (
            f"acknowledged claim of task {task_id} by {agent} lost: {tasks[task_id]}"
        )


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_kill_9_in_the_middle_of_claims_loses_no_acknowledged_claim_or_report(
    backend: str, server_factory: type[ServerProcess], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(20261202)
    env: dict[str, str] = {}
    where = str(tmp_path / "var" / "icn-mcp.sqlite")
    if backend == "postgresql":
        where = request.getfixturevalue("pg_url")
        env["MCP_DB_URL"] = where
    server = server_factory(tmp_path / "var", **env).start()

    with server.client() as client:
        boss = client.post("/api/agent/register", json={"name": "boss", "kind": "planner"}).json()["token"]
        agents = []
        for n in range(CLIENTS):
            response = client.post(
                "/api/agent/register", json={"name": f"worker-{n}", "kind": "ops"}, headers=bearer(boss)
            )
            assert response.status_code == 200, response.text
            agents.append((response.json()["id"], response.json()["token"]))
        for n in range(TASKS):
            response = client.post("/api/task/create", json={"title": f"task {n}"}, headers=bearer(boss))
            assert response.status_code == 200, response.text

    ledger = Ledger()
    for round_no in range(KILLS + 1):
        last = round_no == KILLS
        threads = [
            threading.Thread(target=_agent, args=(server.url, agent_id, token, ledger, last))
            for agent_id, token in agents
        ]
        for thread in threads:
            thread.start()
        if not last:
            # A random moment once this round's agents are at work.
            target = ledger.acknowledged + rng.randint(10, 50)
            while ledger.acknowledged < target and not ledger.errors and any(t.is_alive() for t in threads):
                time.sleep(0.002)
            server.kill()
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)
            assert not thread.is_alive(), "an agent is stuck"
        assert not ledger.errors, ledger.errors[:5]
        if not last:
            _check_nothing_acknowledged_lost(ledger, *_database_state(backend, where))
            server.start()  # the same database

    tasks, runs = _database_state(backend, where)
    _check_nothing_acknowledged_lost(ledger, tasks, runs)
    # Left: claims the server committed but never answered. Each belongs to an agent
    # whose claim was in flight at a kill, and that agent can complete it.
    orphans = {task_id: (attempt, agent) for task_id, (status, attempt, agent) in tasks.items() if status == "claimed"}
    assert all((task_id, attempt) not in ledger.claims for task_id, (attempt, _) in orphans.items())
    per_agent = Counter(agent for _, agent in orphans.values())
    assert all(count <= ledger.unanswered_claims[agent] for agent, count in per_agent.items()), (
        per_agent,
        ledger.unanswered_claims,
    )
    tokens = dict(agents)
    with server.client() as client:
        for task_id, (attempt, agent) in orphans.items():
            response = client.post(
                "/api/task/run",
                json={"task_id": task_id, "status": "completed", "attempt": attempt},
                headers=bearer(tokens[str(agent)]),
            )
            assert response.status_code == 200, response.text

    tasks, runs = _database_state(backend, where)
    assert len(tasks) == TASKS
    assert {(status, attempt) for status, attempt, _ in tasks.values()} == {("completed", 1)}
    completions = Counter(task_id for task_id, _, _, status in runs if status == "completed")
    assert completions == Counter(list(tasks)), "every task completed exactly once"
