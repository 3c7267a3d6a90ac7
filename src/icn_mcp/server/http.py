"""The HTTP worker API, ``/healthz``, ``/metrics``, ``/openapi.json`` and ``/mcp``.

Each handler parses the request, makes one store call in a worker thread and maps
the result (or the error) to the JSON shapes existing agent clients speak (issue 5).
:func:`create_app` assembles the routes, the MCP endpoint and the middleware.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from icn_mcp.config import Settings
from icn_mcp.db import BaseDatabase
from icn_mcp.errors import Unauthorized
from icn_mcp.server import openapi, operations
from icn_mcp.server.auth import Principal, authorize, resolve
from icn_mcp.server.errors import storage_full_error, to_api_error
from icn_mcp.server.hub import Hub
from icn_mcp.server.mcp import build_mcp_server
from icn_mcp.server.metrics import CONTENT_TYPE
from icn_mcp.server.middleware import (
    BodyLimitMiddleware,
    ObserveMiddleware,
    RateLimitMiddleware,
    bearer_from_header,
    request_info,
)
from icn_mcp.server.ratelimit import RateLimiter
from icn_mcp.server.schemas import (
    AddArtifactRequest,
    ClaimRequest,
    CreateTaskRequest,
    EmptyRequest,
    ListTasksRequest,
    RegisterRequest,
    RunRequest,
    TaskStatusRequest,
    parse_body,
    parse_query,
)
from icn_mcp.server.shapes import artifact_shape, claim_shape, status_shape, task_shape
from icn_mcp.server.waiting import client_disconnected
from icn_mcp.store.validation import format_id

__all__ = ["create_app", "API_ROUTES"]

log = logging.getLogger("icn_mcp.server")

Handler = Callable[[Request, Hub], Awaitable[Response]]


def _ok(data: dict[str, Any] | list[Any], status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=headers)


def _bearer(request: Request, *, required: bool) -> str | None:
    """The bearer token, None when absent and not required; Unauthorized otherwise."""
    ok, token = bearer_from_header(request.headers.get("authorization"))
    if not ok:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    if token is None and required:
        raise Unauthorized("missing bearer token")
    return token


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wraps a handler: its hub, and any error as ``{"ok": false, "error": ...}``."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        request_info(request.scope).route = request.url.path
        try:
            return await handler(request, request.app.state.hub)
        except Exception as exc:  # noqa: BLE001 - mapped, never shown raw
            error = to_api_error(exc)
            return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)

    return endpoint


def _principal(hub: Hub, request: Request, action: str) -> Callable[[], Principal]:
    """A function (for a worker thread) that resolves the bearer token, applies the
    one authorization rule (:mod:`icn_mcp.server.auth`) and notes the agent."""
    token = _bearer(request, required=False)
    if token is None:
        authorize(None, action)  # 401 before the body is even read

    def check() -> Principal:
        principal = authorize(resolve(hub.store, token) if token is not None else None, action)
        assert principal is not None  # every HTTP route with a token needs one
        request_info(request.scope).agent_id = principal.name
        return principal

    return check


# -- health and metrics --------------------------------------------------------------


async def healthz(request: Request, hub: Hub) -> Response:
    return _ok({"ok": True})


async def healthz_db(request: Request, hub: Hub) -> Response:
    health = await hub.call("check_health", hub.db.check_health)
    if not health["ok"]:
        log.warning("database health check failed: %s", health["error"])
        return _ok({"ok": False, "error": "unavailable", "latency_ms": health["latency_ms"]}, status=503)
    # Readable is not enough: a full disk refuses every write (issue 9 item 12).
    storage = await hub.call("check_storage", hub.db.check_storage)
    if storage["full"]:
        error = storage_full_error()
        body = {**error.body(), "storage_full_since": storage["since"], "latency_ms": health["latency_ms"]}
        return _ok(body, status=503, headers=error.headers)
    # The probe above is live; the counts are at most MCP_HEALTH_CACHE_S old.
    database = await hub.health_database.get()
    return _ok(
        {"ok": True, "latency_ms": health["latency_ms"], "database": database, "replication": hub.replication_status()}
    )


async def metrics(request: Request, hub: Hub) -> Response:
    state = await hub.metrics_state.get()  # at most MCP_HEALTH_CACHE_S old
    body = await hub.call("metrics", hub.metrics.render, state)
    return Response(body, media_type=CONTENT_TYPE)


async def openapi_json(request: Request, hub: Hub) -> Response:
    return _ok(openapi.document(str(request.base_url).rstrip("/")))


# -- agents --------------------------------------------------------------------------


async def register(request: Request, hub: Hub) -> Response:
    token = _bearer(request, required=False)
    body = parse_body(RegisterRequest, await request.body())
    agent = await hub.call(
        "register_agent", hub.store.register_agent, body.name, body.kind, body.version, credential=token
    )
    request_info(request.scope).agent_id = agent.id
    return _ok({"ok": True, "id": agent.id, "token": agent.token})


async def refresh(request: Request, hub: Hub) -> Response:
    token = _bearer(request, required=True)
    assert token is not None  # required=True: Unauthorized otherwise
    # The original SDK retries a refused refresh forever (docs/server.md, "Clients"):
    # a token refused too often is answered 429 without touching the database, and
    # the SDK's 429 handling ends its loop.
    hub.refused_refreshes.check(token)
    parse_body(EmptyRequest, await request.body())
    try:
        agent = await hub.call("refresh_token", hub.store.refresh_token, token)
    except Unauthorized:
        hub.refused_refreshes.refused(token)
        raise
    request_info(request.scope).agent_id = agent.id
    return _ok({"ok": True, "token": agent.token})


# -- tasks ---------------------------------------------------------------------------


async def create_task(request: Request, hub: Hub) -> Response:
    principal = _principal(hub, request, "create_task")
    body = parse_body(CreateTaskRequest, await request.body())
    task = await hub.call("create_task", lambda: operations.create_task(hub, principal(), body))
    return _ok({"ok": True, "id": format_id(task.id)})


async def list_tasks(request: Request, hub: Hub) -> Response:
    query = parse_query(ListTasksRequest, request.query_params, integers=("limit",))
    page = await hub.call(
        "list_tasks", hub.store.list_tasks, status=query.status, limit=query.limit, cursor=query.cursor
    )
    headers = {"X-Next-Cursor": page.next_cursor} if page.next_cursor else None
    return _ok([task_shape(task) for task in page.tasks], headers=headers)


async def claim_task(request: Request, hub: Hub) -> Response:
    principal = _principal(hub, request, "claim_task")
    body = parse_body(ClaimRequest, await request.body())
    claimed = await hub.claim(principal, body, disconnected=lambda: client_disconnected(request.receive))
    return _ok(claim_shape(claimed) if claimed is not None else {"error": "no_available_tasks"})


async def report_run(request: Request, hub: Hub) -> Response:
    principal = _principal(hub, request, "report_run")
    body = parse_body(RunRequest, await request.body())
    await hub.call("report_run", lambda: operations.report_run(hub, principal(), body))
    return _ok({"ok": True})


async def add_artifact(request: Request, hub: Hub) -> Response:
    principal = _principal(hub, request, "add_artifact")
    body = parse_body(AddArtifactRequest, await request.body())
    artifact = artifact_shape(await hub.call("add_artifact", lambda: operations.add_artifact(hub, principal(), body)))
    return _ok({"ok": True, "id": artifact["id"], "artifact": artifact})


async def task_status(request: Request, hub: Hub) -> Response:
    query = parse_query(TaskStatusRequest, request.query_params)
    status = await hub.call("task_status", hub.store.task_status, query.task_id)
    return _ok(status_shape(status))


# -- maintainers ---------------------------------------------------------------------


async def cleanup_agents(request: Request, hub: Hub) -> Response:
    principal = _principal(hub, request, "cleanup_agents")
    parse_body(EmptyRequest, await request.body())

    def cleanup() -> int:
        principal()
        return hub.store.cleanup_expired()

    deleted = await hub.call("cleanup_expired", cleanup)
    return _ok({"ok": True, "deletedCount": deleted})


async def admin_stats(request: Request, hub: Hub) -> Response:
    principal = _principal(hub, request, "admin_stats")

    def stats() -> dict[str, Any]:
        principal()
        return hub.store.stats()

    return _ok({"ok": True, "stats": await hub.call("stats", stats)})


#: (method, path, handler) of every route of the HTTP API.
API_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/healthz", healthz),
    ("GET", "/healthz/db", healthz_db),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi_json),
    ("POST", "/api/agent/register", register),
    ("POST", "/api/agent/refresh", refresh),
    ("POST", "/api/task/create", create_task),
    ("GET", "/api/task/list", list_tasks),
    ("POST", "/api/task/claim", claim_task),
    ("POST", "/api/task/run", report_run),
    ("POST", "/api/task/artifact", add_artifact),
    ("GET", "/api/task/status", task_status),
    ("POST", "/api/admin/agents/cleanup", cleanup_agents),
    ("GET", "/api/admin/stats", admin_stats),
)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as our JSON errors."""
    status = getattr(exc, "status_code", 500)
    code = {404: "not_found", 405: "method_not_allowed"}.get(
        status, "bad_request" if status < 500 else "internal_error"
    )
    headers = getattr(exc, "headers", None)
    return JSONResponse({"ok": False, "error": code}, status_code=status, headers=headers)


