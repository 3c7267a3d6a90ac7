"""HTTP and MCP give the same input the same verdict (issue 8).

One real server; every case goes through the HTTP API (httpx) and through a real
MCP client (the SDK's, over streamable HTTP) with the same token, and both verdicts
(ok, or the error code with the names of the refused fields) must agree. Then the
same for authorization: an agent holding a claim, another agent, a maintainer and
nobody, through both transports.
"""

from __future__ import annotations

from typing import Any, Iterator

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.server.serverproc import MAINTAINER_TOKEN, ServerProcess, bearer

Verdict = tuple[str, ...]

#: MCP tool -> (HTTP method, path, where its arguments go).
ROUTES = {
    "create_task": ("POST", "/api/task/create", "body"),
    "claim_task": ("POST", "/api/task/claim", "body"),
    "report_run": ("POST", "/api/task/run", "body"),
    "add_artifact": ("POST", "/api/task/artifact", "body"),
    "task_status": ("GET", "/api/task/status", "query"),
    "list_tasks": ("GET", "/api/task/list", "query"),
}


def _http_verdict(response: httpx.Response) -> Verdict:
    body = response.json()
    if response.status_code == 200 and not (isinstance(body, dict) and body.get("ok") is False):
        return ("ok",)
    return (body["error"], *sorted(body.get("fields", {})))


def _mcp_verdict(result: Any) -> Verdict:
    if not result.is_error:
        return ("ok",)
    body = result.structured_content
    assert body is not None, result.content  # always our error object, never the SDK's text
    return (body["error"], *sorted(body.get("fields", {})))


def _query_value(value: Any) -> str:
    """How a value reaches a query string: JSON scalars as their text."""
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def http_call(client: httpx.Client, token: str | None, tool: str, args: dict[str, Any]) -> Verdict:
    method, path, where = ROUTES[tool]
    headers = bearer(token) if token else {}
    if where == "query":
        params = {name: _query_value(value) for name, value in args.items()}
        return _http_verdict(client.request(method, path, params=params, headers=headers))
    return _http_verdict(client.request(method, path, json=args, headers=headers))


