"""The original agent SDK (TypeScript ``ICNClient``) works against ``icn-mcp serve``.

The SDK sends exactly the requests replayed here and validates every response with
zod schemas; those schemas are written below as strict pydantic models (a zod
``z.string()`` refuses a number, so ``strict=True``; ``.optional()`` allows a missing
key but not ``null``). Then the SDK's refresh-forever flaw: a port of its request
loop against the real server, which must end it and stay healthy (issue 8).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Iterator

import httpx
import pydantic
import pytest
from pydantic import BaseModel, ConfigDict, Field

from tests.server.serverproc import ServerProcess, bearer


class _Zod(BaseModel):
    # zod objects pass unknown keys through; types are exact.
    model_config = ConfigDict(strict=True, extra="allow")


class AgentRegisterResponse(_Zod):
    ok: bool
    id: str
    token: str


class TaskCreateResponse(_Zod):
    ok: bool
    id: str


class TokenRefreshResponse(_Zod):
    ok: bool
    token: str


class TaskClaimResponse(_Zod):
    # z.string().optional(): absent is fine, null is not (defaults are not validated).
    task_id: str = Field(default=None)  # type: ignore[assignment]
    title: str = Field(default=None)  # type: ignore[assignment]
    error: str = Field(default=None)  # type: ignore[assignment]


class TaskRunResponse(_Zod):
    ok: bool


#: Refused refreshes a token gets per minute before 429 (the server's
#: REFUSED_REFRESH_PER_TOKEN_PER_MIN; a test below checks that they agree).
REFUSED_REFRESH_PER_TOKEN_PER_MIN = 6

#: What the SDK's fetch sends with every request (its HttpClient.request).
SDK_HEADERS = {"Content-Type": "application/json"}


def _sdk(client: httpx.Client, method: str, path: str, token: str | None, body: Any = None) -> httpx.Response:
    headers = {**SDK_HEADERS, **(bearer(token) if token else {})}
    content = None if body is None else pydantic.TypeAdapter(Any).dump_json(body)
    return client.request(method, path, headers=headers, content=content)


def test_the_refusal_allowance_is_the_servers() -> None:
    from icn_mcp.server import ratelimit

    assert getattr(ratelimit, "REFUSED_REFRESH_PER_TOKEN_PER_MIN", None) == REFUSED_REFRESH_PER_TOKEN_PER_MIN


def test_the_models_are_as_strict_as_the_sdks_zod_schemas() -> None:
    """The replay below can only pass with string ids: an integer id fails."""
    with pytest.raises(pydantic.ValidationError):
        TaskCreateResponse.model_validate({"ok": True, "id": 1})
    with pytest.raises(pydantic.ValidationError):
        TaskClaimResponse.model_validate({"task_id": 1, "title": "t"})
    with pytest.raises(pydantic.ValidationError):
        TaskClaimResponse.model_validate({"task_id": None})
    assert TaskClaimResponse.model_validate({"error": "no_available_tasks"}).error == "no_available_tasks"


def test_the_sdks_requests_replayed_validate_against_its_schemas(server: ServerProcess) -> None:
    with server.client() as client:
        registered = AgentRegisterResponse.model_validate(
            _sdk(client, "POST", "/api/agent/register", None, {"name": "sdk-planner", "kind": "planner"}).json()
        )
        token = registered.token

        # A chain of 5 tasks, each depending on the id the server returned for the last.
        ids: list[str] = []
        for n in range(5):
            body: dict[str, Any] = {"title": f"step {n}", "description": f"chain step {n}"}
            if ids:
                body["depends_on"] = [ids[-1]]
            response = _sdk(client, "POST", "/api/task/create", token, body)
            assert response.status_code == 200, response.text
            ids.append(TaskCreateResponse.model_validate(response.json()).id)
        assert all(re.fullmatch(r"[1-9][0-9]*", task_id) for task_id in ids)

        # claim -> run in_progress (with task_kind) -> completed, until nothing is left.
        claimed: list[str] = []
        while True:
            claim = TaskClaimResponse.model_validate(_sdk(client, "POST", "/api/task/claim", token, {}).json())
            if claim.error == "no_available_tasks":
                break
            assert claim.error is None and claim.title
            claimed.append(claim.task_id)
            for status in ("in_progress", "completed"):
                run = _sdk(
                    client,
                    "POST",
                    "/api/task/run",
                    token,
                    {"task_id": claim.task_id, "status": status, "notes": f"{status} by sdk", "task_kind": "planner"},
                )
                assert run.status_code == 200, run.text
                assert TaskRunResponse.model_validate(run.json()).ok is True
        assert claimed == ids, "the chain is claimed in dependency order, each once"

        # Read through the SDK's raw request helper: ids are strings there too.
        status = _sdk(client, "GET", f"/api/task/status?task_id={ids[-1]}", token).json()
        assert status["id"] == ids[-1] and status["status"] == "completed"
        listed = _sdk(client, "GET", "/api/task/list", token).json()
        assert [task["id"] for task in listed] == ids
        assert [task["depends_on"] for task in listed] == [[]] + [[task_id] for task_id in ids[:-1]]

        # Refresh exactly as the SDK does: Content-Type: application/json and no body.
        refresh = client.post("/api/agent/refresh", headers={**SDK_HEADERS, **bearer(token)})
        assert refresh.request.content == b"" and refresh.status_code == 200, refresh.text
        new_token = TokenRefreshResponse.model_validate(refresh.json()).token
        assert new_token != token
        assert _sdk(client, "POST", "/api/task/claim", new_token, {}).json() == {"error": "no_available_tasks"}
        # The old token is refused everywhere, refresh included.
        for method, path in (("POST", "/api/task/claim"), ("POST", "/api/agent/refresh")):
            old = _sdk(client, method, path, token, {} if path.endswith("claim") else None)
            assert old.status_code == 401 and old.json()["error"] == "unauthorized"


# -- the SDK's refresh-forever flaw ---------------------------------------------------


class AuthError(Exception):
    """The SDK's AuthError."""


