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
from typing import Annotated, Any, Awaitable, Callable, Literal

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, TextContent
import pydantic
from pydantic import Field

from icn_mcp import __version__
from icn_mcp.config import Settings
from icn_mcp.db.timestamps import parse_ts
from icn_mcp.errors import Forbidden, Unauthorized
from icn_mcp.server.errors import ApiError, to_api_error, validation_error
from icn_mcp.server.hub import Hub
from icn_mcp.server.shapes import claim_shape, status_shape
from icn_mcp.store.validation import LIST_LIMIT_MAX
from icn_mcp.server.schemas import MAX_SQL_INT, Id, LeaseSeconds, MaxAttempts, Priority, WaitSeconds, pydantic_fields

__all__ = ["build_mcp_server", "StoreTokenVerifier", "TOOL_NAMES"]

log = logging.getLogger("icn_mcp.server.mcp")

TOOL_NAMES = (
    "create_task",
    "claim_task",
    "report_run",
    "task_status",
    "list_tasks",
    "add_artifact",
    "db_info",
    "create_backup",
)

AGENT_SCOPE = "agent"
MAINTAINER_SCOPE = "maintainer"

TaskId = Annotated[Id, Field(description="The task's id")]


@dataclass(frozen=True)
class Actor:
    """Who a tool call acts for: an agent, a maintainer, or both (stdio)."""

    agent_id: str | None
    maintainer: bool
    #: For the log and ``created_by`` when there is no agent: ``maintainer:<role>``.
    name: str | None = None


class StoreTokenVerifier:
    """The SDK's ``TokenVerifier``: agent tokens via the store, then maintainer tokens."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def verify_token(self, token: str) -> AccessToken | None:
        return await self.hub.call("authenticate", self._verify, token)

    def _verify(self, token: str) -> AccessToken | None:
        try:
            agent = self.hub.store.authenticate(token)
        except Unauthorized:
            role = self.hub.store.maintainer_role(token)
            if role is None:
                return None
            return AccessToken(token=token, client_id=f"maintainer:{role}", scopes=[MAINTAINER_SCOPE, role])
        expires = parse_ts(agent.token_expires_at).timestamp() if agent.token_expires_at else None
        return AccessToken(
            token=token,
            client_id=agent.id,
            scopes=[AGENT_SCOPE],
            expires_at=int(expires) if expires is not None else None,
        )


class _Tools:
    """The tool bodies: find the actor, make one store call, shape the result."""

    def __init__(self, hub: Hub, actor: Callable[[], Actor]) -> None:
        self.hub = hub
        self.actor = actor

    def _agent(self) -> str:
        actor = self.actor()
        if actor.agent_id is None:
            raise Forbidden("this tool needs an agent token, not a maintainer token")
        return actor.agent_id

    def _operator(self) -> None:
        if not self.actor().maintainer:
            raise Forbidden("this tool needs a maintainer token (MCP_ADMIN_TOKEN or MCP_MAINTAINER_TOKENS)")

    async def run(self, tool: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` in a worker thread; its dict, or an MCP tool error with our code."""
        return await self.run_async(tool, lambda: self.hub.call(tool, fn))

    async def run_async(self, tool: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """``await fn()``; its dict, or an MCP tool error with our code."""
        try:
            result = await fn()
        except Exception as exc:  # noqa: BLE001 - mapped to a tool error, never a crash
            error = to_api_error(exc)
            self.hub.metrics.tool_calls.labels(tool, error.code).inc()
            return tool_error(error)
        self.hub.metrics.tool_calls.labels(tool, "ok").inc()
        return result


def tool_error(error: ApiError) -> CallToolResult:
    """An MCP tool error (``isError``) carrying ``{"ok": false, "error": CODE, ...}``."""
    body = error.body()
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(body))],
        structured_content=body,
        is_error=True,
    )


