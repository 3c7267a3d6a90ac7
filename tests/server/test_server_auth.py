"""Bearer tokens on the HTTP API: who gets 401, who gets 403, and refresh."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import run_cli
from tests.server.serverproc import ADMIN_TOKEN, MAINTAINER_TOKEN, ServerProcess, bearer

AGENT_ROUTES = [
    ("POST", "/api/task/create", {"title": "t"}),
    ("POST", "/api/task/claim", {}),
    ("POST", "/api/task/run", {"task_id": 1, "status": "completed"}),
    ("POST", "/api/agent/refresh", {}),
]
ADMIN_ROUTES = [("POST", "/api/admin/agents/cleanup", {}), ("GET", "/api/admin/stats", None)]


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose bootstrap agent is registered."""
    server = ServerProcess(tmp_path_factory.mktemp("auth") / "var").start()
    try:
        with server.client() as client:
            assert client.post("/api/agent/register", json={"name": "boot", "kind": "ops"}).status_code == 200
        yield server
    finally:
        server.kill()


def _call(client: object, method: str, path: str, body: object, headers: dict[str, str]) -> object:
    return client.request(method, path, json=body, headers=headers)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer two tokens"},
        {"Authorization": "Bearer never-issued-token-0123456789abcdef"},
    ],
    ids=["missing", "empty", "no-token", "other-scheme", "spaces", "unknown"],
)
def test_missing_malformed_and_unknown_tokens_get_401(booted: ServerProcess, headers: dict[str, str]) -> None:
    with booted.client() as client:
        for method, path, body in AGENT_ROUTES + ADMIN_ROUTES:
            response = _call(client, method, path, body, headers)
            assert response.status_code == 401, (path, response.text)  # type: ignore[attr-defined]
            assert response.json()["error"] == "unauthorized"  # type: ignore[attr-defined]
            assert response.headers["WWW-Authenticate"].startswith("Bearer")  # type: ignore[attr-defined]
        # Registering once an agent exists needs a credential too.
        again = client.post("/api/agent/register", json={"name": "late", "kind": "ops"}, headers=headers)
        assert again.status_code == 401


def test_admin_routes_reject_agent_tokens_and_accept_maintainers(server: ServerProcess) -> None:
    with server.client() as client:
        agent = client.post("/api/agent/register", json={"name": "a", "kind": "ops"}).json()
        for method, path, body in ADMIN_ROUTES:
            refused = _call(client, method, path, body, bearer(agent["token"]))
            assert refused.status_code == 403 and refused.json()["error"] == "forbidden"  # type: ignore[attr-defined]
            for token in (ADMIN_TOKEN, MAINTAINER_TOKEN):
                assert _call(client, method, path, body, bearer(token)).status_code == 200  # type: ignore[attr-defined]
        # A maintainer may register agents once the bootstrap agent exists.
        assert (
            client.post(
                "/api/agent/register", json={"name": "b", "kind": "ops"}, headers=bearer(MAINTAINER_TOKEN)
            ).status_code
            == 200
        )


def test_expired_and_refreshed_away_tokens_get_401(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    server = server_factory(tmp_path / "var", MCP_TOKEN_TTL_S="1").start()
    with server.client() as client:
        agent = client.post("/api/agent/register", json={"name": "short", "kind": "ops"}).json()
        assert client.post("/api/task/claim", headers=bearer(agent["token"])).status_code == 200
        time.sleep(1.5)  # let the 1 s token expire (no timing is asserted)

        expired = client.post("/api/task/claim", headers=bearer(agent["token"]))
        assert expired.status_code == 401 and expired.json()["error"] == "unauthorized"

        # Within the grace window an expired token can still be refreshed, once.
        refreshed = client.post("/api/agent/refresh", headers=bearer(agent["token"]))
        assert refreshed.status_code == 200, refreshed.text
        new_token = refreshed.json()["token"]
        assert set(refreshed.json()) == {"ok", "token"} and new_token != agent["token"]
        assert client.post("/api/task/claim", headers=bearer(new_token)).status_code == 200

        # The old token was refreshed away: refused everywhere, refresh included.
        for method, path, body in AGENT_ROUTES:
            response = _call(client, method, path, body, bearer(agent["token"]))
            assert response.status_code == 401, (path, response.text)  # type: ignore[attr-defined]

        # And a refresh of a valid token revokes it at once.
        newer = client.post("/api/agent/refresh", headers=bearer(new_token)).json()["token"]
        assert client.post("/api/task/claim", headers=bearer(new_token)).status_code == 401
        assert client.post("/api/task/claim", headers=bearer(newer)).status_code == 200


def test_bootstrap_stays_closed_after_every_token_lapsed_and_the_operator_registers(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    """Issue 9 item 14: with every token past its TTL and refresh grace, nobody can
    register without a credential; the operator's `icn-mcp agent register` can, and
    its token works against the running server."""
    db_dir = tmp_path / "var"
    server = server_factory(db_dir, MCP_TOKEN_TTL_S="1", MCP_REFRESH_GRACE_S="0").start()
    with server.client() as client:
        first = client.post("/api/agent/register", json={"name": "first", "kind": "planner"}).json()
        for _ in range(100):  # until the 1 s token has lapsed (no grace to refresh in)
            if client.post("/api/task/claim", json={}, headers=bearer(first["token"])).status_code == 401:
                break
            time.sleep(0.1)
        assert client.post("/api/agent/refresh", headers=bearer(first["token"])).status_code == 401
        squat = client.post("/api/agent/register", json={"name": "squatter", "kind": "ops"})
        assert squat.status_code == 401, squat.text  # lapsed, not even cleaned up yet
        assert client.post("/api/admin/agents/cleanup", headers=bearer(ADMIN_TOKEN)).json()["deletedCount"] == 1

        squat = client.post("/api/agent/register", json={"name": "squatter", "kind": "ops"})
        assert squat.status_code == 401, squat.text
        assert "already registered" in squat.json()["reason"]

        made = run_cli("agent", "register", "rescuer", "--kind", "ops", env={"MCP_DB_DIR": str(db_dir)})
        assert made.returncode == 0, made.stderr
        lines = dict(line.split(None, 1) for line in made.stdout.splitlines() if line.strip())
        assert set(lines) >= {"id", "token"}
        created = client.post("/api/task/create", json={"title": "by the rescuer"}, headers=bearer(lines["token"]))
        assert created.status_code == 200, created.text
        # The operator's agent is a registered agent like any other: still closed.
        assert client.post("/api/agent/register", json={"name": "late", "kind": "ops"}).status_code == 401
    assert lines["token"] not in "".join(server.stderr_lines)
