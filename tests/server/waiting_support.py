"""Helpers of the waiting-claims tests (SQLite and PostgreSQL): register, read the
waiting gauge, make a waiting claim."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from tests.server.serverproc import ADMIN_TOKEN, bearer

#: Long enough that a waiter never times out before the change it waits for.
LONG_WAIT_S = 20.0


def register(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.post("/api/agent/register", json={"name": name, "kind": "planner"}, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200, response.text
    return response.json()


def metric(client: httpx.Client, name: str) -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def wait_for_waiters(client: httpx.Client, count: int, timeout_s: float = 30.0) -> None:
    """Until the server reports ``count`` waiting claims (the gauge of /metrics)."""
    deadline = time.monotonic() + timeout_s
    while metric(client, "icn_mcp_claim_waiters") != count:
        assert time.monotonic() < deadline, f"never {count} waiting claims"
        time.sleep(0.02)


def claim_waiting(url: str, token: str, wait_s: float, **body: Any) -> dict[str, Any]:
    """``POST /api/task/claim {"wait_s": ...}``: its 200 answer."""
    with httpx.Client(base_url=url, timeout=wait_s + 30) as client:
        response = client.post("/api/task/claim", json={"wait_s": wait_s, **body}, headers=bearer(token))
        assert response.status_code == 200, response.text
        return response.json()
