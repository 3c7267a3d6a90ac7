"""MCP tools over the store, with the official SDK's ``MCPServer`` (mcp 2.x).

The same tools serve two transports:

- streamable HTTP at ``/mcp``: every request carries a bearer token, checked by
  :class:`StoreTokenVerifier` (the SDK's token-verifier hook). An agent token acts for
  that agent; a maintainer token (MCP_ADMIN_TOKEN / MCP_MAINTAINER_TOKENS) may use the
  operator tools ``db_info`` and ``create_backup`` and the read-only ones.
- stdio (``icn-mcp serve --stdio``): the process acts for one local agent named by
  MCP_STDIO_AGENT_NAME / MCP_STDIO_AGENT_KIND, registered on first use, with operator
  rights (whoever starts it can open the database file anyway).

Inputs get JSON schemas from the type hints. A refused call (bad input, not found,
stale claim...) returns an MCP tool error (``isError``) whose content is the same
``{"ok": false, "error": CODE, ...}`` object the HTTP API returns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from icn_mcp import __version__
from icn_mcp.config import Settings
from icn_mcp.db.timestamps import parse_ts
from icn_mcp.errors import Unauthorized
from icn_mcp.server import operations
from icn_mcp.server.auth import Principal, authorize, resolve
from icn_mcp.server.errors import ApiError, to_api_error
from icn_mcp.server.hub import Hub
from icn_mcp.server.schemas import (
    AddArtifactRequest,
    ClaimRequest,
    CreateTaskRequest,
    EmptyRequest,
    ListTasksRequest,
    RunRequest,
    TaskStatusRequest,
    parse_arguments,
)
from icn_mcp.server.shapes import artifact_shape, claim_shape, status_shape, task_shape
from icn_mcp.server.waiting import client_disconnected

__all__ = ["build_mcp_server", "StoreTokenVerifier", "TOOL_NAMES", "TOOL_MODELS"]

log = logging.getLogger("icn_mcp.server.mcp")

#: Each tool's arguments: the HTTP API's request model of the same operation, so
#: both transports give the same input the same verdict (issue 8).
TOOL_MODELS: dict[str, type[BaseModel]] = {
    "create_task": CreateTaskRequest,
    "claim_task": ClaimRequest,
    "report_run": RunRequest,
    "task_status": TaskStatusRequest,
    "list_tasks": ListTasksRequest,
    "add_artifact": AddArtifactRequest,
    "db_info": EmptyRequest,
    "create_backup": EmptyRequest,
}
TOOL_NAMES = tuple(TOOL_MODELS)

AGENT_SCOPE = "agent"
MAINTAINER_SCOPE = "maintainer"

#: Who a tool call acts for (the stdio agent is an agent and a maintainer).
Actor = Principal


class StoreTokenVerifier:
    """The SDK's ``TokenVerifier``: the bearer token resolved by the shared rule
    (:func:`icn_mcp.server.auth.resolve`), as the SDK's ``AccessToken``."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def verify_token(self, token: str) -> AccessToken | None:
        return await self.hub.call("authenticate", self._verify, token)

    def _verify(self, token: str) -> AccessToken | None:
        try:
            principal = resolve(self.hub.store, token)
        except Unauthorized:
            return None
        if principal.agent_id is None:
            role = principal.maintainer_role or ""
            return AccessToken(token=token, client_id=principal.name, scopes=[MAINTAINER_SCOPE, role])
        expires = parse_ts(principal.token_expires_at).timestamp() if principal.token_expires_at else None
        return AccessToken(
            token=token,
            client_id=principal.agent_id,
            scopes=[AGENT_SCOPE],
            expires_at=int(expires) if expires is not None else None,
        )


def _http_principal() -> Principal:
    token = get_access_token()
    if token is None:  # the SDK's middleware refuses such requests first
        raise Unauthorized("missing bearer token")
    if AGENT_SCOPE in token.scopes:
        return Principal(agent_id=token.client_id)
    role = token.client_id.removeprefix("maintainer:")
    return Principal(maintainer_role=role)