def create_app(settings: Settings, *, db: BaseDatabase | None = None) -> Starlette:
    """The whole server as one ASGI app, serving the database from ``settings``.

    ``db`` overrides the database (tests); otherwise one is opened and migrated now
    and closed (checkpointed) when the app shuts down.
    """
    hub = Hub(settings, db=db)
    mcp_server = build_mcp_server(hub, http=True)
    mcp_app = mcp_server.streamable_http_app(
        streamable_http_path="/mcp",
        # Stateless JSON: every POST stands alone, so a restart or several server
        # processes behind one address never strand a client's session.
        stateless_http=True,
        json_response=True,
        max_request_body_size=settings.max_body_bytes,
        host=settings.host,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A mounted app's lifespan does not run: start the MCP session manager here.
        try:
            async with mcp_server.session_manager.run():
                yield
        finally:
            await hub.waiters.aclose()
            hub.close()
            log.info("database %s closed", hub.db.target)

    routes = [Route(path, _endpoint(handler), methods=[method]) for method, path, handler in API_ROUTES]
    # The SDK's app routes /mcp itself (behind its bearer middleware); a Route, not a
    # Mount at "/", so that unknown paths still get our JSON 404. No GET: stateless
    # JSON mode has no server-initiated stream to offer, and the MCP spec lets a
    # server answer 405 there (an open GET would only hold shutdown up).
    routes.append(Route("/mcp", endpoint=mcp_app, methods=["POST", "DELETE"]))
    # The operator dashboard: its page and maintainer JSON (docs/dashboard.md);
    # imported here because it builds on this module's handler helpers.
    from icn_mcp.server.dashboard import DASHBOARD_PATHS, dashboard_routes

    routes += dashboard_routes(hub)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception},
        middleware=[
            Middleware(
                ObserveMiddleware,
                metrics=hub.metrics,
                known_routes=frozenset(path for _, path, _ in API_ROUTES) | DASHBOARD_PATHS,
            ),
            Middleware(
                RateLimitMiddleware,
                per_ip=RateLimiter(settings.rate_limit_ip_per_min),
                per_token=RateLimiter(settings.rate_limit_token_per_min),
            ),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
    )
    app.state.hub = hub
    app.state.mcp = mcp_server
    return app
