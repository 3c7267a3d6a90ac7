"""The agent HQ on PostgreSQL (issues 10 and 11): real ``icn-mcp serve`` processes on
one real PostgreSQL database (``MCP_TEST_DATABASE_URL``), spoken to over HTTP and MCP.

Two servers sharing one database stand for two hosts: work created through one must
wake the waiting claims of the other, which can learn of it only through the
database (LISTEN/NOTIFY, migration 0007), never through memory.
"""

from __future__ import annotations

import concurrent.futures
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests import pg
from tests.server.serverproc import ADMIN_TOKEN, ServerProcess, bearer
from tests.server.waiting_support import LONG_WAIT_S, claim_waiting, metric, register, wait_for_waiters

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _listening(url: str) -> bool:
    """Is a server's LISTEN connection in the database's pg_stat_activity?"""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'icn-mcp-listen'"
        ).fetchone()
    return bool(row and row[0])


@pytest.fixture
def pg_servers(server_factory: type[ServerProcess], pg_url: str, tmp_path: Path) -> list[ServerProcess]:
    """Two servers ("hosts") on one fresh PostgreSQL database, each with its own MCP_DB_DIR."""
    return [server_factory(tmp_path / f"host{i}", MCP_DB_URL=pg_url, MCP_HEALTH_CACHE_S="0").start() for i in range(2)]


def test_an_agent_works_through_a_server_on_postgresql(
    server_factory: type[ServerProcess], pg_url: str, tmp_path: Path
) -> None:
    secret_url = pg_url.replace("postgresql://", "postgresql://postgres:NotTheP4ssword@", 1)
    secret_url = secret_url if "@" not in pg_url else pg_url
    server = server_factory(tmp_path / "var", MCP_DB_URL=secret_url).start()
    with server.client() as client:
        agent = register(client, "pg-agent")
        auth = bearer(agent["token"])
        first = client.post("/api/task/create", json={"title": "first", "priority": 1}, headers=auth).json()
        second = client.post("/api/task/create", json={"title": "second", "depends_on": [first["id"]]}, headers=auth)
        assert second.status_code == 200, second.text
        claim = client.post("/api/task/claim", json={}, headers=auth).json()
        assert claim["task_id"] == first["id"] and claim["attempt"] == 1
        # The dependent waits for its dependency: nothing else is claimable.
        assert client.post("/api/task/claim", json={}, headers=auth).json() == {"error": "no_available_tasks"}
        done = client.post(
            "/api/task/run", json={"task_id": first["id"], "status": "completed", "attempt": 1}, headers=auth
        )
        assert done.status_code == 200, done.text
        stale = client.post(
            "/api/task/run", json={"task_id": first["id"], "status": "completed", "attempt": 1}, headers=auth
        )
        assert stale.status_code == 409, stale.text
        assert client.post("/api/task/claim", json={}, headers=auth).json()["task_id"] == second.json()["id"]
        health = client.get("/healthz/db").json()
        assert health["ok"] is True and health["database"]["last_migration"] == pg.latest_migration()
        assert {t["name"]: t["count"] for t in health["database"]["tables"]}["tasks"] == 2
        metrics = client.get("/metrics").text
        for gauge in ("icn_mcp_db_pool_connections", "icn_mcp_db_pool_available", "icn_mcp_db_pool_max"):
            assert re.search(rf"^{gauge} [1-9]", metrics, re.M), gauge
    # The agent's token is stored only as a hash, in PostgreSQL too.
    import psycopg

    with psycopg.connect(pg_url) as conn:
        hashes = [row[0] for row in conn.execute("SELECT token_hash FROM agent_tokens")]
    assert hashes and agent["token"] not in hashes
    assert server.stop() in (0, -15)
    log = "".join(server.stderr_lines)
    assert "NotTheP4ssword" not in log and agent["token"] not in log
    # Nothing of the database went to the local directory: PostgreSQL holds it.
    assert not list((tmp_path / "var").glob("*.sqlite*"))