class _Server(MCPServer):
    """``MCPServer`` whose argument-validation failures use our ``validation_error``."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            # The SDK validates arguments against the tool's schema before the tool
            # runs; report that like the HTTP API does, naming the fields.
            if isinstance(exc, UnexpectedToolError) or not isinstance(exc.__cause__, pydantic.ValidationError):
                raise
            return tool_error(validation_error(pydantic_fields(exc.__cause__)))


def build_mcp_server(hub: Hub, *, http: bool, stdio_actor: Callable[[], Actor] | None = None) -> MCPServer:
    """The MCP server with every tool; ``http=True`` wires the bearer-token verifier."""
    if http:
        def actor() -> Actor:
            token = get_access_token()
            if token is None:  # the SDK's middleware refuses such requests first
                raise Unauthorized("missing bearer token")
            if AGENT_SCOPE in token.scopes:
                return Actor(agent_id=token.client_id, maintainer=False)
            return Actor(agent_id=None, maintainer=MAINTAINER_SCOPE in token.scopes, name=token.client_id)

        server: MCPServer = _Server(
            "icn-mcp",
            version=__version__,
            instructions=INSTRUCTIONS,
            token_verifier=StoreTokenVerifier(hub),
            # The SDK requires an issuer URL; this server issues its own tokens and
            # publishes no OAuth metadata (resource_server_url=None).
            auth=AuthSettings(issuer_url=_own_url(hub.settings), resource_server_url=None),
            log_level=hub.settings.log_level,  # type: ignore[arg-type]
        )
    else:
        if stdio_actor is None:
            raise ValueError("stdio needs stdio_actor: the local agent it acts for")
        actor = stdio_actor
        server = _Server("icn-mcp", version=__version__, instructions=INSTRUCTIONS,
                         log_level=hub.settings.log_level)  # type: ignore[arg-type]
    _register_tools(server, _Tools(hub, actor))
    return server


def _own_url(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port or 80}"


INSTRUCTIONS = (
    "icn-mcp agent HQ. Claim a task with claim_task, report progress with report_run "
    "(status in_progress renews the lease; completed or failed ends the attempt, passing "
    "the attempt number from the claim), record outputs with add_artifact. Errors come "
    'back as {"ok": false, "error": CODE, ...} with the codes of the HTTP API.'
)


def _register_tools(server: MCPServer, tools: _Tools) -> None:
    hub = tools.hub
    store = hub.store

    @server.tool()
    async def create_task(
        title: Annotated[str, Field(description="What to do, 1-200 characters")],
        description: str | None = None,
        depends_on: Annotated[list[Id] | None,
                              Field(description="Ids of tasks that must complete first")] = None,
        priority: Annotated[Priority, Field(description="Higher is claimed first")] = 0,
        max_attempts: MaxAttempts = 3,
        idempotency_key: Annotated[str | None, Field(description="Repeating a key returns the first task")] = None,
    ) -> dict[str, Any]:
        """Create a task; returns it (with its id)."""

        def create() -> dict[str, Any]:
            actor = tools.actor()
            return store.create_task(
                title,
                description,
                created_by=actor.agent_id or actor.name,
                depends_on=depends_on or (),
                priority=priority,
                max_attempts=max_attempts,
                idempotency_key=idempotency_key,
            ).to_dict()

        return await tools.run("create_task", create)

    @server.tool()
    async def claim_task(
        lease_s: Annotated[LeaseSeconds | None,
                           Field(description="Lease length in seconds (default: the server's)")] = None,
        wait_s: Annotated[WaitSeconds | None,
                          Field(description="Seconds to wait for work when nothing is claimable "
                                            "(default 0: answer at once)")] = None,
    ) -> dict[str, Any]:
        """Claim the next claimable task for this agent, waiting up to wait_s seconds for one.

        Returns task_id, title, lease_expires_at and attempt (pass the attempt to
        report_run), or {"error": "no_available_tasks"} when nothing is claimable.
        """

        async def claim() -> dict[str, Any]:
            claimed = await hub.claim(tools._agent, lease_s, hub.wait_seconds(wait_s))
            return {"error": "no_available_tasks"} if claimed is None else claim_shape(claimed)

        return await tools.run_async("claim_task", claim)

    @server.tool()
    async def report_run(
        task_id: TaskId,
        status: Literal["claimed", "in_progress", "completed", "failed"],
        notes: str | None = None,
        attempt: Annotated[int | None, Field(ge=0, le=MAX_SQL_INT,
                                             description="The attempt number from the claim")] = None,
    ) -> dict[str, Any]:
        """Report a run of a task this agent holds: in_progress renews the lease,
        completed releases dependents, failed reopens it until max_attempts."""

        def report() -> dict[str, Any]:
            store.report_run(task_id, tools._agent(), status, notes, attempt=attempt)
            hub.metrics.reports.labels(status).inc()
            return {"ok": True}

        return await tools.run("report_run", report)

    @server.tool()
    async def task_status(task_id: TaskId) -> dict[str, Any]:
        """A task's status, attempt, lease expiry, its agent (the claimer while claimed, else the latest run's) and the latest run's notes."""

        def status() -> dict[str, Any]:
            tools.actor()
            return status_shape(store.task_status(task_id).to_dict())

        return await tools.run("task_status", status)

    @server.tool()
    async def list_tasks(
        status: Literal["open", "claimed", "completed", "failed"] | None = None,
        limit: Annotated[int, Field(ge=1, le=LIST_LIMIT_MAX)] = 50,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None,
    ) -> dict[str, Any]:
        """Tasks in a stable order, one page at a time: {"tasks": [...], "next_cursor"}."""

        def page() -> dict[str, Any]:
            tools.actor()
            result = store.list_tasks(status=status, limit=limit, cursor=cursor)
            return {"tasks": [task.to_dict() for task in result.tasks], "next_cursor": result.next_cursor}

        return await tools.run("list_tasks", page)

    @server.tool()
    async def add_artifact(
        task_id: TaskId,
        kind: Annotated[str, Field(description="What the artifact is, e.g. file, log, report")],
        path: Annotated[str, Field(description="Where it is (a path or URL)")],
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record an artifact a task produced; returns it."""

        def add() -> dict[str, Any]:
            tools._agent()
            return store.add_artifact(task_id, kind, path, meta).to_dict()

        return await tools.run("add_artifact", add)

    @server.tool()
    async def db_info() -> dict[str, Any]:
        """Operators: the database's size, tables, indexes, migrations, last backup and health."""

        def info() -> dict[str, Any]:
            tools._operator()
            return hub.database_info()

        return await tools.run("db_info", info)

    @server.tool()
    async def create_backup() -> dict[str, Any]:
        """Operators: take a verified backup of the live database; returns where it is."""

        def backup() -> dict[str, Any]:
            tools._operator()
            return hub.create_backup()

        return await tools.run("create_backup", backup)
