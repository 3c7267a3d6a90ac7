"""Property-based fuzzing of every route from the server's published OpenAPI document.

Schemathesis reads GET /openapi.json from a real server and its hypothesis strategies
generate requests for each operation, valid and invalid, with an agent token, a
bogus one and none. (Schemathesis' own pytest plugin is not used: its lazy-fixture
loader does not work with pytest 9.) Whatever it
sends, the server must answer with our JSON error shape, never a 5xx and never a
traceback, and stay up; its stderr must hold no ERROR line and no logged exception
(the catch-all 500 and every handled traceback go to the log's ``exc`` field, never
to the response). The number of examples is bounded so this stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from icn_mcp.server.openapi import document
from tests.server.serverproc import ServerProcess, bearer

#: Examples per operation: enough to reach every validation branch, quick on 2 cores.
EXAMPLES = 30


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("fuzz")) / "var").start()
    try:
        with server.client() as client:
            agent = client.post("/api/agent/register", json={"name": "fuzzer", "kind": "ops"}).json()
            # Something to claim, report on and look up.
            for n in range(3):
                client.post("/api/task/create", json={"title": f"seed {n}"}, headers=bearer(agent["token"]))
        yield {"server": server, "token": agent["token"]}
    finally:
        server.stop()  # also waits until every stderr line is read
        assert server.proc is not None and server.proc.returncode in (0, -15), "".join(server.stderr_lines[-20:])
        problems = log_problems(server.stderr_lines)
        assert not problems, "server logged errors while fuzzed:\n" + "".join(problems[:5])


def log_problems(lines: list[str]) -> list[str]:
    """The server's stderr lines that show an error: not a JSON log record (a bare
    traceback), level ERROR or CRITICAL, or carrying an ``exc`` (a logged exception)."""
    problems = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("level") in ("ERROR", "CRITICAL") or "exc" in record:
            problems.append(line)
    return problems


def test_log_problems_finds_errors_and_tracebacks() -> None:
    ok = '{"level":"INFO","logger":"icn_mcp.server.access","msg":"request","status":200}\n'
    assert log_problems([ok, '{"level":"WARNING","logger":"x","msg":"slow"}\n']) == []
    bad = [
        '{"level":"ERROR","logger":"icn_mcp.server","msg":"unhandled","exc":"Traceback ..."}\n',
        '{"level":"INFO","logger":"x","msg":"handled","exc":"Traceback ..."}\n',
        '{"level":"CRITICAL","logger":"x","msg":"boom"}\n',
        "Traceback (most recent call last):\n",
    ]
    assert log_problems([ok, *bad]) == bad


@pytest.fixture(scope="module")
def api_schema(live: dict[str, Any]) -> Any:
    """The document as the running server publishes it."""
    return schemathesis.openapi.from_url(f"{live['server'].url}/openapi.json")


#: Every (method, path) of the document; the live one must describe the same routes.
ROUTES = [(method.upper(), path) for path, item in document()["paths"].items() for method in item]
#: Valid inputs for every route; invalid ones where there is any input to get wrong.
CASES = [(method, path, GenerationMode.POSITIVE) for method, path in ROUTES] + [
    (method.upper(), path, GenerationMode.NEGATIVE)
    for path, item in document()["paths"].items()
    for method, operation in item.items()
    if operation.get("parameters") or operation.get("requestBody")
]


def _check(case: Any, headers: dict[str, str]) -> None:
    response = case.call(headers=headers, timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)
    assert "Traceback" not in response.text
    if case.path == "/metrics" and response.status_code == 200:
        return
    body = response.json()
    if response.status_code >= 400:
        assert body["ok"] is False and isinstance(body["error"], str), body
    if response.status_code in (429, 507):
        # schemathesis gives headers with lower-case names and lists of values (the old
        # ["Retry-After"] lookup could only fail, once refused refreshes made 429s reachable).
        assert int(response.headers["retry-after"][0]) >= 1, response.headers


def test_the_published_document_lists_every_route(api_schema: Any) -> None:
    published = [(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()]
    assert sorted(published) == sorted(ROUTES)


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_route_answers_without_5xx_or_traceback(
    api_schema: Any, live: dict[str, Any], method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    tokens = st.sampled_from([{}, bearer(live["token"]), {"Authorization": "Bearer not-a-real-token"}])

    @given(case=operation.as_strategy(generation_mode=mode), headers=tokens)
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
    )
    def fuzz(case: Any, headers: dict[str, str]) -> None:
        _check(case, headers)

    seen = len(live["server"].stderr_lines)
    fuzz()
    # This route's lines so far; the teardown checks every line, the last requests' too.
    problems = log_problems(live["server"].stderr_lines[seen:])
    assert not problems, f"{method} {path}: the server logged errors:\n" + "".join(problems[:5])
