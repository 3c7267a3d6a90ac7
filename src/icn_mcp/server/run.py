"""Running the server: HTTP (uvicorn) or MCP over stdio, with graceful shutdown.

SIGTERM or SIGINT: stop accepting connections, let in-flight requests finish (at
most MCP_SHUTDOWN_TIMEOUT_S), then close the database, which checkpoints the WAL.

``serve_http(settings, workers=N)`` with N > 1 runs N worker processes on one
listening socket (the kernel hands each new connection to one of them). Each worker
is a whole server with its own database connections, metrics and rate limits; the
supervising process migrates the database once before starting them, announces the
URL when every worker accepts connections, replaces a worker that dies, and on
SIGTERM/SIGINT passes SIGTERM to every worker and waits for their graceful shutdown.
Workers ask the kernel for SIGTERM if the supervisor dies (even by kill -9), so none
is left orphaned.

uvicorn picks its fastest parts when installed: httptools for HTTP/1.1 parsing and
uvloop for the event loop (both dependencies of icn-mcp; issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Iterator

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import JSONRPCError, JSONRPCRequest, JSONRPCResponse

from icn_mcp import __version__
from icn_mcp.config import Settings, redact_url
from icn_mcp.db import open_database
from icn_mcp.errors import IcnMcpError
from icn_mcp.server.auth import Principal
from icn_mcp.server.http import create_app
from icn_mcp.server.hub import Hub
from icn_mcp.server.logs import configure_logging, flush_logging
from icn_mcp.server.mcp import build_mcp_server

__all__ = ["serve_http", "serve_stdio", "LocalAgent", "MAX_WORKERS"]

log = logging.getLogger("icn_mcp.server")

#: More worker processes than this is a mistake (each holds connections and threads).
MAX_WORKERS = 64
#: How long the supervisor waits for a worker to accept connections.
WORKER_START_TIMEOUT_S = 60.0
#: Beyond MCP_SHUTDOWN_TIMEOUT_S, how long a stopping worker may take to close its database.
WORKER_CLOSE_GRACE_S = 15.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def serve_http(settings: Settings, *, announce: Callable[[str], None] | None = None, workers: int = 1) -> None:
    """Serve the HTTP API and MCP at /mcp until SIGTERM/SIGINT.

    The socket is bound before serving, so port 0 picks a free port; ``announce``
    receives the URL once the server (every worker) accepts connections.
    """
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be 1-{MAX_WORKERS}, got {workers}")
    if workers > 1:
        _supervise(settings, workers, announce)
        return
    app = create_app(settings)
    hub: Hub = app.state.hub
    try:
        sock, url = _listen(settings)
    except OSError:
        hub.close()
        raise
    log.info("icn-mcp %s starting on %s with database %s", __version__, url, hub.db.target)
    try:
        _run_uvicorn(app, settings, sock, lambda: _announced(url, announce))
    finally:
        flush_logging()


def _listen(settings: Settings) -> tuple[socket.socket, str]:
    """The bound listening socket and its URL."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # that say they are TCP, and without that every keep-alive response waits
    # ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
    except OSError:
        sock.close()
        raise
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if family == socket.AF_INET6 else settings.host
    return sock, f"http://{host}:{port}"


def _run_uvicorn(app: Any, settings: Settings, sock: socket.socket, on_ready: Callable[[], None]) -> None:
    config = uvicorn.Config(
        app,
        log_config=None,  # the entry point configured logging
        access_log=False,  # ObserveMiddleware writes one structured line per request
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]  # a float works
        server_header=False,
        # httptools (a dependency) with one socket write per response
        # (server/transport.py), else uvicorn's choice; uvloop when installed.
        http=_http_protocol(),
        loop="auto",
    )
    server = _AnnouncingServer(config, on_ready, on_exit=app.state.hub.waiters.close)
    server.run(sockets=[sock])


