"""Ids on the wire (issue 8): string ids in every response and in the published
document, and the query-string siblings (``?task_id=``, ``limit``, cursors, repeated
parameters) held to the strict rule (the parser itself: tests/store/test_ids.py)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterator

import pytest

from icn_mcp.server.openapi import document
from tests.helpers import run_cli
from tests.server.serverproc import ServerProcess, bearer

#: The largest id (signed 64-bit), icn_mcp.store.validation.ID_MAX.
ID_MAX = 2**63 - 1


def _schemas_at(node: Any, key: str) -> Iterator[Any]:
    """Every value under ``key`` anywhere in ``node``."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from _schemas_at(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from _schemas_at(item, key)


def test_the_published_document_has_string_ids_and_accepts_the_deprecated_integer() -> None:
    doc = document()
    # (Agent ids, which /api/agent/register returns, are strings of their own form.)
    responses = [
        op["responses"] for path, item in doc["paths"].items() for op in item.values() if path != "/api/agent/register"
    ]
    schemas = doc["components"]["schemas"]
    response_schemas = [schemas[name] for name in ("Task", "TaskStatus", "Artifact")] + responses
    found = 0
    for name in ("id", "task_id"):
        for schema in _schemas_at(response_schemas, name):
            if isinstance(schema, dict) and "type" in schema:
                found += 1
                assert schema["type"] == "string" and schema["pattern"] == "^[1-9][0-9]{0,18}$", schema
    assert found >= 6
    assert schemas["Task"]["properties"]["depends_on"]["items"]["type"] == "string"
    # Requests: the string, or the 0.1 integer marked deprecated.
    for model in ("RunRequest", "AddArtifactRequest"):
        forms = schemas[model]["properties"]["task_id"]["anyOf"]
        assert {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"}.items() <= forms[0].items()
        assert forms[1]["type"] == "integer" and forms[1]["deprecated"] is True
        assert schemas[model]["required"][0] == "task_id"
    status_param = doc["paths"]["/api/task/status"]["get"]["parameters"][0]
    assert status_param["schema"]["type"] == "string"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, list[str]]]:
    server = ServerProcess(tmp_path_factory.mktemp("ids") / "var").start()
    try:
        with server.client() as client:
            token = client.post("/api/agent/register", json={"name": "ids", "kind": "ops"}).json()["token"]
            ids = [
                client.post("/api/task/create", json={"title": f"t{n}"}, headers=bearer(token)).json()["id"]
                for n in range(12)
            ]
        yield server, token, ids
    finally:
        server.kill()


@pytest.mark.parametrize(
    "raw",
    ["\u0661", "\u0661\u0660", "+1", " 1", "1 ", "01", "1_0", "1.0", "0", "-1", str(ID_MAX + 1), "true"],
    ids=repr,
)
def test_status_query_ids_are_parsed_strictly(seeded: tuple[ServerProcess, str, list[str]], raw: str) -> None:
    server, _, _ = seeded
    with server.client() as client:
        response = client.get("/api/task/status", params={"task_id": raw})
    assert response.status_code == 400, response.text  # "\u0661" used to answer task 1
    assert response.json()["error"] == "validation_error" and list(response.json()["fields"]) == ["task_id"]


def test_query_siblings_limit_cursor_and_repeats(seeded: tuple[ServerProcess, str, list[str]]) -> None:
    server, _, ids = seeded
    with server.client() as client:
        assert client.get("/api/task/status", params={"task_id": ids[0]}).json()["id"] == ids[0]
        page = client.get("/api/task/list", params={"limit": "5"})
        assert [task["id"] for task in page.json()] == ids[:5]
        following = client.get("/api/task/list", params={"limit": "5", "cursor": page.headers["X-Next-Cursor"]})
        assert [task["id"] for task in following.json()] == ids[5:10]
        # ``int()`` took all of these as numbers before.
        for limit in (" 5", "5 ", "+5", "5_0", "\u0665", "05", "5.0", "1e1", "-1", "9" * 30):
            refused = client.get("/api/task/list", params={"limit": limit})
            assert refused.status_code == 400 and list(refused.json()["fields"]) == ["limit"], (limit, refused.text)
        # A cursor must be one the server issued: not another script's digits, not a guess.
        for text in ("tasks:\u0665", "tasks:+5", "tasks: 5", "tasks:5.0", "other:5"):
            forged = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
            refused = client.get("/api/task/list", params={"cursor": forged})
            assert refused.status_code == 400 and list(refused.json()["fields"]) == ["cursor"], text
        # A parameter given twice is refused rather than guessed at.
        for query in (f"task_id={ids[0]}&task_id={ids[1]}",):
            twice = client.get(f"/api/task/status?{query}")
            assert twice.status_code == 400 and twice.json()["fields"] == {
                "task_id": "given more than once; give it once"
            }
        twice = client.get("/api/task/list?limit=5&limit=6")
        assert twice.status_code == 400 and list(twice.json()["fields"]) == ["limit"]
        # An empty parameter counts as absent.
        assert client.get("/api/task/status?task_id=").json()["error"] == "task_id_required"
        assert len(client.get("/api/task/list?status=&limit=").json()) == 12


