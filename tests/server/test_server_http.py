"""The HTTP worker API against a real server: shapes, errors, limits, metrics, logs, shutdown."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.server.serverproc import ADMIN_TOKEN, ServerProcess, bearer


def _register(client: httpx.Client, name: str = "agent", token: str | None = None) -> dict[str, Any]:
    response = client.post(
        "/api/agent/register", json={"name": name, "kind": "planner"}, headers=bearer(token) if token else {}
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def agents(server: ServerProcess) -> tuple[dict[str, Any], dict[str, Any]]:
    with server.client() as client:
        first = _register(client, "first")
        second = _register(client, "second", first["token"])
    return first, second


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """One server and agent token for the tests that only look at error answers."""
    server = ServerProcess(tmp_path_factory.mktemp("shared") / "var").start()
    try:
        with server.client() as client:
            yield server, _register(client)["token"]
    finally:
        server.kill()


def test_health_and_openapi(server: ServerProcess) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"ok": True}
        health = client.get("/healthz/db").json()
        assert health["ok"] is True and health["latency_ms"] >= 0
        database = health["database"]
        assert set(database) == {"path", "size_bytes", "tables", "last_migration", "total_migrations"}
        assert database["path"] == str(server.db_dir / "icn-mcp.sqlite")
        assert {"name": "tasks", "count": 0} in database["tables"]
        assert database["total_migrations"] >= 2 and database["last_migration"]
        document = client.get("/openapi.json").json()
        assert document["openapi"].startswith("3.")
        assert {"/api/agent/register", "/api/task/claim", "/api/admin/stats"} <= set(document["paths"])


def test_worker_protocol_shapes(server: ServerProcess, agents: tuple[dict[str, Any], dict[str, Any]]) -> None:
    first, second = agents
    with server.client() as client:
        created = client.post(
            "/api/task/create",
            headers=bearer(first["token"]),
            json={"title": "one", "description": "d", "idempotency_key": "k1", "unknown": [1]},
        )
        assert created.json() == {"ok": True, "id": created.json()["id"]}
        again = client.post(
            "/api/task/create", headers=bearer(first["token"]), json={"title": "one", "idempotency_key": "k1"}
        )
        assert again.json()["id"] == created.json()["id"], "an idempotency key returns the first task"
        listed = client.get("/api/task/list").json()
        assert isinstance(listed, list) and listed[0]["title"] == "one" and listed[0]["status"] == "open"

        claim = client.post("/api/task/claim", headers=bearer(first["token"]), json={"anything": "ignored"}).json()
        assert set(claim) == {"task_id", "title", "lease_expires_at", "attempt"}
        task_id = claim["task_id"]
        assert client.post("/api/task/claim", headers=bearer(second["token"])).json() == {"error": "no_available_tasks"}

        # A report from an agent that does not hold the claim: 409 with the facts.
        foreign = client.post(
            "/api/task/run", headers=bearer(second["token"]), json={"task_id": task_id, "status": "completed"}
        )
        assert foreign.status_code == 409 and foreign.json()["error"] == "conflict"
        stale = client.post(
            "/api/task/run",
            headers=bearer(first["token"]),
            json={"task_id": task_id, "status": "completed", "attempt": claim["attempt"] + 1},
        )
        assert stale.status_code == 409

        ok = client.post(
            "/api/task/run",
            headers=bearer(first["token"]),
            json={"task_id": task_id, "status": "completed", "notes": "n", "task_kind": "x"},
        )
        assert ok.json() == {"ok": True}
        status = client.get("/api/task/status", params={"task_id": task_id}).json()
        assert status == {"id": task_id, "status": "completed", "attempt": 1, "agent": first["id"], "notes": "n"}

        # Pagination: the cursor travels in a header, the body stays a plain array.
        for n in range(4):
            client.post("/api/task/create", headers=bearer(first["token"]), json={"title": f"page {n}"})
        page = client.get("/api/task/list", params={"limit": 2})
        assert len(page.json()) == 2 and page.headers["X-Next-Cursor"]
        rest = client.get("/api/task/list", params={"limit": 10, "cursor": page.headers["X-Next-Cursor"]})
        assert [t["id"] for t in rest.json()] == [t["id"] for t in client.get("/api/task/list").json()][2:]
        open_only = client.get("/api/task/list", params={"status": "open"}).json()
        assert all(t["status"] == "open" for t in open_only) and len(open_only) == 4


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": 5}, "title"),
        ({"title": ""}, "title"),
        ({"title": "x", "depends_on": ["a"]}, "depends_on.0"),
        ({"title": "x", "depends_on": [424242]}, "depends_on"),
        ({"title": "x", "priority": 2**70}, "priority"),
        ({"title": "x", "priority": True}, "priority"),
        ({}, "title"),
    ],
)
def test_validation_errors_name_the_field(shared: tuple[ServerProcess, str], body: dict[str, Any], field: str) -> None:
    server, token = shared
    with server.client() as client:
        response = client.post("/api/task/create", json=body, headers=bearer(token))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "validation_error"
    assert field in response.json()["fields"], response.json()


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'"a string"',
        b"\xff\xfe\x00garbage",
        b'{"title": "\\ud800"}',  # a lone surrogate SQLite cannot store
        b"[" * 100_000 + b"]" * 100_000,  # deep enough to blow a recursive parser
        b'{"title": "x", "priority": NaN}',
    ],
)
def test_malformed_bodies_are_400_not_500(shared: tuple[ServerProcess, str], raw: bytes) -> None:
    server, token = shared
    # A JSON object with bad values is refused where the values matter; anything else
    # is refused everywhere a body is read.
    paths = ["/api/task/create", "/api/agent/register"]
    if not raw.startswith(b'{"'):
        paths += ["/api/task/run", "/api/task/claim", "/api/agent/refresh", "/api/admin/agents/cleanup"]
    with server.client() as client:
        for path in paths:
            response = client.post(path, content=raw, headers={**bearer(token), "Content-Type": "application/json"})
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"] == "validation_error"
        assert client.get("/healthz").status_code == 200


def test_other_errors(shared: tuple[ServerProcess, str]) -> None:
    server, token = shared
    with server.client() as client:
        assert (
            client.post("/api/task/run", json={"status": "completed"}, headers=bearer(token)).json()["error"]
            == "task_id_required"
        )
        assert client.get("/api/task/status").json() == {
            "ok": False,
            "error": "task_id_required",
            "message": "task_id is required",
        }
        bad_id = client.get("/api/task/status", params={"task_id": "1e3"})
        assert bad_id.status_code == 400 and set(bad_id.json()["fields"]) == {"task_id"}
        assert 'ASCII digits such as "42"' in bad_id.json()["fields"]["task_id"]
        missing = client.get("/api/task/status", params={"task_id": 99})
        assert missing.status_code == 404 and missing.json() == {
            "ok": False,
            "error": "not_found",
            "kind": "task",
            "id": "99",
        }
        assert (
            client.post("/api/task/run", json={"task_id": 99, "status": "completed"}, headers=bearer(token)).status_code
            == 404
        )
        assert client.get("/no/such/route").json() == {"ok": False, "error": "not_found"}
        assert client.put("/api/task/claim").status_code == 405
        big = client.post("/api/task/create", content=b'{"title": "' + b"x" * (2 << 20) + b'"}', headers=bearer(token))
        assert big.status_code == 413 and big.json()["error"] == "payload_too_large"

        def chunks() -> Any:  # no Content-Length: the limit must hold while reading
            for _ in range(40):
                yield b"x" * 65536

        streamed = client.post("/api/task/create", content=chunks(), headers=bearer(token))
        assert streamed.status_code == 413
        mcp_headers = {
            **bearer(token),
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        streamed_mcp = client.post("/mcp", content=chunks(), headers=mcp_headers)
        assert streamed_mcp.status_code == 413 and streamed_mcp.json()["error"] == "payload_too_large"
        # Stateless JSON MCP offers no server-initiated stream: GET is refused, not held open.
        assert client.get("/mcp", headers=mcp_headers).status_code == 405
        assert client.get("/healthz").status_code == 200


def test_metrics_series(server: ServerProcess, agents: Any) -> None:
    token = agents[0]["token"]
    with server.client() as client:
        client.post("/api/task/create", json={"title": "m"}, headers=bearer(token))
        claim = client.post("/api/task/claim", headers=bearer(token)).json()
        client.post("/api/task/run", json={"task_id": claim["task_id"], "status": "completed"}, headers=bearer(token))
        client.post("/api/task/claim", headers=bearer(token))
        text = client.get("/metrics").text
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for name in (
        "icn_mcp_http_requests_total",
        "icn_mcp_http_request_duration_seconds_bucket",
        "icn_mcp_claims_total",
        "icn_mcp_reports_total",
        "icn_mcp_leases_reclaimed_total",
        "icn_mcp_agents_active",
        "icn_mcp_tasks",
        "icn_mcp_db_size_bytes",
        "icn_mcp_db_wal_size_bytes",
        "icn_mcp_db_transaction_duration_seconds_bucket",
        "icn_mcp_db_busy_retries_total",
        "icn_mcp_db_lock_waits_total",
        "icn_mcp_db_write_lock_waits_total",
    ):
        assert name in samples, name
    assert 'icn_mcp_tasks{status="completed"} 1.0' in text
    assert 'icn_mcp_claims_total{result="empty"} 1.0' in text
    assert 'icn_mcp_reports_total{status="completed"} 1.0' in text
    assert 'icn_mcp_http_requests_total{method="POST",route="/api/task/claim",status="200"} 2.0' in text
    # No backup yet: the age series is declared, without a sample.
    assert "# TYPE icn_mcp_last_backup_age_seconds gauge" in text
    assert "\nicn_mcp_last_backup_age_seconds " not in text


def test_one_structured_log_line_per_request_without_tokens(server: ServerProcess, agents: Any) -> None:
    token = agents[0]["token"]
    with server.client() as client:
        client.post("/api/task/create", json={"title": "logged"}, headers=bearer(token))
        client.get("/api/task/status", params={"task_id": 1, "token": token})
        client.post("/api/task/create", json={"title": "x"}, headers=bearer("wrong-" + token))
    server.stop()
    lines = [json.loads(line) for line in server.stderr_lines if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "icn_mcp.server.access"]
    create = [r for r in requests if r["route"] == "/api/task/create"]
    assert [(r["status"], r["agent_id"]) for r in create] == [(200, agents[0]["id"]), (401, None)]
    for record in requests:
        assert {"method", "route", "status", "agent_id", "duration_ms"} <= set(record)
    assert len([r for r in requests if r["route"] == "/api/agent/register"]) == 2
    everything = "".join(server.stderr_lines)
    assert token not in everything and agents[1]["token"] not in everything


def test_sigterm_and_sigint_close_the_database(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = server_factory(tmp_path / "var").start()
        with server.client() as client:
            agent = client.post(
                "/api/agent/register", json={"name": f"s{sig}", "kind": "ops"}, headers=bearer(ADMIN_TOKEN)
            ).json()
            for n in range(20):
                client.post("/api/task/create", json={"title": f"t{n}"}, headers=bearer(agent["token"]))
        wal = tmp_path / "var" / "icn-mcp.sqlite-wal"
        assert wal.stat().st_size > 0
        code = server.stop(sig)
        assert code in (0, -sig, 128 + sig, 130), code
        assert not wal.exists() or wal.stat().st_size == 0, "closing checkpointed the WAL"
        assert any("closed" in line and "database" in line for line in server.stderr_lines)
        assert not any("Traceback" in line for line in server.stderr_lines)


def test_rate_limits_answer_429_with_retry_after(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    server = server_factory(tmp_path / "var", MCP_RATE_LIMIT_TOKEN_PER_MIN="5", MCP_RATE_LIMIT_IP_PER_MIN="40").start()
    with server.client() as client:
        token = _register(client)["token"]
        statuses = [client.post("/api/task/claim", headers=bearer(token)).status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        limited = client.post("/api/task/claim", headers=bearer(token))
        assert limited.json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
        # Per IP: anonymous requests run out too; probes never do.
        seen = {client.get("/api/task/list").status_code for _ in range(40)}
        assert seen == {200, 429}
        assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
