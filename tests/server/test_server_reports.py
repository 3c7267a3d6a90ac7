"""Reports against a real server, through HTTP and MCP alike: a report without
``attempt`` from an agent that held an earlier, expired attempt is ambiguous (409)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.server.serverproc import ServerProcess, bearer


def _claim_again_until_the_lease_passed(client: httpx.Client, token: str, task_id: Any) -> dict[str, Any]:
    """Claim until the same task comes back as attempt 2 (its 1 s lease ran out)."""
    for _ in range(100):
        time.sleep(0.2)
        claim = client.post("/api/task/claim", json={"lease_s": 60}, headers=bearer(token)).json()
        if claim.get("task_id") is not None:
            assert claim["task_id"] == task_id and claim["attempt"] == 2, claim
            return claim
    raise AssertionError("the 1 s lease never ran out")


def test_ambiguous_report_gets_the_same_409_over_http_and_mcp(server: ServerProcess) -> None:
    with server.client() as client:
        agent = client.post("/api/agent/register", json={"name": "twice", "kind": "planner"}).json()
        headers = bearer(agent["token"])
        task_id = client.post("/api/task/create", json={"title": "lease runs out"}, headers=headers).json()["id"]
        first = client.post("/api/task/claim", json={"lease_s": 1}, headers=headers).json()
        assert first["task_id"] == task_id and first["attempt"] == 1
        _claim_again_until_the_lease_passed(client, agent["token"], task_id)

        refused = client.post("/api/task/run", json={"task_id": task_id, "status": "completed"}, headers=headers)
        assert refused.status_code == 409, refused.text
        http_body = refused.json()
        assert http_body["error"] == "conflict" and "attempt is required" in http_body["reason"]
        assert http_body["attempt"] == 2
        renew = client.post("/api/task/run", json={"task_id": task_id, "status": "in_progress"}, headers=headers)
        assert renew.status_code == 409 and renew.json() == http_body  # no lease renewed either

    async def through_mcp() -> None:
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http_client:
            async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http_client)) as mcp:
                for status in ("in_progress", "completed"):
                    result = await mcp.call_tool("report_run", {"task_id": task_id, "status": status})
                    assert result.is_error
                    assert result.structured_content["error"] == "conflict"
                    assert result.structured_content["attempt"] == 2
                    assert "attempt is required" in result.structured_content["reason"]
                done = await mcp.call_tool("report_run", {"task_id": task_id, "status": "completed", "attempt": 2})
                assert not done.is_error and done.structured_content == {"ok": True}

    anyio.run(through_mcp)
    with server.client() as client:
        status = client.get("/api/task/status", params={"task_id": task_id}).json()
        assert (status["status"], status["attempt"]) == ("completed", 2)