class RateLimitError(Exception):
    """The SDK's RateLimitError."""


class SdkClient:
    """A line-by-line port of the original SDK's ``HttpClient.request`` and
    ``refreshToken`` (agent-sdk/src/client.ts), the client side of this test.

    On a 401 it refreshes and retries; the refresh is itself a ``request``, so a
    refused refresh refreshes again, without end. ``sleep`` only records the delay
    (the test never waits on the SDK's timers), and ``max_depth`` bounds the
    recursion so that a server that never stops the loop fails the test instead of
    hanging it.
    """

    RETRIES = 3

    def __init__(self, http: httpx.Client, token: str, *, max_depth: int = 300) -> None:
        self.http = http
        self.token = token
        self.max_depth = max_depth
        self.requests: list[tuple[str, int]] = []
        self.slept: list[float] = []
        self._depth = 0

    def request(self, path: str, method: str = "GET", body: Any = None) -> Any:
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise RecursionError(f"the refresh loop did not end after {self.max_depth} nested requests")
            return self._request(path, method, body)
        finally:
            self._depth -= 1

    def _request(self, path: str, method: str, body: Any) -> Any:
        did_retry_auth = False
        attempt = 0
        while attempt <= self.RETRIES:
            response = _sdk(self.http, method, path, self.token, body)
            self.requests.append((path, response.status_code))
            if response.status_code == 429:
                retry_after = int(response.headers.get("retry-after") or "1")
                if attempt < self.RETRIES:
                    self.slept.append(retry_after)
                    attempt += 1
                    continue
                raise RateLimitError(f"Rate limited: retry after {retry_after}s")
            if response.status_code == 401 and self.token and not did_retry_auth:
                try:
                    self.refresh_token()
                except (AuthError, RateLimitError, RuntimeError) as exc:
                    raise AuthError(f"Authentication failed: {exc}") from exc
                did_retry_auth = True
                attempt += 1
                continue
            if response.status_code >= 400:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
            return response.json()
        raise RuntimeError("Max retries exceeded")

    def refresh_token(self) -> None:
        data = self.request("/api/agent/refresh", "POST")
        if not data.get("ok") or not data.get("token"):
            raise RuntimeError("Token refresh failed")
        self.token = data["token"]


