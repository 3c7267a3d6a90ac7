"""What the HTTP and MCP layers share: the database, the store, metrics, worker threads.

Every store call goes through :meth:`Hub.call`, which runs it in a worker thread (SQLite
calls block; the event loop must not) and times it for the transaction histogram.

The database part of ``/healthz/db`` and the store gauges of ``/metrics`` (routes with
no token and no rate limit) come from :class:`~icn_mcp.server.cache.SharedValue` caches:
computed at most once per ``MCP_HEALTH_CACHE_S``, one computation shared by
concurrent requests.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import anyio.to_thread

from icn_mcp.config import Settings
from icn_mcp.db import Database
from icn_mcp.db.backup import BACKUP_DIR_NAME, latest_backup
from icn_mcp.db.replica import Replicator
from icn_mcp.db.timestamps import parse_ts
from icn_mcp.server.cache import SharedValue
from icn_mcp.server.metrics import MetricsState, ServerMetrics
from icn_mcp.store import Store

__all__ = ["Hub"]

log = logging.getLogger("icn_mcp.server")

T = TypeVar("T")


class Hub:
    """One server's database, store and metrics.

    ``db`` defaults to a :class:`Database` opened (and migrated) from ``settings``;
    the hub closes only a database it opened itself.
    """

    def __init__(self, settings: Settings, *, db: Database | None = None) -> None:
        self.settings = settings
        self._owns_db = db is None
        self.db = db if db is not None else Database(settings.db_path, **settings.database_options())
        #: Litestream replicating the database when MCP_REPLICA_URL is set (db/replica.py).
        self.replicator: Replicator | None = None
        try:
            self.store = Store.from_settings(self.db, settings)
            if settings.replica_url:
                self.replicator = Replicator(
                    self.db.path, settings.replica_url,
                    sync_interval_s=settings.replica_sync_interval_s,
                    retention_s=settings.replica_retention_s,
                ).start()
        except BaseException:
            self.close()
            raise
        #: Where backups go, as for ``icn-mcp db backup``: MCP_BACKUP_DIR or $MCP_DB_DIR/backups.
        self.backup_dir: Path = settings.backup_dir or settings.db_dir / BACKUP_DIR_NAME
        self.metrics = ServerMetrics(
            stats=self.store.stats,
            db_stats=self.db.get_stats,
            db_path=self.db.path,
            last_backup_at=self.last_backup_at,
            replication=self.replicator.status if self.replicator is not None else None,
        )
        computations = self.metrics.health_cache_computations
        #: The ``database`` object of /healthz/db (counts every table: expensive).
        self.health_database: SharedValue[dict[str, Any]] = SharedValue(
            self._health_database, settings.health_cache_s,
            on_compute=computations.labels("healthz_db").inc,
        )
        #: ``store.stats()`` and the newest backup for /metrics.
        self.metrics_state: SharedValue[MetricsState] = SharedValue(
            lambda: self.call("metrics_state", self.metrics.read_state), settings.health_cache_s,
            on_compute=computations.labels("metrics").inc,
        )

    async def call(self, operation: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, timed as ``operation``."""
        histogram = self.metrics.transaction_seconds.labels(operation)

        def timed() -> T:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)

        return await anyio.to_thread.run_sync(timed)

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
        last = latest_backup(self.backup_dir)
        if last is None or not last.get("created_at"):
            return None
        return parse_ts(last["created_at"]).timestamp()

    def replication_status(self) -> dict[str, Any]:
        """The ``replication`` object of /healthz/db: ``{"enabled": False}`` without a replica."""
        if self.replicator is None:
            return {"enabled": False}
        return self.replicator.status()

    def close(self) -> None:
        """Close the database if the hub opened it (checkpoints the WAL), then stop
        Litestream: after the last write, so its final sync carries everything."""
        try:
            if self._owns_db:
                self.db.close()
        finally:
            if self.replicator is not None:
                self.replicator.stop()
