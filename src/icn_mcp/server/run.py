"""Running the server: HTTP (uvicorn) or MCP over stdio, with graceful shutdown.

SIGTERM or SIGINT: stop accepting connections, let in-flight requests finish (at
most MCP_SHUTDOWN_TIMEOUT_S), then close the database, which checkpoints the WAL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from types import FrameType
from typing import Any, Callable

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import JSONRPCError, JSONRPCRequest, JSONRPCResponse

from icn_mcp import __version__
from icn_mcp.config import Settings
from icn_mcp.server.http import create_app
from icn_mcp.server.hub import Hub
from icn_mcp.server.auth import Principal
from icn_mcp.server.mcp import build_mcp_server

__all__ = ["serve_http", "serve_stdio", "LocalAgent"]

log = logging.getLogger("icn_mcp.server")


def serve_http(settings: Settings, *, announce: Callable[[str], None] | None = None) -> None:
    """Serve the HTTP API and MCP at /mcp until SIGTERM/SIGINT.

    The socket is bound before serving, so port 0 picks a free port; ``announce``
    receives the URL once the server accepts connections.
    """
    app = create_app(settings)
    hub: Hub = app.state.hub
    try:
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets
        # that say they are TCP, and without that every keep-alive response waits
        # ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
    except OSError:
        hub.close()
        raise
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if family == socket.AF_INET6 else settings.host
    url = f"http://{host}:{port}"

    config = uvicorn.Config(
        app,
        log_config=None,  # the entry point configured logging
        access_log=False,  # ObserveMiddleware writes one structured line per request
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        server_header=False,
    )
    server = _AnnouncingServer(
        config, lambda: _announced(url, hub, announce), on_exit=hub.waiters.close
    )
    log.info("icn-mcp %s starting on %s with database %s", __version__, url, hub.db.path)
    server.run(sockets=[sock])


def _announced(url: str, hub: Hub, announce: Callable[[str], None] | None) -> None:
    log.info("serving on %s (MCP at %s/mcp)", url, url)
    if announce is not None:
        announce(url)


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that says when it is ready to accept connections."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_ready: Callable[[], None],
        *,
        on_exit: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            self._on_ready()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # SIGTERM/SIGINT: waiting claims end at once with no_available_tasks, so that
        # the graceful shutdown is not held up by them (issue 11).
        super().handle_exit(sig, frame)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_exit)


class LocalAgent:
    """The agent ``serve --stdio`` acts for: registered on first use, the same one after.

    The process can open the database file itself, so it is an operator as well and
    needs no credential: :meth:`Store.ensure_local_agent` finds the local agent named
    by MCP_STDIO_AGENT_NAME, or registers it once.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._lock = threading.Lock()
        self._agent_id: str | None = None

    def __call__(self) -> Principal:
        with self._lock:
            if self._agent_id is None:
                settings = self.hub.settings
                agent = self.hub.store.ensure_local_agent(
                    settings.stdio_agent_name, settings.stdio_agent_kind, __version__
                )
                self._agent_id = agent.id
                log.info("stdio: acting for local agent %s (%s)", agent.id, agent.name)
        # Operator rights too: whoever starts it can open the database file anyway.
        return Principal(agent_id=self._agent_id, maintainer_role="local")


def serve_stdio(settings: Settings) -> None:
    """Serve MCP over stdin/stdout until EOF, SIGTERM or SIGINT; then close the database.

    At EOF, the requests already read are answered first (at most
    MCP_SHUTDOWN_TIMEOUT_S): a client may write its requests and close stdin at once.
    """
    hub = Hub(settings)
    try:
        server = build_mcp_server(hub, http=False, stdio_actor=LocalAgent(hub))
        anyio.run(_run_stdio, server, settings.shutdown_timeout_s)
    finally:
        hub.close()
        log.info("database %s closed", hub.db.path)


async def _run_stdio(server: MCPServer, finish_timeout_s: float) -> None:
    stop_reading = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    if stop_reading.cancel_called:  # a second signal: stop now
                        tg.cancel_scope.cancel()
                        return
                    log.info("stdio: %s received, answering the requests in flight, then "
                             "shutting down", signal.Signals(signum).name)
                    stop_reading.cancel()
                    # In-flight requests get finish_timeout_s, then everything stops.
                    tg.cancel_scope.deadline = anyio.current_time() + finish_timeout_s + 1

        async def serve() -> None:
            await _serve_stdio_answering_before_eof(server, finish_timeout_s, stop_reading)
            tg.cancel_scope.cancel()  # EOF on stdin, every request answered: done

        tg.start_soon(stop_on_signal)
        tg.start_soon(serve)


async def _serve_stdio_answering_before_eof(
    server: MCPServer, finish_timeout_s: float, reading: anyio.CancelScope
) -> None:
    """``server.run_stdio_async()``, except that EOF on stdin reaches the server only
    once every request read before it has been answered.

    The SDK's dispatcher cancels its in-flight handlers at EOF, so a client that
    wrote its requests and closed stdin right away lost the responses of those still
    running, although their work (a created task) was done (issue 9 item 23). Two
    pumps stand between the stdio transport and the server: requests read are noted
    by id, responses written cross them off, and at EOF the input pump waits for the
    last one (at most ``finish_timeout_s``) before it closes the server's input.
    Cancelling ``reading`` (a signal) stops reading as if EOF had come.
    """
    lowlevel = server._lowlevel_server  # what run_stdio_async itself runs on these streams
    to_server, server_reads = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    server_writes, from_server = anyio.create_memory_object_stream[SessionMessage](0)
    pending: set[Any] = set()
    all_answered = anyio.Event()
    all_answered.set()

    async with stdio_server() as (stdin_messages, stdout_messages):

        async def pump_in() -> None:
            nonlocal all_answered
            async with to_server:
                with reading:
                    try:
                        async for item in stdin_messages:
                            await to_server.send(item)
                            # Noted once the server has it (no await in between, so its
                            # response cannot be written before this).
                            if isinstance(item, SessionMessage) and isinstance(item.message, JSONRPCRequest):
                                if not pending:
                                    all_answered = anyio.Event()
                                pending.add(item.message.id)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the server stopped reading: nothing left to hold back
                with anyio.move_on_after(finish_timeout_s):
                    await all_answered.wait()
                if pending:
                    log.warning(
                        "stdio: end of input with %d request(s) unanswered after %ss; stopping",
                        len(pending), finish_timeout_s,
                    )

        async def pump_out() -> None:
            async with stdout_messages, from_server:
                async for item in from_server:
                    await stdout_messages.send(item)
                    message = item.message
                    if isinstance(message, (JSONRPCResponse, JSONRPCError)) and message.id in pending:
                        pending.discard(message.id)
                        if not pending:
                            all_answered.set()

        async with anyio.create_task_group() as pumps:
            pumps.start_soon(pump_in)
            pumps.start_soon(pump_out)
            await lowlevel.run(server_reads, server_writes, lowlevel.create_initialization_options())