def test_every_id_in_every_response_is_a_string(seeded: tuple[ServerProcess, str, list[str]]) -> None:
    server, token, ids = seeded
    with server.client() as client:
        created = client.post(
            "/api/task/create", json={"title": "child", "depends_on": [ids[0], int(ids[1])]}, headers=bearer(token)
        ).json()
        assert isinstance(created["id"], str)
        child = [t for t in client.get("/api/task/list", params={"limit": "100"}).json() if t["id"] == created["id"]]
        assert child[0]["depends_on"] == [ids[0], ids[1]]
        claim = client.post("/api/task/claim", json={}, headers=bearer(token)).json()
        assert claim["task_id"] == ids[0] and isinstance(claim["attempt"], int)
        artifact = client.post(
            "/api/task/artifact",
            headers=bearer(token),
            json={"task_id": claim["task_id"], "kind": "log", "path": "x", "attempt": claim["attempt"]},
        )
        assert isinstance(artifact.json()["id"], str) and artifact.json()["artifact"]["task_id"] == ids[0]
        status = client.get("/api/task/status", params={"task_id": claim["task_id"]}).json()
        assert status["id"] == ids[0]
        # Error facts name ids as strings too.
        conflict = client.post(
            "/api/task/run", headers=bearer(token), json={"task_id": ids[2], "status": "completed"}
        ).json()
        assert conflict["error"] == "conflict" and conflict["task_id"] == ids[2]
        missing = client.get("/api/task/status", params={"task_id": "999999"}).json()
        assert missing == {"ok": False, "error": "not_found", "kind": "task", "id": "999999"}


def test_ids_survive_backup_and_restore(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    """The wire id is the stored key as text: a backup restored gives every task,
    dependency and artifact the same string ids, and new ids continue after them."""
    db_dir = tmp_path / "var"
    env = {"MCP_DB_DIR": str(db_dir)}
    server = server_factory(db_dir).start()
    with server.client() as client:
        token = client.post("/api/agent/register", json={"name": "b", "kind": "ops"}).json()["token"]
        chain: list[str] = []
        for n in range(3):
            body = {"title": f"c{n}", "depends_on": chain[-1:]}
            chain.append(client.post("/api/task/create", json=body, headers=bearer(token)).json()["id"])
        before = client.get("/api/task/list").json()
    server.stop()
    backup = tmp_path / "b.sqlite"
    assert run_cli("db", "backup", str(backup), env=env).returncode == 0

    server = server_factory(db_dir).start()
    with server.client() as client:  # written after the backup: gone after the restore
        client.post("/api/task/create", json={"title": "later"}, headers=bearer(token))
    server.stop()
    restored = run_cli("db", "restore", str(backup), "--yes", env=env)
    assert restored.returncode == 0, restored.stderr

    server = server_factory(db_dir).start()
    with server.client() as client:
        after = client.get("/api/task/list").json()
        assert after == before and [t["depends_on"] for t in after] == [[], chain[:1], chain[1:2]]
        status = client.get("/api/task/status", params={"task_id": chain[2]}).json()
        assert status["id"] == chain[2]
        new = client.post(
            "/api/task/create", json={"title": "new", "depends_on": [chain[2]]}, headers=bearer(token)
        ).json()["id"]
        assert int(new) > int(chain[2])
    server.stop()