def test_the_dashboard_reads_postgresql(server_factory: type[ServerProcess], pg_url: str, tmp_path: Path) -> None:
    server = server_factory(tmp_path / "var", MCP_DB_URL=pg_url).start()
    admin = bearer(ADMIN_TOKEN)
    with server.client() as client:
        agent = register(client, "shown")
        auth = bearer(agent["token"])
        first = client.post("/api/task/create", json={"title": "first"}, headers=auth).json()["id"]
        second = client.post("/api/task/create", json={"title": "second", "depends_on": [first]}, headers=auth)
        claim = client.post("/api/task/claim", json={}, headers=auth).json()
        assert claim["task_id"] == first
        agents = client.get("/api/admin/agents", headers=admin).json()["agents"]
        assert [(a["name"], a["tasks_held"], a["tokens_active"]) for a in agents] == [("shown", [first], 1)]
        graph = client.get("/api/admin/graph", params={"task_id": first}, headers=admin).json()["graph"]
        assert graph["edges"] == [{"from": first, "to": second.json()["id"]}]
        assert client.get("/api/admin/runs", params={"task_id": first}, headers=admin).json()["runs"] == []
        database = client.get("/api/admin/database", headers=admin).json()["database"]
        assert database["backend"] == "postgresql" and database["server_version"]
        assert database["last_migration"] == pg.latest_migration() and database["health"]["ok"] is True
        assert client.get("/api/admin/backups", headers=admin).json()["backups"] == []


def test_mcp_tools_work_on_postgresql(server_factory: type[ServerProcess], pg_url: str, tmp_path: Path) -> None:
    server = server_factory(tmp_path / "var", MCP_DB_URL=pg_url).start()
    with server.client() as client:
        agent = register(client, "mcp-agent")

    async def run() -> dict[str, Any]:
        http = httpx.AsyncClient(headers=bearer(agent["token"]), timeout=30)
        async with http, Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as mcp:
            created = await mcp.call_tool("create_task", {"title": "through mcp"})
            assert not created.is_error, created
            claimed = await mcp.call_tool("claim_task", {})
            assert not claimed.is_error, claimed
            return claimed.structured_content or {}

    claimed = anyio.run(run)
    assert "through mcp" in str(claimed)


def test_five_waiters_three_tasks_created_on_another_server(pg_servers: list[ServerProcess]) -> None:
    waiting, other = pg_servers
    with waiting.client() as client:
        agents = [register(client, f"waiter-{i}") for i in range(5)]
    with other.client() as client:
        maker = register(client, "maker")
    with concurrent.futures.ThreadPoolExecutor(5) as pool, waiting.client() as client:
        futures = []
        for agent in agents:  # arrival order: one at a time
            futures.append(pool.submit(claim_waiting, waiting.url, agent["token"], 8.0))
            wait_for_waiters(client, len(futures))
        with other.client() as maker_client:
            for i in range(3):
                made = maker_client.post(
                    "/api/task/create", json={"title": f"elsewhere {i}"}, headers=bearer(maker["token"])
                )
                assert made.status_code == 200, made.text
        answers = [future.result() for future in futures]
    claimed = [answer for answer in answers if "task_id" in answer]
    assert len(claimed) == 3 and len({answer["task_id"] for answer in claimed}) == 3
    # One server serves its waiters in arrival order.
    assert all("task_id" in answer for answer in answers[:3]), answers
    assert answers[3:] == [{"error": "no_available_tasks"}] * 2
    with waiting.client() as client:
        assert metric(client, "icn_mcp_claim_waiters") == 0


def test_a_dependency_completed_on_another_server_wakes_a_waiter(pg_servers: list[ServerProcess]) -> None:
    waiting, other = pg_servers
    with other.client() as client:
        holder = register(client, "holder")
        auth = bearer(holder["token"])
        first = client.post("/api/task/create", json={"title": "first"}, headers=auth).json()
        second = client.post("/api/task/create", json={"title": "second", "depends_on": [first["id"]]}, headers=auth)
        assert client.post("/api/task/claim", json={}, headers=auth).json()["task_id"] == first["id"]
    with waiting.client() as client:
        waiter = register(client, "waiter")
    with concurrent.futures.ThreadPoolExecutor(1) as pool, waiting.client() as client:
        future = pool.submit(claim_waiting, waiting.url, waiter["token"], LONG_WAIT_S)
        wait_for_waiters(client, 1)
        with other.client() as holder_client:
            report = {"task_id": first["id"], "status": "completed", "attempt": 1}
            assert holder_client.post("/api/task/run", json=report, headers=auth).status_code == 200
        answer = future.result()
    assert answer["task_id"] == second.json()["id"] and answer["attempt"] == 1