def _http_protocol() -> Any:
    """The HTTP protocol class for uvicorn: httptools writing each response once."""
    try:
        from icn_mcp.server.transport import CoalescingHttpToolsProtocol
    except ImportError:  # httptools missing: uvicorn falls back to h11
        return "auto"
    return CoalescingHttpToolsProtocol


def _announced(url: str, announce: Callable[[str], None] | None) -> None:
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

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal that stopped it when this context exits, which
        # ends the process at once: write the queued log lines before that.
        with super().capture_signals():
            try:
                yield
            finally:
                flush_logging()


# -- several worker processes ------------------------------------------------------------


def _supervise(settings: Settings, workers: int, announce: Callable[[str], None] | None) -> None:
    """Run ``workers`` worker processes on one socket until SIGTERM/SIGINT."""
    # Migrate once here: start-up errors (a changed migration, a bad file) are reported
    # once, before any worker starts, and workers find the schema ready.
    open_database(settings).close()
    sock, url = _listen(settings)
    sock.listen(2048)
    stop = _SignalFlag()
    # fork on Linux: a worker starts in a fraction of a second instead of importing
    # everything again (several seconds on a busy machine). Safe here: the supervisor
    # holds no database connection (closed above), its only other thread is the log
    # writer, which flush_logging() leaves idle before each fork, and each worker
    # resets its signal handlers and logging first thing.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    level = logging.getLogger().getEffectiveLevel()
    target = redact_url(settings.db_url) if settings.db_url is not None else str(settings.db_path)
    log.info("icn-mcp %s starting %d workers on %s with database %s", __version__, workers, url, target)
    pool = [_Worker(context, n, settings, sock, level) for n in range(workers)]
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        for worker in pool:
            if not worker.wait_ready(deadline, stop):
                if stop.signum is not None:
                    break
                raise IcnMcpError(
                    f"server worker {worker.index} {worker.failure()} before accepting connections; "
                    "its error is in the log above"
                )
        if stop.signum is None:
            _announced(url, announce)
            _keep_running(pool, stop)
    finally:
        _stop_workers(pool, settings)
        sock.close()
        log.info("all %d workers stopped", workers)
        flush_logging()
        stop.restore()
    if stop.signum is not None:
        # End by the signal, as a single uvicorn process does (exit status 143 / 130).
        signal.raise_signal(stop.signum)


