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
from typing import Callable

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer

from icn_mcp import __version__
from icn_mcp.config import Settings
from icn_mcp.server.http import create_app
from icn_mcp.server.hub import Hub
from icn_mcp.server.mcp import Actor, build_mcp_server

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

    def __call__(self) -> Actor:
        with self._lock:
            if self._agent_id is None:
                settings = self.hub.settings
                agent = self.hub.store.ensure_local_agent(
                    settings.stdio_agent_name, settings.stdio_agent_kind, __version__
                )
                self._agent_id = agent.id
                log.info("stdio: acting for local agent %s (%s)", agent.id, agent.name)
        return Actor(agent_id=self._agent_id, maintainer=True)


def serve_stdio(settings: Settings) -> None:
    """Serve MCP over stdin/stdout until EOF, SIGTERM or SIGINT; then close the database."""
    hub = Hub(settings)
    try:
        server = build_mcp_server(hub, http=False, stdio_actor=LocalAgent(hub))
        anyio.run(_run_stdio, server)
    finally:
        hub.close()
        log.info("database %s closed", hub.db.path)


async def _run_stdio(server: MCPServer) -> None:
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("stdio: %s received, shutting down", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return

        async def serve() -> None:
            await server.run_stdio_async()
            tg.cancel_scope.cancel()  # EOF on stdin: the client is gone

        tg.start_soon(stop_on_signal)
        tg.start_soon(serve)
