"""What the HTTP and MCP layers share: the database, the store, metrics, worker threads.

Every store call goes through :meth:`Hub.call`, which runs it in a worker thread (SQLite
calls block; the event loop must not) and times it for the transaction histogram: one
thread hop per request, with authentication done in the same hop as the store call.

Calls that write (:data:`WRITE_OPERATIONS`) run on writer threads. On SQLite there is
ONE, so writes run one at a time per process, in arrival order, on one writer
connection: threads of one process that contend for the write lock otherwise wait in
SQLite's busy handler, which sleeps 1, 2, 5, 10 ... 100 ms between tries, and those
sleeps were the p99 of every request (issue 14). The busy handler still arbitrates
between processes. On PostgreSQL, which writes in parallel (row locks, SKIP LOCKED
claims), there are as many writer threads as the pool has connections
(``MCP_DB_POOL_MAX``). Reads run on a pool of :data:`READ_THREADS`. Both are plain
``concurrent.futures`` executors, whose C queue hands a call to a thread more cheaply
than anyio's worker threads did; as with ``anyio.to_thread``, the caller's context
variables go with the call, and a caller cancelled while its call runs still waits
for it to finish.

The database part of ``/healthz/db`` and the store gauges of ``/metrics`` (routes with
no token and no rate limit) come from :class:`~icn_mcp.server.cache.SharedValue` caches:
computed at most once per ``MCP_HEALTH_CACHE_S``, one computation shared by
concurrent requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from icn_mcp.config import Settings, redact_url
from icn_mcp.db import BaseDatabase, Database, open_database
from icn_mcp.db.backup_files import backup_dir_for
from icn_mcp.db.base import ChangeFeed
from icn_mcp.db.process import backup_dir_from
from icn_mcp.db.replica import Replicator
from icn_mcp.db.timestamps import parse_ts, utc_now
from icn_mcp.errors import ConfigError
from icn_mcp.server import operations
from icn_mcp.server.auth import Principal
from icn_mcp.server.cache import SharedValue
from icn_mcp.server.metrics import MetricsState, ServerMetrics
from icn_mcp.server.ratelimit import RefusalLimiter
from icn_mcp.server.schemas import ClaimRequest
from icn_mcp.server.waiting import ClaimWaiters
from icn_mcp.store import Store, validation
from icn_mcp.store.models import Claim

__all__ = ["Hub"]

log = logging.getLogger("icn_mcp.server")

T = TypeVar("T")

#: Store calls whose commit may make a task claimable (a new task, a completed
#: dependency, a failed attempt reopened): waiting claims look at once.
_MAY_RELEASE_WORK = frozenset({"create_task", "report_run"})

#: Threads for calls that only read (anyio's default thread limit was the same).
READ_THREADS = 40

#: ``Hub.call`` operations that open a write transaction (HTTP handlers and MCP tools).
WRITE_OPERATIONS = frozenset(
    {
        "register_agent",
        "refresh_token",
        "create_task",
        "claim_next_task",
        "report_run",
        "cleanup_expired",
        "claim_task",
        "add_artifact",
    }
)


class Hub:
    """One server's database, store and metrics.

    ``db`` defaults to the database ``settings`` name (SQLite, or PostgreSQL with
    MCP_DB_URL), opened and migrated; the hub closes only a database it opened itself.
    """

    def __init__(self, settings: Settings, *, db: BaseDatabase | None = None) -> None:
        self.settings = settings
        self._readers = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="icn-mcp-reader")
        self._writer: ThreadPoolExecutor | None = None
        self._owns_db = db is None
        #: The event loop the waiting claims run on (known once one waits).
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Litestream replicating the database when MCP_REPLICA_URL is set (db/replica.py).
        self.replicator: Replicator | None = None
        #: What waiting claims watch: one feed (one connection) per server process.
        self.changes: ChangeFeed | None = None
        if db is None and settings.db_url is not None and settings.replica_url:
            # Litestream copies a SQLite file; PostgreSQL has its own replication.
            raise ConfigError(
                "MCP_REPLICA_URL",
                redact_url(settings.replica_url),
                "unset with MCP_DB_URL: Litestream replicates SQLite; use PostgreSQL's own streaming replication",
            )
        #: SQLite from MCP_DB_PATH, or PostgreSQL when MCP_DB_URL is set (opened, migrated).
        self.db: BaseDatabase = db if db is not None else open_database(settings)
        # SQLite has one writer at a time: one writer thread, so writes queue here in
        # arrival order instead of in the busy handler's sleeps. PostgreSQL writes in
        # parallel (row locks, SKIP LOCKED claims): as many as the pool has connections.
        writers = 1 if isinstance(self.db, Database) else settings.pool_max
        self._writer = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="icn-mcp-writer")
        try:
            self.store = Store.from_settings(self.db, settings)
            if settings.replica_url and isinstance(self.db, Database):
                self.replicator = Replicator(
                    self.db.path,
                    settings.replica_url,
                    sync_interval_s=settings.replica_sync_interval_s,
                    retention_s=settings.replica_retention_s,
                ).start()
            self.changes = self.db.change_feed(on_change=self._changed_elsewhere)
        except BaseException:
            self.close()
            raise
        #: Where backups go, as for ``icn-mcp db backup``: MCP_BACKUP_DIR, else on SQLite
        #: backups/ beside the database file (however its path was given).
        if settings.backup_dir is None and isinstance(self.db, Database):
            self.backup_dir: Path = backup_dir_for(self.db.path)
        else:
            self.backup_dir = backup_dir_from(settings)
        self.metrics = ServerMetrics(
            stats=self.store.stats,
            db_stats=self.db.get_stats,
            db_sizes=self.db.size_bytes,
            last_backup_at=self.last_backup_at,
            replication=self.replicator.status if self.replicator is not None else None,
        )
        #: Refused token refreshes per token (429 past the limit).
        self.refused_refreshes = RefusalLimiter()
        computations = self.metrics.health_cache_computations
        #: The ``database`` object of /healthz/db (counts every table: expensive).
        self.health_database: SharedValue[dict[str, Any]] = SharedValue(
            self._health_database,
            settings.health_cache_s,
            on_compute=computations.labels("healthz_db").inc,
        )
        #: Waiting claims (issue 11): one watcher of the database for every waiter.
        self.waiters = ClaimWaiters(
            data_version=self._data_version,
            fallback_poll_s=self.changes.fallback_poll_s if self.changes is not None else 0.0,
            next_lease_expiry=lambda: self.call("next_lease_expiry", self.store.next_lease_expiry),
            now=utc_now,
            poll_interval_s=settings.claim_poll_interval_s,
            on_wake=self.metrics.claim_wake_seconds.observe,
            on_empty_wake=self.metrics.claim_empty_wakes.inc,
        )
        self.metrics.claim_waiters.set_function(lambda: self.waiters.waiting)
        #: ``store.stats()`` and the newest backup for /metrics.
        self.metrics_state: SharedValue[MetricsState] = SharedValue(
            lambda: self.call("metrics_state", self.metrics.read_state),
            settings.health_cache_s,
            on_compute=computations.labels("metrics").inc,
        )

    def wait_seconds(self, wait_s: float | None) -> float:
        """A claim's ``wait_s`` checked against MCP_CLAIM_WAIT_MAX_S (None: do not wait)."""
        if wait_s is None:
            return 0.0
        return validation.wait_seconds(wait_s, self.settings.claim_wait_max_s)

    async def claim(
        self,
        principal: Callable[[], Principal],
        request: ClaimRequest,
        *,
        disconnected: Callable[[], Awaitable[Any]] | None = None,
    ) -> Claim | None:
        """The one claim path of HTTP and MCP: claim for the caller ``principal()``
        authorises, waiting up to ``request.wait_s`` seconds for work; counted.

        Authorisation and the first claim share one worker-thread hop. A waiting claim
        does not claim ahead of the claims already waiting on this server.
        """
        wait_s = self.wait_seconds(request.wait_s)
        claim_now = wait_s <= 0 or not self.waiters.queued

        def first() -> tuple[Principal, Claim | None]:
            caller = principal()
            return caller, (operations.claim_task(self, caller, request) if claim_now else None)

        _, claimed = await self.call("claim_next_task", first)
        if claimed is None and wait_s > 0:

            def claim_again() -> Claim | None:
                # The credential is checked again at each try: a token revoked (or an
                # agent gone in a restore) while waiting gets 401, never a task.
                return operations.claim_task(self, principal(), request)

            claimed = await self.waiters.wait(
                lambda: self.call("claim_next_task", claim_again), wait_s, disconnected=disconnected
            )
        operations.count_claim(self, claimed)
        return claimed

    def _changed_elsewhere(self) -> None:
        """The change feed learned of a commit (from its own thread): wake the watcher
        now rather than at its next poll."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.waiters.notify)

    async def _data_version(self) -> int | None:
        self._loop = asyncio.get_running_loop()
        # On the event loop: SQLite's is a shared-memory read that never waits (busy
        # timeout 0), PostgreSQL's a counter kept by the listening thread.
        return None if self.changes is None else self.changes.version()

    async def call(self, operation: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, timed as ``operation``."""
        histogram = self.metrics.transaction_seconds.labels(operation)

        def timed() -> T:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)

        executor = self._writer if operation in WRITE_OPERATIONS and self._writer is not None else self._readers
        result = await _in_thread(executor, contextvars.copy_context().run, timed)
        if operation in _MAY_RELEASE_WORK:
            self.waiters.notify()
        return result

    async def _health_database(self) -> dict[str, Any]:
        info = await self.call("database_info", self.database_info)
        migrations = info.get("migrations") or []
        return {
            "path": info["path"],
            "size_bytes": info["size_bytes"],
            "tables": [{"name": t["name"], "count": t["row_count"]} for t in info["tables"]],
            "last_migration": migrations[-1]["version"] if migrations else None,
            "total_migrations": len(migrations),
        }

    def database_info(self) -> dict[str, Any]:
        """The database diagnostics shared with ``icn-mcp db info`` (blocking)."""
        return self.db.get_database_info(backup_dir=self.backup_dir)

    def create_backup(self) -> dict[str, Any]:
        """A verified backup in the backup directory, pruned to MCP_BACKUP_KEEP (blocking)."""
        result = self.db.create_backup(
            backup_dir=self.backup_dir,
            keep=self.settings.backup_keep,
            check=self.settings.backup_check.lower(),
        )
        return result.to_dict()

    def last_backup_at(self) -> float | None:
        """When the newest backup was taken (epoch seconds), or None (blocking)."""
        last = self.db.latest_backup(self.backup_dir)
        if last is None or not last.get("created_at"):
            return None
        return parse_ts(last["created_at"]).timestamp()

    def replication_status(self) -> dict[str, Any]:
        """The ``replication`` object of /healthz/db: ``{"enabled": False}`` without a replica."""
        if self.replicator is None:
            return {"enabled": False}
        return self.replicator.status()

    def close(self) -> None:
        """Stop the threads (after the calls already running), close the database if
        the hub opened it (checkpoints the WAL), then stop Litestream: after the last
        write, so its final sync carries everything."""
        try:
            if self._writer is not None:
                self._writer.shutdown(wait=True, cancel_futures=True)
            self._readers.shutdown(wait=True, cancel_futures=True)
            if self.changes is not None:
                self.changes.close()
            if self._owns_db:
                self.db.close()
        finally:
            if self.replicator is not None:
                self.replicator.stop()


async def _in_thread(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on ``executor``, awaited.

    Cancelled before the call started: it never runs. Cancelled while it runs: wait
    for it anyway (its transaction commits or rolls back on its own, and the database
    must not be closed under it), then re-raise the cancellation.
    """
    future = executor.submit(fn, *args)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError as cancelled:
        while not future.done():  # it was running: wrap_future could not cancel it
            try:
                await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                continue
            except BaseException:  # noqa: BLE001 - its own outcome; we were cancelled
                break
        raise cancelled
