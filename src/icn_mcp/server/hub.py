"""What the HTTP and MCP layers share: the database, the store, metrics, worker threads.

Every store call goes through :meth:`Hub.call`, which runs it in a worker thread (SQLite
calls block; the event loop must not) and times it for the transaction histogram.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Callable, TypeVar

import anyio.to_thread

from icn_mcp.config import Settings
from icn_mcp.db import Database
from icn_mcp.server.metrics import ServerMetrics
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
        try:
            self.store = Store.from_settings(self.db, settings)
        except BaseException:
            self.close()
            raise
        self.metrics = ServerMetrics(
            stats=self.store.stats,
            db_stats=self.db.get_stats,
            db_path=self.db.path,
            last_backup_at=self.last_backup_at,
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

    def database_info(self) -> dict[str, Any]:
        """The database diagnostics shared with ``icn-mcp db info`` (blocking)."""
        return self.db.get_database_info()

    def last_backup_at(self) -> float | None:
        """When the newest backup was taken (epoch seconds), or None (blocking)."""
        last = self.database_info().get("last_backup")
        if not last or not last.get("created_at"):
            return None
        created = str(last["created_at"]).replace("Z", "+00:00")
        return datetime.fromisoformat(created).timestamp()

    def close(self) -> None:
        """Close the database if the hub opened it (checkpoints the WAL)."""
        if self._owns_db:
            self.db.close()
