"""A full disk under a real server (issue 9 item 12): writes answer 507
``storage_full`` with Retry-After, over HTTP and MCP; the incident is logged once,
without a traceback; /healthz/db and /metrics report it; writes resume by themselves
when space returns.

The database lives on a real small filesystem (the ``small_disk`` fixture of
tests/conftest.py: a tmpfs mounted for the test, unmounted in the teardown; skipped,
saying why, without the right to mount).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.helpers import fill_disk
from tests.server.serverproc import ADMIN_TOKEN, ServerProcess, bearer


def _records(server: ServerProcess) -> list[dict[str, Any]]:
    records = []
    for line in server.stderr_lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"level": "RAW", "msg": line})
    return records


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_full_disk_answers_507_logs_once_and_recovers(server_factory: type[ServerProcess], small_disk: Path) -> None:
    server = server_factory(small_disk / "var").start()
    with server.client() as client:
        agent = client.post("/api/agent/register", json={"name": "filler", "kind": "planner"}).json()
        headers = bearer(agent["token"])
        assert client.post("/api/task/create", json={"title": "before"}, headers=headers).status_code == 200
        assert client.get("/healthz/db").status_code == 200

        filler = fill_disk(small_disk)
        body = {"title": "while full", "description": "x" * 8000}
        # Room left in the WAL's last page may take a write or two; then none fits.
        answers = [client.post("/api/task/create", json=body, headers=headers) for _ in range(30)]
        refused = [a for a in answers if a.status_code != 200]
        assert refused, "no write was refused on a full disk"
        assert all(a.status_code == 507 for a in refused), [(a.status_code, a.text) for a in refused]
        assert [a.status_code for a in answers[-5:]] == [507] * 5
        first = refused[0]
        assert first.json() == {
            "ok": False,
            "error": "storage_full",
            "retry_after_s": int(first.headers["retry-after"]),
        }
        assert int(first.headers["retry-after"]) >= 1

        # Other writes too: a claim that has work to hand out, a report, a registration.
        assert (
            client.post("/api/agent/register", json={"name": "second", "kind": "ops"}, headers=headers).status_code
            == 507
        )

        async def over_mcp() -> None:
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http_client:
                async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http_client)) as mcp:
                    result = await mcp.call_tool("create_task", {"title": "mcp while full", "description": "y" * 8000})
                    assert result.is_error
                    assert result.structured_content["error"] == "storage_full"
                    assert result.structured_content["retry_after_s"] >= 1
            # A backup on the full disk (the default $MCP_DB_DIR/backups) is refused the
            # same way, naming the cause: not an internal error with a traceback.
            async with httpx2.AsyncClient(headers=bearer(ADMIN_TOKEN), timeout=30) as http_client:
                async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http_client)) as mcp:
                    result = await mcp.call_tool("create_backup", {})
                    assert result.is_error
                    assert result.structured_content["error"] == "storage_full", result.structured_content
                    assert "free space" in result.structured_content["reason"]

        anyio.run(over_mcp)

        health = client.get("/healthz/db")
        assert health.status_code == 503
        assert health.json()["ok"] is False and health.json()["error"] == "storage_full"
        assert health.json()["storage_full_since"]
        assert int(health.headers["retry-after"]) >= 1
        metrics = client.get("/metrics").text
        assert _metric(metrics, "icn_mcp_db_storage_full") == 1
        refused_total = _metric(metrics, "icn_mcp_db_storage_full_errors_total")
        assert refused_total is not None and refused_total >= len(refused) + 2
        assert 'status="507"' in metrics
        assert 'status="500"' not in metrics

        # Space returns: the health probe sees it, and writes work again by themselves.
        filler.unlink()
        for _ in range(100):  # the probe write runs at most once a second
            health = client.get("/healthz/db")
            if health.status_code == 200:
                break
            assert health.json()["error"] == "storage_full"
            time.sleep(0.1)
        assert health.status_code == 200, health.text
        assert health.json()["ok"] is True
        created = client.post("/api/task/create", json=body, headers=headers)
        assert created.status_code == 200, created.text
        metrics = client.get("/metrics").text
        assert _metric(metrics, "icn_mcp_db_storage_full") == 0
        assert _metric(metrics, "icn_mcp_db_storage_full_incidents_total") == 1

    assert server.stop() in (0, -15)  # SIGTERM: a clean shutdown
    records = _records(server)
    assert [r for r in records if "exc" in r or r.get("level") in ("RAW", "CRITICAL")] == []
    errors = [r for r in records if r.get("level") == "ERROR"]
    assert len(errors) == 1 and "full" in errors[0]["msg"], errors  # once per incident
    resumed = [r for r in records if "writes succeed again" in r.get("msg", "")]
    assert len(resumed) == 1, records
