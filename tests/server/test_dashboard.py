"""/dashboard and its maintainer JSON over a real server (issue 13); no browser here.

The browser tests are in test_dashboard_browser.py. These pin what the server
enforces whatever a page does: the maintainer routes refuse anyone without a
maintainer token, the page is static (no data in it) behind a strict CSP, and the
JSON has the keys the page reads, with ids as strings.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from icn_mcp.server.dashboard import STATIC_FILES
from tests.server.serverproc import ADMIN_TOKEN, MAINTAINER_TOKEN, ServerProcess, bearer

MAINTAINER_ROUTES = [
    "/api/admin/agents",
    "/api/admin/graph",
    "/api/admin/graph?task_id=1",
    "/api/admin/runs?task_id=1",
    "/api/admin/backups",
    "/api/admin/database",
]


class Seeded:
    def __init__(self, server: ServerProcess, tokens: dict[str, str], ids: dict[str, str]) -> None:
        self.server = server
        self.tokens = tokens
        self.ids = ids

    def get(self, path: str, token: str | None = MAINTAINER_TOKEN) -> httpx.Response:
        with self.server.client() as client:
            return client.get(path, headers=bearer(token) if token else {})


def _post(client: httpx.Client, path: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body, headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """planner-ann holds task 'build', reported on 'design' (completed); 'ship' waits."""
    server = ServerProcess(tmp_path_factory.mktemp("dashboard") / "var").start()
    try:
        with server.client() as client:
            ann = _post(client, "/api/agent/register", ADMIN_TOKEN, {"name": "planner-ann", "kind": "planner"})
            bob = _post(client, "/api/agent/register", ADMIN_TOKEN, {"name": "reviewer-bob", "kind": "reviewer"})
            design = _post(client, "/api/task/create", ann["token"], {"title": "design", "priority": 9})["id"]
            build = _post(client, "/api/task/create", ann["token"], {"title": "build", "depends_on": [design]})["id"]
            ship = _post(client, "/api/task/create", ann["token"], {"title": "ship", "depends_on": [build]})["id"]
            lone = _post(client, "/api/task/create", ann["token"], {"title": "lone", "priority": -5})["id"]
            claim = _post(client, "/api/task/claim", ann["token"], {})
            assert str(claim["task_id"]) == str(design)
            _post(
                client,
                "/api/task/run",
                ann["token"],
                {"task_id": design, "status": "completed", "notes": "schema done"},
            )
            claim = _post(client, "/api/task/claim", ann["token"], {})
            assert str(claim["task_id"]) == str(build)
        ids = {
            "design": str(design),
            "build": str(build),
            "ship": str(ship),
            "lone": str(lone),
            "ann": ann["id"],
            "bob": bob["id"],
        }
        yield Seeded(server, {"ann": ann["token"], "bob": bob["token"]}, ids)
    finally:
        server.kill()


@pytest.mark.parametrize("path", MAINTAINER_ROUTES)
def test_maintainer_routes_refuse_without_a_maintainer_token(seeded: Seeded, path: str) -> None:
    for token, status in ((None, 401), ("never-issued-token-0123456789abcdef", 401), (seeded.tokens["bob"], 403)):
        response = seeded.get(path, token)
        assert response.status_code == status, (path, token, response.text)
        text = response.text
        for secret in ("planner-ann", "reviewer-bob", "design", "schema done"):
            assert secret not in text, (path, secret)
    for token in (MAINTAINER_TOKEN, ADMIN_TOKEN):
        assert seeded.get(path, token).status_code == 200, path


def test_page_and_assets_are_static_behind_a_strict_policy(seeded: Seeded) -> None:
    for path, (_, media_type) in STATIC_FILES.items():
        response = seeded.get(path, None)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == media_type
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["referrer-policy"] == "no-referrer"
        # Served the same to everyone: no task or agent ever rendered into the page.
        for secret in ("planner-ann", "design", "schema done"):
            assert secret not in response.text
    page = seeded.get("/dashboard", None).text
    assert 'src="/dashboard/dashboard.js"' in page and "<script>" not in page  # nothing inline
    assert seeded.get("/dashboard/other.js", None).status_code == 404


def test_agents_show_tokens_activity_and_tasks_held(seeded: Seeded) -> None:
    body = seeded.get("/api/admin/agents").json()
    assert body["ok"] is True and body["now"].endswith("Z")
    agents = {agent["name"]: agent for agent in body["agents"]}
    ann, bob = agents["planner-ann"], agents["reviewer-bob"]
    assert (ann["id"], ann["kind"], ann["tokens_active"]) == (seeded.ids["ann"], "planner", 1)
    assert ann["tasks_held"] == [seeded.ids["build"]]
    assert ann["last_report_at"] is not None and ann["last_claim_at"] >= ann["last_report_at"]
    assert ann["last_active_at"] == ann["last_claim_at"]
    assert (bob["tokens_active"], bob["tasks_held"], bob["last_active_at"]) == (1, [], None)
    assert "token" not in ann and "token_hash" not in ann


def test_graph_of_open_work_and_of_a_neighbourhood_has_string_ids(seeded: Seeded) -> None:
    ids = seeded.ids
    graph = seeded.get("/api/admin/graph").json()["graph"]
    # Open work: build (claimed), ship, lone; plus design, which build depends on.
    assert {n["id"] for n in graph["nodes"]} == {ids["design"], ids["build"], ids["ship"], ids["lone"]}
    assert graph["open_count"] == 3 and graph["focus"] is None and not graph["too_large"]
    assert {(e["from"], e["to"]) for e in graph["edges"]} == {
        (ids["design"], ids["build"]),
        (ids["build"], ids["ship"]),
    }
    status = {n["id"]: n["status"] for n in graph["nodes"]}
    assert status[ids["design"]] == "completed" and status[ids["build"]] == "claimed"

    near = seeded.get(f"/api/admin/graph?task_id={ids['ship']}&depth=1").json()["graph"]
    assert near["focus"] == ids["ship"]
    assert {n["id"] for n in near["nodes"]} == {ids["ship"], ids["build"]}
    far = seeded.get(f"/api/admin/graph?task_id={ids['ship']}").json()["graph"]  # depth 2
    assert {n["id"] for n in far["nodes"]} == {ids["ship"], ids["build"], ids["design"]}
    for node in far["nodes"]:
        assert isinstance(node["id"], str)


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("task_id=abc", 400, "validation_error"),
        ("task_id=0", 400, "validation_error"),
        ("task_id=999999", 404, "not_found"),
        ("depth=0", 400, "validation_error"),
        ("depth=99", 400, "validation_error"),
    ],
)
def test_graph_refuses_bad_parameters(seeded: Seeded, query: str, status: int, error: str) -> None:
    response = seeded.get(f"/api/admin/graph?{query}")
    assert response.status_code == status and response.json()["error"] == error


def test_runs_of_a_task(seeded: Seeded) -> None:
    body = seeded.get(f"/api/admin/runs?task_id={seeded.ids['design']}").json()
    assert body["task_id"] == seeded.ids["design"]
    [run] = body["runs"]
    assert (run["task_id"], run["agent_id"], run["status"], run["notes"], run["attempt"]) == (
        seeded.ids["design"],
        seeded.ids["ann"],
        "completed",
        "schema done",
        1,
    )
    assert isinstance(run["id"], str)
    assert seeded.get("/api/admin/runs").json()["error"] == "task_id_required"
    assert seeded.get("/api/admin/runs?task_id=999999").status_code == 404


def test_database_health_and_backups(seeded: Seeded) -> None:
    body = seeded.get("/api/admin/database").json()["database"]
    assert body["size_bytes"] > 0 and body["journal_mode"] == "wal"
    assert body["migrations_applied"] >= 3 and body["failed_migrations"] == 0
    assert body["last_migration"] is not None
    assert body["health"]["ok"] is True
    assert body["busy_retries"] >= 0 and body["transactions"] > 0
    assert body["replication"] is None and body["last_backup"] is None
    assert seeded.get("/api/admin/backups").json()["backups"] == []

    # A backup taken by the CLI beside the running server shows up with its age.
    env = seeded.server.env
    result = subprocess.run(
        [sys.executable, "-m", "icn_mcp", "db", "backup"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    backups = seeded.get("/api/admin/backups").json()["backups"]
    assert len(backups) == 1 and backups[0]["has_manifest"] and backups[0]["size_bytes"] > 0
    assert Path(backups[0]["path"]).name == backups[0]["name"]
    # /api/admin/database caches its diagnostics for MCP_HEALTH_CACHE_S (2 s here);
    # poll instead of sleeping a fixed time.
    for _ in range(100):
        last = seeded.get("/api/admin/database").json()["database"]["last_backup"]
        if last is not None:
            break
        time.sleep(0.1)
    assert last is not None and last["path"] == backups[0]["path"]
    assert last["age_s"] >= 0


def test_the_page_ships_as_package_data() -> None:
    """The static files are found through importlib.resources, as in an installed wheel,
    and pyproject's package-data takes every file of their directory."""
    from importlib import resources

    root = Path(__file__).resolve().parents[2]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "server/dashboard_static/*" in package_data["icn_mcp"]
    static = resources.files("icn_mcp.server") / "dashboard_static"
    shipped = {entry.name for entry in static.iterdir()}
    assert {name for name, _ in STATIC_FILES.values()} == shipped


def test_database_shows_replication_when_a_replica_is_configured(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    """With MCP_REPLICA_URL the dashboard's database view carries Litestream's status
    (running, lag), the same object /healthz/db reports."""
    replica = tmp_path / "replica"
    server = server_factory(
        tmp_path / "var",
        MCP_REPLICA_URL=replica.as_uri(),
        MCP_REPLICA_SYNC_INTERVAL_S="0.5",
        TMPDIR=str(tmp_path),  # Litestream's private directory, if a kill leaves it
    ).start()
    try:
        with server.client() as client:
            replication: dict[str, Any] = {}
            for _ in range(200):
                body = client.get("/api/admin/database", headers=bearer(MAINTAINER_TOKEN)).json()
                replication = body["database"]["replication"]
                if replication and replication["running"]:
                    break
                time.sleep(0.05)
            assert replication["enabled"] is True and replication["running"] is True
            assert isinstance(replication["lag_s"], float) and replication["lag_s"] >= 0
            assert "password" not in replication["url"] and replication["url"] == replica.as_uri()
    finally:
        server.stop()
