"""A real MCP client (the SDK's) over streamable HTTP and over stdio drives a task
from creation to completion; refused calls come back as tool errors with the HTTP codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.server.serverproc import ADMIN_TOKEN, ServerProcess, bearer, server_env

EXPECTED_TOOLS = {
    "create_task",
    "claim_task",
    "report_run",
    "task_status",
    "list_tasks",
    "add_artifact",
    "db_info",
    "create_backup",
}


async def _drive_a_task(client: Client) -> dict[str, Any]:
    """Create, claim, heartbeat, attach an artifact, complete; return the final status."""
    tools = await client.list_tools()
    assert {tool.name for tool in tools.tools} == EXPECTED_TOOLS
    schemas = {tool.name: tool.input_schema for tool in tools.tools}
    assert schemas["report_run"]["properties"]["status"]["enum"] == ["claimed", "in_progress", "completed", "failed"]
    assert schemas["report_run"]["required"] == ["task_id", "status"]

    created = await client.call_tool("create_task", {"title": "through MCP", "priority": 5})
    assert not created.is_error, created.content
    task_id = created.structured_content["id"]

    claim = await client.call_tool("claim_task", {})
    assert not claim.is_error, claim.content
    assert claim.structured_content["task_id"] == task_id
    attempt = claim.structured_content["attempt"]

    for status in ("in_progress",):
        step = await client.call_tool("report_run", {"task_id": task_id, "status": status, "attempt": attempt})
        assert step.structured_content == {"ok": True}
    artifact = await client.call_tool(
        "add_artifact", {"task_id": task_id, "kind": "report", "path": "out/r.md", "meta": {"lines": 3}}
    )
    assert not artifact.is_error, artifact.content
    done = await client.call_tool(
        "report_run", {"task_id": task_id, "status": "completed", "attempt": attempt, "notes": "all good"}
    )
    assert done.structured_content == {"ok": True}

    # Refusals are tool errors carrying the HTTP API's codes, not crashes.
    stale = await client.call_tool("report_run", {"task_id": task_id, "status": "completed", "attempt": attempt})
    assert stale.is_error and stale.structured_content["error"] == "conflict"
    missing = await client.call_tool("task_status", {"task_id": 987654})
    assert missing.is_error and missing.structured_content["error"] == "not_found"
    bad = await client.call_tool("task_status", {"task_id": "not a number"})
    assert bad.is_error and bad.structured_content == {
        "ok": False,
        "error": "validation_error",
        "fields": {"task_id": bad.structured_content["fields"]["task_id"]},
    }
    empty = await client.call_tool("claim_task", {})
    assert empty.structured_content == {"error": "no_available_tasks"}

    listed = await client.call_tool("list_tasks", {"status": "completed"})
    assert [t["id"] for t in listed.structured_content["tasks"]] == [task_id]
    status = await client.call_tool("task_status", {"task_id": task_id})
    return status.structured_content


def test_mcp_over_streamable_http(server: ServerProcess) -> None:
    with server.client() as http:
        agent = http.post("/api/agent/register", json={"name": "mcp-agent", "kind": "planner"}).json()

    async def run() -> None:
        async with httpx2.AsyncClient(headers=bearer(agent["token"]), timeout=30) as http_client:
            async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http_client)) as client:
                status = await _drive_a_task(client)
                assert status == {
                    "id": status["id"],
                    "status": "completed",
                    "attempt": 1,
                    "agent": agent["id"],
                    "notes": "all good",
                }
                # Operator tools need a maintainer token.
                refused = await client.call_tool("db_info", {})
                assert refused.is_error and refused.structured_content["error"] == "forbidden"
        async with httpx2.AsyncClient(headers=bearer(ADMIN_TOKEN), timeout=30) as http_client:
            async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http_client)) as client:
                info = await client.call_tool("db_info", {})
                assert not info.is_error and info.structured_content["journal_mode"] == "wal"
                backup = await client.call_tool("create_backup", {})
                assert not backup.is_error, backup.content
                assert Path(backup.structured_content["path"]).is_file()

    anyio.run(run)

    # Without a valid bearer token the SDK's verifier refuses /mcp outright.
    with server.client() as http:
        for headers in ({}, bearer("not-a-token"), {"Authorization": "Basic eDp5"}):
            response = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
            assert response.status_code == 401


def test_mcp_over_stdio(tmp_path: Path) -> None:
    env = server_env(tmp_path / "var", MCP_STDIO_AGENT_NAME="desk", MCP_STDIO_AGENT_KIND="ops")
    params = StdioServerParameters(command=sys.executable, args=["-m", "icn_mcp", "serve", "--stdio"], env=env)

    first_agent: list[str] = []

    async def run() -> None:
        async with Client(params) as client:
            status = await _drive_a_task(client)
            assert status["status"] == "completed" and status["agent"]
            first_agent.append(status["agent"])
            # stdio is local: the operator tools are allowed.
            info = await client.call_tool("db_info", {})
            assert not info.is_error
            tables = {t["name"]: t["row_count"] for t in info.structured_content["tables"]}
            assert tables["agents"] == 1 and tables["tasks"] == 1

    anyio.run(run)
    # The client closed stdin: the server shut down and checkpointed the WAL.
    wal = tmp_path / "var" / "icn-mcp.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0

    async def run_again() -> None:
        # A second start acts for the same local agent: registered once, found again.
        async with Client(params) as client:
            created = await client.call_tool("create_task", {"title": "second start"})
            assert not created.is_error, created
            claimed = await client.call_tool("claim_task", {})
            assert not claimed.is_error, claimed
            status = await client.call_tool("task_status", {"task_id": claimed.structured_content["task_id"]})
            assert status.structured_content["agent"] == first_agent[0]
            info = await client.call_tool("db_info", {})
            tables = {t["name"]: t["row_count"] for t in info.structured_content["tables"]}
            assert tables["agents"] == 1 and tables["tasks"] == 2

    anyio.run(run_again)