def mcp_calls(url: str, token: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Verdict]:
    """Every call through one MCP session with ``token``."""
    verdicts: list[Verdict] = []

    async def run() -> None:
        async with httpx2.AsyncClient(headers=bearer(token), timeout=30) as http_client:
            async with Client(streamable_http_client(f"{url}/mcp", http_client=http_client)) as client:
                for tool, args in calls:
                    verdicts.append(_mcp_verdict(await client.call_tool(tool, args)))

    anyio.run(run)
    return verdicts


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with two agents; the first holds the claim of one task."""
    server = ServerProcess(tmp_path_factory.mktemp("parity") / "var").start()
    try:
        with server.client() as client:
            holder = client.post("/api/agent/register", json={"name": "holder", "kind": "ops"}).json()
            other = client.post(
                "/api/agent/register", json={"name": "other", "kind": "ops"}, headers=bearer(holder["token"])
            ).json()
            held = client.post("/api/task/create", json={"title": "held"}, headers=bearer(holder["token"])).json()
            claim = client.post("/api/task/claim", json={"lease_s": 3600}, headers=bearer(holder["token"])).json()
            assert claim["task_id"] == held["id"]
            yield {
                "server": server,
                "holder": holder["token"],
                "other": other["token"],
                "held": held["id"],
                "attempt": claim["attempt"],
            }
    finally:
        server.kill()


# -- validation ----------------------------------------------------------------------

BIG = str(2**63)  # one past the largest id

#: (tool, arguments, expected verdict). ``HELD`` is replaced by the held task's id
#: (a string), ``HELD_INT`` by the same as a JSON integer.
VALIDATION_CASES: list[tuple[str, dict[str, Any], Verdict]] = [
    # ids: the string form, the deprecated integer form, and everything else refused
    ("create_task", {"title": "t", "depends_on": ["HELD"]}, ("ok",)),
    ("create_task", {"title": "t", "depends_on": ["HELD_INT"]}, ("ok",)),
    ("create_task", {"title": "t", "depends_on": ["01"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": [" 1"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["1 "]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["+1"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["-1"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["1_0"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["\u0661"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["\uff11"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["1.0"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": [1.0]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": [True]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": [0]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["0"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": [BIG]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": [2**63]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["9" * 400]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["1e3"]}, ("validation_error", "depends_on.0")),
    ("create_task", {"title": "t", "depends_on": ["HELD"] * 2 + ["999999"]}, ("validation_error", "depends_on")),
    # a list given as JSON text is not a list (the MCP SDK used to decode it)
    ("create_task", {"title": "t", "depends_on": "[1]"}, ("validation_error", "depends_on")),
    # priorities and attempts: strict integers
    ("create_task", {"title": "t", "priority": 5}, ("ok",)),
    ("create_task", {"title": "t", "priority": "5"}, ("validation_error", "priority")),
    ("create_task", {"title": "t", "priority": 5.0}, ("validation_error", "priority")),
    ("create_task", {"title": "t", "priority": True}, ("validation_error", "priority")),
    ("create_task", {"title": "t", "priority": 1001}, ("validation_error", "priority")),
    ("create_task", {"title": "t", "max_attempts": True}, ("validation_error", "max_attempts")),
    ("create_task", {"title": "t", "max_attempts": "3"}, ("validation_error", "max_attempts")),
    ("create_task", {"title": "t", "max_attempts": 0}, ("validation_error", "max_attempts")),
    ("create_task", {"title": 5}, ("validation_error", "title")),
    ("create_task", {}, ("validation_error", "title")),
    # text that looks like JSON is text (the MCP SDK used to decode it and refuse)
    ("create_task", {"title": "t", "description": "[1, 2]", "idempotency_key": None}, ("ok",)),
    ("create_task", {"title": "t", "description": "{}"}, ("ok",)),
    # reports
    ("report_run", {"status": "in_progress", "task_id": "HELD", "notes": "[1]", "attempt": "ATTEMPT"}, ("ok",)),
    ("report_run", {"status": "in_progress", "task_id": "HELD_INT", "attempt": "ATTEMPT"}, ("ok",)),
    ("report_run", {"status": "in_progress", "task_id": "HELD", "task_kind": "planner"}, ("ok",)),
    ("report_run", {"status": "in_progress"}, ("task_id_required",)),
    ("report_run", {"status": "in_progress", "task_id": None}, ("task_id_required",)),
    ("report_run", {"status": "in_progress", "task_id": 1.0}, ("validation_error", "task_id")),
    ("report_run", {"status": "in_progress", "task_id": True}, ("validation_error", "task_id")),
    ("report_run", {"status": "in_progress", "task_id": ""}, ("validation_error", "task_id")),
    ("report_run", {"status": "in_progress", "task_id": "abc"}, ("validation_error", "task_id")),
    ("report_run", {"status": "in_progress", "task_id": "HELD", "attempt": "1"}, ("validation_error", "attempt")),
    ("report_run", {"status": "in_progress", "task_id": "HELD", "attempt": True}, ("validation_error", "attempt")),
    ("report_run", {"status": "in_progress", "task_id": "HELD", "attempt": 1.0}, ("validation_error", "attempt")),
    ("report_run", {"status": "done", "task_id": "HELD"}, ("validation_error", "status")),
    ("report_run", {"status": "completed", "task_id": "999999"}, ("not_found",)),
    # claims
    ("claim_task", {"lease_s": "5"}, ("validation_error", "lease_s")),
    ("claim_task", {"lease_s": True}, ("validation_error", "lease_s")),
    ("claim_task", {"lease_s": 0}, ("validation_error", "lease_s")),
    ("claim_task", {"lease_s": 10**9}, ("validation_error", "lease_s")),
    # artifacts (the holder, with the claim's attempt)
    (
        "add_artifact",
        {"task_id": "HELD", "kind": "log", "path": "a.txt", "meta": {"n": 1}, "attempt": "ATTEMPT"},
        ("ok",),
    ),
    ("add_artifact", {"task_id": "HELD", "kind": "log", "path": "a.txt", "meta": "{}"}, ("validation_error", "meta")),
    ("add_artifact", {"task_id": "HELD", "kind": "log", "path": "a.txt", "attempt": 99}, ("conflict",)),
    ("add_artifact", {"task_id": 1.5, "kind": "log", "path": "a.txt"}, ("validation_error", "task_id")),
    ("add_artifact", {"kind": "log", "path": "a.txt"}, ("task_id_required",)),
    ("add_artifact", {"task_id": "HELD", "kind": "", "path": ""}, ("validation_error", "kind", "path")),
    # lists (query parameters over HTTP: the same values as text)
    ("list_tasks", {"limit": 2}, ("ok",)),
    ("list_tasks", {"limit": 0}, ("validation_error", "limit")),
    ("list_tasks", {"limit": 1001}, ("validation_error", "limit")),
    ("list_tasks", {"limit": True}, ("validation_error", "limit")),
    ("list_tasks", {"limit": 2.0}, ("validation_error", "limit")),
    ("list_tasks", {"status": "bogus"}, ("validation_error", "status")),
    ("list_tasks", {"cursor": "not-a-cursor"}, ("validation_error", "cursor")),
    # status (a query parameter over HTTP)
    ("task_status", {"task_id": "HELD"}, ("ok",)),
    ("task_status", {"task_id": "HELD_INT"}, ("ok",)),
    ("task_status", {"task_id": "\u0661"}, ("validation_error", "task_id")),
    ("task_status", {"task_id": "+1"}, ("validation_error", "task_id")),
    ("task_status", {"task_id": "01"}, ("validation_error", "task_id")),
    ("task_status", {"task_id": " 1"}, ("validation_error", "task_id")),
    ("task_status", {"task_id": 1.0}, ("validation_error", "task_id")),
    ("task_status", {"task_id": True}, ("validation_error", "task_id")),
    ("task_status", {"task_id": BIG}, ("validation_error", "task_id")),
    ("task_status", {"task_id": "999999"}, ("not_found",)),
    ("task_status", {}, ("task_id_required",)),
]


def _fill(value: Any, world: dict[str, Any]) -> Any:
    if value == "HELD":
        return world["held"]
    if value == "HELD_INT":
        return int(world["held"])
    if value == "ATTEMPT":
        return world["attempt"]
    if isinstance(value, list):
        return [_fill(item, world) for item in value]
    return value


def test_the_same_input_gets_the_same_verdict_through_http_and_mcp(world: dict[str, Any]) -> None:
    server, token = world["server"], world["holder"]
    calls = [(tool, {k: _fill(v, world) for k, v in args.items()}) for tool, args, _ in VALIDATION_CASES]
    with server.client() as client:
        http = [http_call(client, token, tool, args) for tool, args in calls]
    mcp = mcp_calls(server.url, token, calls)
    rows = list(zip(VALIDATION_CASES, http, mcp, strict=True))
    disagree = [(case[0], case[1], h, m) for case, h, m in rows if h != m]
    assert not disagree, "HTTP and MCP disagree:\n" + "\n".join(map(repr, disagree))
    wrong = [(case[0], case[1], case[2], h) for case, h, _ in rows if h != case[2]]
    assert not wrong, "unexpected verdicts:\n" + "\n".join(map(repr, wrong))


# -- authorization -------------------------------------------------------------------

PRINCIPALS = ("holder", "other", "maintainer", "nobody")

#: (tool, arguments, verdict for holder, other agent, maintainer, nobody).
AUTHORIZATION_CASES: list[tuple[str, dict[str, Any], tuple[Verdict, Verdict, Verdict, Verdict]]] = [
    ("create_task", {"title": "by anyone with a token"}, (("ok",), ("ok",), ("ok",), ("unauthorized",))),
    ("claim_task", {}, (("ok",), ("ok",), ("forbidden",), ("unauthorized",))),
    (
        "report_run",
        {"task_id": "HELD", "status": "in_progress", "attempt": "ATTEMPT"},
        (("ok",), ("conflict",), ("forbidden",), ("unauthorized",)),
    ),
    (
        "add_artifact",
        {"task_id": "HELD", "kind": "log", "path": "out.log", "attempt": "ATTEMPT"},
        (("ok",), ("conflict",), ("ok",), ("unauthorized",)),
    ),
    (
        "add_artifact",
        {"task_id": "HELD", "kind": "log", "path": "out.log"},
        (("ok",), ("conflict",), ("ok",), ("unauthorized",)),
    ),
    ("task_status", {"task_id": "HELD"}, (("ok",), ("ok",), ("ok",), ("ok",))),
    ("list_tasks", {"limit": 5}, (("ok",), ("ok",), ("ok",), ("ok",))),
]

#: Reads need no token over HTTP; MCP has no anonymous access at all (its transport
#: answers 401 before any tool runs). The one documented difference (docs/server.md).
ANONYMOUS_READS = {"task_status", "list_tasks"}


def _mcp_nobody(client: httpx.Client, tool: str, args: dict[str, Any]) -> Verdict:
    response = client.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args}},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert response.status_code == 401, response.text
    return ("unauthorized",)


def test_the_same_caller_gets_the_same_verdict_through_http_and_mcp(world: dict[str, Any]) -> None:
    server = world["server"]
    tokens = {"holder": world["holder"], "other": world["other"], "maintainer": MAINTAINER_TOKEN, "nobody": None}
    calls = [(tool, {k: _fill(v, world) for k, v in args.items()}) for tool, args, _ in AUTHORIZATION_CASES]
    with server.client() as client:
        http = {who: [http_call(client, tokens[who], tool, args) for tool, args in calls] for who in PRINCIPALS}
        nobody_mcp = [_mcp_nobody(client, tool, args) for tool, args in calls]
    mcp = {who: mcp_calls(server.url, tokens[who], calls) for who in PRINCIPALS if who != "nobody"}
    mcp["nobody"] = nobody_mcp
    problems = []
    for row, (tool, args, expected) in enumerate(AUTHORIZATION_CASES):
        for column, who in enumerate(PRINCIPALS):
            want_http = expected[column]
            want_mcp = ("unauthorized",) if who == "nobody" and tool in ANONYMOUS_READS else want_http
            if http[who][row] != want_http or mcp[who][row] != want_mcp:
                problems.append((tool, args, who, "http", http[who][row], "mcp", mcp[who][row], "want", want_http))
    assert not problems, "\n".join(map(repr, problems))


def test_artifacts_record_who_added_them(world: dict[str, Any]) -> None:
    """Through both transports: the holder with its attempt, a maintainer as itself."""
    server, held = world["server"], world["held"]
    with server.client() as client:
        by_agent = client.post(
            "/api/task/artifact",
            headers=bearer(world["holder"]),
            json={"task_id": held, "kind": "report", "path": "r.md", "attempt": world["attempt"]},
        )
        by_maintainer = client.post(
            "/api/task/artifact",
            headers=bearer(MAINTAINER_TOKEN),
            json={"task_id": held, "kind": "review", "path": "review.md"},
        )
    assert by_agent.status_code == 200 and by_maintainer.status_code == 200, (by_agent.text, by_maintainer.text)
    agent_artifact = by_agent.json()["artifact"]
    assert by_agent.json()["id"] == agent_artifact["id"] and isinstance(agent_artifact["id"], str)
    assert agent_artifact["task_id"] == held and agent_artifact["attempt"] == world["attempt"]
    assert agent_artifact["added_by"] != "maintainer:maintainer" and agent_artifact["added_by"]
    assert by_maintainer.json()["artifact"]["added_by"] == "maintainer:maintainer"
    assert by_maintainer.json()["artifact"]["attempt"] is None

    async def run() -> list[Any]:
        results = []
        for token in (world["holder"], MAINTAINER_TOKEN):
            async with httpx2.AsyncClient(headers=bearer(token), timeout=30) as http_client:
                async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http_client)) as client:
                    results.append(
                        await client.call_tool("add_artifact", {"task_id": held, "kind": "log", "path": "mcp.log"})
                    )
        return results

    holder_result, maintainer_result = anyio.run(run)
    assert holder_result.structured_content["added_by"] == agent_artifact["added_by"]
    assert holder_result.structured_content["attempt"] == world["attempt"]
    assert maintainer_result.structured_content["added_by"] == "maintainer:maintainer"
    assert isinstance(maintainer_result.structured_content["id"], str)


def test_mcp_tools_publish_the_http_request_models_as_input_schemas(world: dict[str, Any]) -> None:
    from icn_mcp.server.mcp import TOOL_MODELS

    async def run() -> dict[str, Any]:
        async with httpx2.AsyncClient(headers=bearer(world["holder"]), timeout=30) as http_client:
            async with Client(streamable_http_client(f"{world['server'].url}/mcp", http_client=http_client)) as client:
                return {tool.name: tool.input_schema for tool in (await client.list_tools()).tools}

    published = anyio.run(run)
    assert published == {name: model.model_json_schema() for name, model in TOOL_MODELS.items()}
    task_id = published["report_run"]["properties"]["task_id"]["anyOf"]
    assert task_id[0]["type"] == "string" and task_id[-1] == {"type": "null"}
    assert published["create_task"]["properties"]["depends_on"]["items"]["anyOf"][0]["type"] == "string"
