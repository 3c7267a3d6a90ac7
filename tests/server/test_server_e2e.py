"""The real server under load, then kill -9 and a restart on the same database (issue 5).

One agent bootstraps, creates 300 tasks with dependencies (chains and a fan-in), and
8 concurrent HTTP clients (8 agents) claim and complete them until none is left. No
task may be claimed twice or before its dependencies completed. Then the server is
killed with SIGKILL and started again on the same file: agents, tokens, tasks, runs
and leases must be exactly as they were, and the old tokens must still work.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.serverproc import ADMIN_TOKEN, ServerProcess, bearer

TASKS = 300
CLIENTS = 8


def _create_tasks(client: httpx.Client, token: str) -> dict[int, list[int]]:
    """300 tasks: every 10th starts a chain of 10, and the last one waits on all chain ends."""
    deps: dict[int, list[int]] = {}
    previous: int | None = None
    chain_ends: list[int] = []
    for n in range(TASKS - 1):
        depends_on = [] if n % 10 == 0 or previous is None else [previous]
        response = client.post(
            "/api/task/create",
            json={"title": f"task {n}", "depends_on": depends_on, "priority": n % 3},
            headers=bearer(token),
        )
        assert response.status_code == 200, response.text
        task_id = response.json()["id"]
        deps[task_id] = depends_on
        previous = task_id
        if n % 10 == 9:
            chain_ends.append(task_id)
    response = client.post(
        "/api/task/create", json={"title": "fan-in", "depends_on": chain_ends}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    deps[response.json()["id"]] = chain_ends
    return deps


def _worker(
    url: str,
    token: str,
    claims: list[tuple[int, int, str]],
    claimed_at: dict[int, float],
    reported_at: dict[int, float],
    lock: threading.Lock,
    errors: list[str],
) -> None:
    """Claim and complete until the server has nothing left for this agent."""
    with httpx.Client(base_url=url, timeout=60.0, headers=bearer(token)) as client:
        idle = 0
        while idle < 3:
            response = client.post("/api/task/claim", json={})
            received = time.monotonic()
            if response.status_code != 200:
                errors.append(f"claim {response.status_code} {response.text}")
                return
            body = response.json()
            if body.get("error") == "no_available_tasks":
                # Others may still be completing dependencies: look again a few times.
                idle += 1
                time.sleep(0.2)
                continue
            idle = 0
            with lock:
                claims.append((body["task_id"], body["attempt"], token))
                claimed_at[body["task_id"]] = received
                reported_at[body["task_id"]] = time.monotonic()
            report = client.post(
                "/api/task/run",
                json={
                    "task_id": body["task_id"],
                    "status": "completed",
                    "attempt": body["attempt"],
                    "notes": "done",
                    "task_kind": "ignored-extra-field",
                },
            )
            if report.status_code != 200:
                errors.append(f"run {report.status_code} {report.text}")
                return


def _all_tasks(client: httpx.Client) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        response = client.get("/api/task/list", params=params)
        assert response.status_code == 200, response.text
        tasks.extend(response.json())
        cursor = response.headers.get("X-Next-Cursor")
        if not cursor:
            return tasks


@pytest.mark.slow
def test_concurrent_claims_then_kill_9_and_restart(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    server = server_factory(tmp_path / "var").start()
    client = server.client()

    bootstrap = client.post("/api/agent/register", json={"name": "boss", "kind": "planner", "version": "1"})
    assert bootstrap.status_code == 200, bootstrap.text
    assert set(bootstrap.json()) == {"ok", "id", "token"}
    boss = bootstrap.json()["token"]
    tokens = []
    for n in range(CLIENTS):
        response = client.post("/api/agent/register", json={"name": f"worker-{n}", "kind": "ops"}, headers=bearer(boss))
        assert response.status_code == 200, response.text
        tokens.append(response.json()["token"])

    deps = _create_tasks(client, boss)
    assert len(deps) == TASKS

    claims: list[tuple[int, int, str]] = []
    claimed_at: dict[int, float] = {}
    reported_at: dict[int, float] = {}
    errors: list[str] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_worker, args=(server.url, token, claims, claimed_at, reported_at, lock, errors))
        for token in tokens
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors[:5]

    claimed = Counter(task_id for task_id, _, _ in claims)
    assert sorted(claimed) == sorted(deps), "every task claimed"
    assert max(claimed.values()) == 1, "no task claimed twice"
    for task_id, depends_on in deps.items():
        # A claim answered before the dependency's completing report was even sent
        # proves the dependent was claimed too early (ordering, not timing).
        for dependency in depends_on:
            assert claimed_at[task_id] > reported_at[dependency], f"task {task_id} claimed before {dependency}"

    # A lease to check after the restart: one task claimed and left in progress.
    held = client.post("/api/task/create", json={"title": "held"}, headers=bearer(boss)).json()["id"]
    claim = client.post("/api/task/claim", json={"lease_s": 3600}, headers=bearer(tokens[0])).json()
    assert claim["task_id"] == held
    client.post(
        "/api/task/run",
        json={"task_id": held, "status": "in_progress", "attempt": claim["attempt"]},
        headers=bearer(tokens[0]),
    )

    before_tasks = _all_tasks(client)
    before_status = {
        t["id"]: client.get("/api/task/status", params={"task_id": t["id"]}).json()
        for t in before_tasks[::25] + [before_tasks[-1]]
    }
    before_stats = client.get("/api/admin/stats", headers=bearer(ADMIN_TOKEN)).json()["stats"]
    client.close()

    server.kill()  # SIGKILL: no shutdown, no checkpoint
    server.start()  # same database directory
    with server.client() as client:
        assert _all_tasks(client) == before_tasks
        for task_id, status in before_status.items():
            assert client.get("/api/task/status", params={"task_id": task_id}).json() == status
        assert client.get("/api/admin/stats", headers=bearer(ADMIN_TOKEN)).json()["stats"] == before_stats
        assert before_stats["tasks_completed"] == TASKS
        assert before_stats["runs_total"] >= TASKS

        # The lease survived: the holder may still report on it, nobody else can claim it.
        assert client.post("/api/task/claim", headers=bearer(tokens[1])).json() == {"error": "no_available_tasks"}
        done = client.post(
            "/api/task/run",
            headers=bearer(tokens[0]),
            json={"task_id": held, "status": "completed", "attempt": claim["attempt"]},
        )
        assert done.status_code == 200, done.text

        # The old tokens still work, for agents and for creating tasks.
        for token in [boss, *tokens]:
            response = client.post("/api/task/claim", headers=bearer(token))
            assert response.status_code == 200 and response.json() == {"error": "no_available_tasks"}
        created = client.post("/api/task/create", json={"title": "after restart"}, headers=bearer(boss))
        assert created.status_code == 200, created.text