def test_an_expired_lease_held_through_another_server_wakes_a_waiter(pg_servers: list[ServerProcess]) -> None:
    waiting, other = pg_servers
    with other.client() as client:
        slow = register(client, "slow")
        task = client.post("/api/task/create", json={"title": "leased"}, headers=bearer(slow["token"])).json()
        claim = client.post("/api/task/claim", json={"lease_s": 1}, headers=bearer(slow["token"])).json()
        assert claim["task_id"] == task["id"] and claim["attempt"] == 1
    with waiting.client() as client:
        waiter = register(client, "waiter")
    answer = claim_waiting(waiting.url, waiter["token"], LONG_WAIT_S)
    assert answer["task_id"] == task["id"] and answer["attempt"] == 2
    # The late report of the first attempt is refused: the lease is the fencing token.
    with other.client() as client:
        late = client.post(
            "/api/task/run",
            json={"task_id": task["id"], "status": "completed", "attempt": 1},
            headers=bearer(slow["token"]),
        )
    assert late.status_code == 409, late.text


def test_waiters_are_still_served_while_the_listener_is_cut_off(pg_servers: list[ServerProcess], pg_url: str) -> None:
    """pg_terminate_backend of every connection (the LISTEN one included) while claims
    wait: the waiters fall back to polling, the listener comes back by itself, and
    work created meanwhile on the other server still reaches them."""
    waiting, other = pg_servers
    with waiting.client() as client:
        waiter = register(client, "waiter")
    with other.client() as client:
        maker = register(client, "maker")
    with concurrent.futures.ThreadPoolExecutor(1) as pool, waiting.client() as client:
        future = pool.submit(claim_waiting, waiting.url, waiter["token"], LONG_WAIT_S)
        wait_for_waiters(client, 1)
        admin = pg.admin_url()
        assert admin is not None
        assert pg.terminate_backends(admin, pg_url) >= 2  # both servers' listeners and pools
        with other.client() as maker_client:
            made = maker_client.post("/api/task/create", json={"title": "while cut"}, headers=bearer(maker["token"]))
            assert made.status_code == 200, made.text
        answer = future.result()
    assert answer["task_id"] == made.json()["id"]
    # The listener reconnected without an operator: a new task wakes a new waiter.
    deadline = time.monotonic() + 30
    while not _listening(pg_url):
        assert time.monotonic() < deadline, "the listener never came back"
        time.sleep(0.1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool, waiting.client() as client:
        future = pool.submit(claim_waiting, waiting.url, waiter["token"], LONG_WAIT_S)
        wait_for_waiters(client, 1)
        with other.client() as maker_client:
            again = maker_client.post("/api/task/create", json={"title": "after"}, headers=bearer(maker["token"]))
        assert future.result()["task_id"] == again.json()["id"]


def test_serve_with_several_workers_on_postgresql(
    server_factory: type[ServerProcess], pg_url: str, tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "var", args=("--workers", "2"), MCP_DB_URL=pg_url).start()
    with server.client() as client:
        agent = register(client, "worker-agent")
        auth = bearer(agent["token"])
        ids = {client.post("/api/task/create", json={"title": f"t{i}"}, headers=auth).json()["id"] for i in range(6)}
        claimed = {client.post("/api/task/claim", json={}, headers=auth).json()["task_id"] for _ in range(6)}
    assert claimed == ids
    assert server.stop() in (0, -15)


def test_serve_on_an_unreachable_postgresql_fails_cleanly(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "MCP_DB_DIR": str(tmp_path / "var"),
        "MCP_DB_URL": "postgresql://app:pw@127.0.0.1:1/hq",  # nothing listens on port 1
        "MCP_DB_CONNECT_TIMEOUT_S": "1",
        "MCP_PORT": "0",
    }
    for args in (("serve",), ("agent", "register", "a", "--kind", "planner")):
        result = subprocess.run(
            [sys.executable, "-m", "icn_mcp", *args], capture_output=True, text=True, timeout=60, env=env
        )
        assert result.returncode == 1, (args, result.stderr)
        assert "is unavailable" in result.stderr and "pw@" not in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()  # nothing was written anywhere