def tool_error(error: ApiError) -> CallToolResult:
    """An MCP tool error (``isError``) carrying ``{"ok": false, "error": CODE, ...}``."""
    body = error.body()
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(body))],
        structured_content=body,
        is_error=True,
    )


def tool_result(result: dict[str, Any]) -> CallToolResult:
    """A successful tool call: the dict as structured content and as JSON text."""
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(result))], structured_content=result)


#: A tool body: (principal, parsed arguments) -> result, run in a worker thread.
Body = Callable[[Principal, Any], dict[str, Any]]
#: An asynchronous tool body (a waiting claim): (a function that finds and authorises
#: the principal, for a worker thread; parsed arguments; a coroutine function that
#: returns when the HTTP client went away, or None) -> result, on the event loop.
AsyncBody = Callable[[Callable[[], Principal], Any, Callable[[], Awaitable[Any]] | None], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class _Tool:
    model: type[BaseModel]
    body: Body | None = None
    async_body: AsyncBody | None = None


class _Server(MCPServer):
    """``MCPServer`` whose tools parse their arguments with the shared request models.

    The SDK would validate arguments against a model of the function's signature in
    lax mode (``"5"`` -> 5, ``true`` -> 1, ``1.0`` -> 1) and first JSON-decode any
    string given for a non-string field; our tools bypass that: ``call_tool`` parses
    with :func:`icn_mcp.server.schemas.parse_arguments`, the HTTP API's parser, and
    the published input schemas are those models' schemas.
    """

    def __init__(self, *args: Any, hub: Hub, principal: Callable[[], Principal], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.principal = principal
        self._tools: dict[str, _Tool] = {}

    def add_model_tool(
        self, name: str, description: str, body: Body | None = None, *, async_body: AsyncBody | None = None
    ) -> None:
        model = TOOL_MODELS[name]

        def listed() -> dict[str, Any]:  # pragma: no cover - never called, see call_tool
            raise NotImplementedError

        self.add_tool(listed, name=name, description=description, structured_output=True)
        tool = self._tool_manager.get_tool(name)
        assert tool is not None
        tool.parameters = model.model_json_schema()
        self._tools[name] = _Tool(model, body, async_body)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = self._tools.get(name)
        if tool is None:
            return await super().call_tool(name, arguments, context)

        def authorized() -> Principal:
            principal = self.principal()
            authorize(principal, name)
            return principal

        def run() -> dict[str, Any]:
            assert tool.body is not None
            return tool.body(authorized(), parse_arguments(tool.model, arguments))  # type: ignore[type-var]

        try:
            if tool.async_body is not None:
                parsed = parse_arguments(tool.model, arguments)  # type: ignore[type-var]
                result = await tool.async_body(authorized, parsed, _disconnected(context))
            else:
                result = await self.hub.call(name, run)
        except Exception as exc:  # noqa: BLE001 - mapped to a tool error, never a crash
            error = to_api_error(exc)
            self.hub.metrics.tool_calls.labels(name, error.code).inc()
            return tool_error(error)
        self.hub.metrics.tool_calls.labels(name, "ok").inc()
        return tool_result(result)


def _disconnected(context: Any) -> Callable[[], Awaitable[Any]] | None:
    """For a tool call over HTTP: returns when the client closes the request (in the
    2026 protocol, closing a request's response stream IS its cancellation, and this
    server answers in JSON mode, where the SDK does not watch for it). None on stdio.

    The SDK has read the request body already, so the next ASGI message of the request
    is its ``http.disconnect``."""
    request = getattr(getattr(context, "request_context", None), "request", None)
    receive = getattr(request, "receive", None)
    if receive is None:
        return None
    return lambda: client_disconnected(receive)


def build_mcp_server(hub: Hub, *, http: bool, stdio_actor: Callable[[], Principal] | None = None) -> MCPServer:
    """The MCP server with every tool; ``http=True`` wires the bearer-token verifier."""
    if http:
        server = _Server(
            "icn-mcp",
            hub=hub,
            principal=_http_principal,
            version=__version__,
            instructions=INSTRUCTIONS,
            token_verifier=StoreTokenVerifier(hub),
            # The SDK requires an issuer URL; this server issues its own tokens and
            # publishes no OAuth metadata (resource_server_url=None).
            auth=AuthSettings(issuer_url=_own_url(hub.settings), resource_server_url=None),  # type: ignore[arg-type]
            log_level=hub.settings.log_level,
        )
    else:
        if stdio_actor is None:
            raise ValueError("stdio needs stdio_actor: the local agent it acts for")
        server = _Server(
            "icn-mcp",
            hub=hub,
            principal=stdio_actor,
            version=__version__,
            instructions=INSTRUCTIONS,
            log_level=hub.settings.log_level,
        )
    _register_tools(server)
    return server


def _own_url(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port or 80}"


INSTRUCTIONS = (
    'icn-mcp agent HQ. Ids are strings ("42"). Claim a task with claim_task, report '
    "progress with report_run (status in_progress renews the lease; completed or failed "
    "ends the attempt, passing the attempt number from the claim), record outputs with "
    'add_artifact (while holding the claim). Errors come back as {"ok": false, "error": '
    "CODE, ...} with the codes of the HTTP API."
)


def _register_tools(server: _Server) -> None:
    hub = server.hub
    store = hub.store

    def create_task(principal: Principal, request: CreateTaskRequest) -> dict[str, Any]:
        return task_shape(operations.create_task(hub, principal, request))

    async def claim_task(
        principal: Callable[[], Principal],
        request: ClaimRequest,
        disconnected: Callable[[], Awaitable[Any]] | None,
    ) -> dict[str, Any]:
        claimed = await hub.claim(principal, request, disconnected=disconnected)
        return claim_shape(claimed) if claimed is not None else {"error": "no_available_tasks"}

    def report_run(principal: Principal, request: RunRequest) -> dict[str, Any]:
        operations.report_run(hub, principal, request)
        return {"ok": True}

    def task_status(principal: Principal, request: TaskStatusRequest) -> dict[str, Any]:
        return status_shape(store.task_status(request.task_id))  # type: ignore[arg-type]

    def list_tasks(principal: Principal, request: ListTasksRequest) -> dict[str, Any]:
        page = store.list_tasks(status=request.status, limit=request.limit, cursor=request.cursor)
        return {"tasks": [task_shape(task) for task in page.tasks], "next_cursor": page.next_cursor}

    def add_artifact(principal: Principal, request: AddArtifactRequest) -> dict[str, Any]:
        return artifact_shape(operations.add_artifact(hub, principal, request))

    def db_info(principal: Principal, request: EmptyRequest) -> dict[str, Any]:
        return hub.database_info()

    def create_backup(principal: Principal, request: EmptyRequest) -> dict[str, Any]:
        return hub.create_backup()

    server.add_model_tool("create_task", "Create a task; returns it (ids are strings).", create_task)
    server.add_model_tool(
        "claim_task",
        "Claim the next claimable task for this agent, waiting up to wait_s seconds for one. Returns "
        "task_id, title, lease_expires_at and attempt (pass the attempt to report_run), or "
        '{"error": "no_available_tasks"}.',
        async_body=claim_task,
    )
    server.add_model_tool(
        "report_run",
        "Report a run of a task this agent holds: in_progress renews the lease, completed releases "
        "dependents, failed reopens it until max_attempts.",
        report_run,
    )
    server.add_model_tool(
        "task_status",
        "A task's status, attempt, lease expiry, its agent (the claimer while claimed, else the latest "
        "run's) and the latest run's notes.",
        task_status,
    )
    server.add_model_tool(
        "list_tasks", 'Tasks in a stable order, one page at a time: {"tasks": [...], "next_cursor"}.', list_tasks
    )
    server.add_model_tool(
        "add_artifact",
        "Record an artifact a task produced, while holding its claim (pass the claim's attempt) or as "
        "a maintainer; returns it with who added it.",
        add_artifact,
    )
    server.add_model_tool(
        "db_info", "Operators: the database's size, tables, indexes, migrations, last backup and health.", db_info
    )
    server.add_model_tool(
        "create_backup", "Operators: take a verified backup of the live database; returns where it is.", create_backup
    )