class _SignalFlag:
    """SIGTERM and SIGINT noted instead of acted on, for the supervisor's loop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {sig: signal.signal(sig, self._note) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _note(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            log.info("%s received, stopping the workers", signal.Signals(signum).name)
        self.signum = self.signum or signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Worker:
    """One worker process and the pipe on which it says it is ready."""

    def __init__(self, context: Any, index: int, settings: Settings, sock: socket.socket, level: int) -> None:
        self.index = index
        self._args = (context, settings, sock, level)
        self.ready = False
        self._start()

    def _start(self) -> None:
        context, settings, sock, level = self._args
        self._ready_rx, ready_tx = context.Pipe(duplex=False)
        flush_logging()
        self.process = context.Process(
            target=_worker_main,
            args=(self.index, settings, sock, level, ready_tx, os.getpid()),
            name=f"icn-mcp-worker-{self.index}",
            daemon=False,
        )
        # Signals wait until the worker has its own handlers (it unblocks them then):
        # a SIGTERM meant for it must not reach the supervisor's handler copied by fork.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        ready_tx.close()
        self.ready = False

    def wait_ready(self, deadline: float, stop: _SignalFlag) -> bool:
        while stop.signum is None and time.monotonic() < deadline:
            ready = multiprocessing.connection.wait([self._ready_rx, self.process.sentinel], timeout=0.2)
            if self._ready_rx in ready:
                try:
                    self.ready = bool(self._ready_rx.recv())
                except EOFError:
                    return False  # exited without a word
                return self.ready
            if self.process.sentinel in ready:
                return False
        return False

    def failure(self) -> str:
        code = self.process.exitcode
        return "did not start in time" if code is None else f"exited with status {code}"

    def restart(self) -> None:
        self._ready_rx.close()
        self._start()


def _keep_running(pool: list[_Worker], stop: _SignalFlag) -> None:
    """Wait for a signal; replace any worker that dies meanwhile."""
    while stop.signum is None:
        sentinels = {worker.process.sentinel: worker for worker in pool}
        for sentinel in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
            worker = sentinels[sentinel]
            if stop.signum is not None:
                return
            log.warning(
                "server worker %d (pid %s) exited with status %s; starting another",
                worker.index,
                worker.process.pid,
                worker.process.exitcode,
            )
            worker.restart()
            if not worker.wait_ready(time.monotonic() + WORKER_START_TIMEOUT_S, stop) and stop.signum is None:
                raise IcnMcpError(f"server worker {worker.index} {worker.failure()} when restarted")


def _stop_workers(pool: list[_Worker], settings: Settings) -> None:
    """SIGTERM to every worker, then wait for each graceful shutdown (kill after the grace)."""
    for worker in pool:
        if worker.process.is_alive():
            os.kill(worker.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_timeout_s + WORKER_CLOSE_GRACE_S
    for worker in pool:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            log.error("server worker %d did not stop in time; killing it", worker.index)
            worker.process.kill()
            worker.process.join(5.0)


def _worker_main(
    index: int, settings: Settings, sock: socket.socket, level: int, ready: Any, supervisor_pid: int
) -> None:
    """A worker process: the whole server on the supervisor's socket."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the supervisor's handlers
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent(supervisor_pid)
    configure_logging(level)
    try:
        app = create_app(settings)
    except BaseException:
        log.exception("server worker %d could not start", index)
        flush_logging()
        raise SystemExit(1) from None

    def on_ready() -> None:
        log.info("server worker %d (pid %d) accepting connections", index, os.getpid())
        ready.send(True)
        ready.close()

    try:
        _run_uvicorn(app, settings, sock, on_ready)
    finally:
        flush_logging()


def _die_with_parent(supervisor_pid: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies, so that no worker is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            pass
    if os.getppid() != supervisor_pid:  # it died before we asked
        raise SystemExit(1)


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
        log.info("database %s closed", hub.db.target)


async def _run_stdio(server: MCPServer, finish_timeout_s: float) -> None:
    stop_reading = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    if stop_reading.cancel_called:  # a second signal: stop now
                        tg.cancel_scope.cancel()
                        return
                    log.info(
                        "stdio: %s received, answering the requests in flight, then shutting down",
                        signal.Signals(signum).name,
                    )
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
                            # A signal interrupts the wait for input, never a hand-over:
                            # cancelled inside send(), a request the server had already
                            # taken would miss the note below, the server's input would
                            # close under it, and its work would be done unanswered.
                            with anyio.CancelScope(shield=True):
                                await to_server.send(item)
                            # Noted once the server has it (no await in between, so its
                            # response cannot be written before this).
                            if isinstance(item, SessionMessage) and isinstance(item.message, JSONRPCRequest):
                                if not pending:
                                    all_answered = anyio.Event()
                                pending.add(item.message.id)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the server stopped reading: nothing left to hold back
                if reading.cancel_called:
                    # A signal stopped reading. Input that still comes is not served,
                    # but it is taken off the transport, so that it sees the end of
                    # input when the client closes stdin and the process ends then,
                    # not at the shutdown deadline.
                    pumps.start_soon(discard_input)
                # End of input or a signal: waiting claims answer no_available_tasks at
                # once, as on SIGTERM over HTTP, instead of holding the shutdown up.
                hub = getattr(server, "hub", None)
                if hub is not None:
                    hub.waiters.close()
                with anyio.move_on_after(finish_timeout_s):
                    await all_answered.wait()
                if pending:
                    log.warning(
                        "stdio: end of input with %d request(s) unanswered after %ss; stopping",
                        len(pending),
                        finish_timeout_s,
                    )

        async def discard_input() -> None:
            async for _ in stdin_messages:
                pass

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