def _sample(text: str, series: str) -> float:
    match = re.search("^" + re.escape(series) + r" (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _store_refreshes(client: httpx.Client) -> float:
    """How many refreshes reached the store (each is one timed store call)."""
    return _sample(
        client.get("/metrics").text, 'icn_mcp_db_transaction_duration_seconds_count{operation="refresh_token"}'
    )


@pytest.fixture
def dead_token(server: ServerProcess) -> Iterator[tuple[httpx.Client, str, str]]:
    """A client, a live agent token and a token that was refreshed away."""
    with server.client() as client:
        first = client.post("/api/agent/register", json={"name": "loop", "kind": "ops"}).json()
        live = client.post("/api/agent/refresh", headers=bearer(first["token"])).json()["token"]
        yield client, live, first["token"]


def test_the_sdks_refresh_loop_ends_and_reaches_the_store_a_bounded_number_of_times(
    dead_token: tuple[httpx.Client, str, str],
) -> None:
    client, _, dead = dead_token
    before = _store_refreshes(client)
    sdk = SdkClient(client, dead)
    with pytest.raises(AuthError):
        sdk.request("/api/task/claim", "POST", {})
    refreshes = [status for path, status in sdk.requests if path == "/api/agent/refresh"]
    # Refused a few times, then 429 with Retry-After: the SDK sleeps, retries three
    # times, gives up with RateLimitError, and every level of its recursion unwinds.
    # (The allowance refills at 1 per 10 s, so a very slow run may see one more 401.)
    allowance = REFUSED_REFRESH_PER_TOKEN_PER_MIN
    assert refreshes[:allowance] == [401] * allowance and set(refreshes) == {401, 429}
    assert refreshes[-(SdkClient.RETRIES + 1) :] == [429] * (SdkClient.RETRIES + 1)
    assert len(sdk.slept) == SdkClient.RETRIES and all(s >= 1 for s in sdk.slept)
    # Only the refused ones did any work in the store; the 429s touched nothing.
    assert _store_refreshes(client) - before == refreshes.count(401)


def test_the_server_stays_healthy_under_refresh_loops(
    server: ServerProcess, dead_token: tuple[httpx.Client, str, str]
) -> None:
    """Two hard loops hammer /api/agent/refresh while an agent works: one on a dead
    token (the SDK's loop without its back-off), one rotating never-issued tokens.
    The agent's requests all succeed; the dead token is answered 429 after its
    allowance without reaching the store; each never-issued token is refused once,
    by a read that takes no write lock (tests/store: test_a_refused_refresh_never_
    takes_the_write_lock)."""
    client, live, dead = dead_token
    before = _store_refreshes(client)
    statuses: dict[str, list[int]] = {"dead": [], "rotating": []}
    errors: list[BaseException] = []

    def hammer(name: str) -> None:
        try:
            with server.client() as loop_client:
                for n in range(150):
                    token = dead if name == "dead" else f"never-issued-token-{n:04d}-{'z' * 20}"
                    response = loop_client.post("/api/agent/refresh", headers={**SDK_HEADERS, **bearer(token)})
                    statuses[name].append(response.status_code)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    loops = [threading.Thread(target=hammer, args=(name,)) for name in statuses]
    for loop in loops:
        loop.start()
    for n in range(20):
        created = client.post("/api/task/create", json={"title": f"work {n}"}, headers=bearer(live))
        assert created.status_code == 200, created.text
        claim = client.post("/api/task/claim", json={}, headers=bearer(live)).json()
        done = client.post(
            "/api/task/run",
            json={"task_id": claim["task_id"], "status": "completed", "attempt": claim["attempt"]},
            headers=bearer(live),
        )
        assert done.status_code == 200, done.text
    for loop in loops:
        loop.join(120)
    assert not errors, errors
    assert client.get("/healthz/db").json()["ok"] is True

    dead_statuses = statuses["dead"]
    allowance = REFUSED_REFRESH_PER_TOKEN_PER_MIN
    assert dead_statuses[: allowance + 1] == [401] * allowance + [429]
    # The allowance refills at 1 per 10 s: however slow the run, most are stopped.
    assert set(dead_statuses) == {401, 429} and dead_statuses.count(429) > dead_statuses.count(401)
    assert statuses["rotating"] == [401] * 150
    # Only refusals reached the store; no 429 did.
    assert _store_refreshes(client) - before == dead_statuses.count(401) + 150
    # The agent that kept working still refreshes normally.
    assert client.post("/api/agent/refresh", headers=bearer(live)).status_code == 200
