"""Prometheus metrics of one server: request counters plus database state on scrape.

Counters and histograms are updated as requests are served; the state of the
database (agents, tasks by status, file sizes, busy retries, lock waits, backup age)
is read when ``/metrics`` is scraped, from ``store.stats()``, ``db.get_stats()`` and
the file system, so it is right even when other processes share the database. The
expensive part, ``store.stats()`` and the newest backup (:meth:`ServerMetrics.read_state`),
is read at most once per ``MCP_HEALTH_CACHE_S`` by the server (``server/cache.py``) and
passed to :meth:`ServerMetrics.render`; file sizes and ``db.get_stats()`` are read on
every scrape. Each server has its own registry, so several servers (tests) can live in
one process.

Labelled metrics are wrapped in :class:`CachedLabels`: a request looks its children up
in a plain dict instead of paying ``labels()`` (a lock, label checks and string
conversions) two or three times per request (issue 14).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ServerMetrics", "MetricsState", "CachedLabels", "CONTENT_TYPE"]

log = logging.getLogger("icn_mcp.server")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The *_created series double the output and nothing here reads them.
disable_created_metrics()

#: Transaction latencies of interest run from well under a millisecond to seconds.
TRANSACTION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TASK_STATUSES = ("open", "claimed", "completed", "failed")

#: What :meth:`ServerMetrics.read_state` reads: ``{"stats": store.stats() or {},
#: "last_backup_at": epoch seconds or None}``.
MetricsState = dict[str, Any]


class CachedLabels:
    """A labelled metric whose child for given label values is looked up once.

    ``labels(*values)`` returns the same child as the metric's own ``labels()``;
    every other attribute is the metric's. Only for label values from a fixed set
    (routes, methods, statuses, operations): the cache keeps every child it made,
    as the metric itself does.
    """

    __slots__ = ("metric", "_children")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            # Two threads may both get here; the metric returns the same child to both.
            child = self._children[values] = self.metric.labels(*values)
        return child

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)


class ServerMetrics:
    """The metrics of one server; :meth:`render` produces the Prometheus text."""

    def __init__(
        self,
        *,
        stats: Callable[[], dict[str, Any]],
        db_stats: Callable[[], dict[str, int]],
        db_sizes: Callable[[], dict[str, int]],
        last_backup_at: Callable[[], float | None] | None = None,
        replication: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = CachedLabels(
            Counter(
                "icn_mcp_http_requests",
                "HTTP requests served, by route, method and status.",
                ["route", "method", "status"],
                registry=self.registry,
            )
        )
        self.request_seconds = CachedLabels(
            Histogram(
                "icn_mcp_http_request_duration_seconds",
                "Time to serve an HTTP request, by route.",
                ["route"],
                registry=self.registry,
            )
        )
        self.claims = CachedLabels(
            Counter(
                "icn_mcp_claims",
                "Claim attempts, by result (claimed, empty).",
                ["result"],
                registry=self.registry,
            )
        )
        self.reclaims = Counter(
            "icn_mcp_leases_reclaimed",
            "Claims of a task that had been claimed before (its lease expired or an attempt failed).",
            registry=self.registry,
        )
        self.reports = CachedLabels(
            Counter(
                "icn_mcp_reports",
                "Run reports accepted, by status.",
                ["status"],
                registry=self.registry,
            )
        )
        self.tool_calls = CachedLabels(
            Counter(
                "icn_mcp_mcp_tool_calls",
                "MCP tool calls, by tool and result (ok or the error code).",
                ["tool", "result"],
                registry=self.registry,
            )
        )
        self.transaction_seconds = CachedLabels(
            Histogram(
                "icn_mcp_db_transaction_duration_seconds",
                "Time of one store call (one database transaction), by operation.",
                ["operation"],
                buckets=TRANSACTION_BUCKETS,
                registry=self.registry,
            )
        )
        self.health_cache_computations = CachedLabels(
            Counter(
                "icn_mcp_health_cache_computations",
                "Computations of the cached database part of /healthz/db and /metrics, by part "
                "(healthz_db, metrics): at most one per MCP_HEALTH_CACHE_S each, however many requests.",
                ["part"],
                registry=self.registry,
            )
        )
        for part in ("healthz_db", "metrics"):
            self.health_cache_computations.labels(part)
        # -- waiting claims (issue 11) --
        self.claim_waiters = Gauge(
            "icn_mcp_claim_waiters",
            "Claims waiting for work now (POST /api/task/claim or claim_task with wait_s).",
            registry=self.registry,
        )
        self.claim_wake_seconds = Histogram(
            "icn_mcp_claim_wake_seconds",
            "From noticing a change (a commit anywhere, or a lease due) to handing a waiting claim its task.",
            buckets=TRANSACTION_BUCKETS,
            registry=self.registry,
        )
        self.claim_empty_wakes = Counter(
            "icn_mcp_claim_empty_wakes",
            "Times the waiting claims were woken by a change and found nothing to claim.",
            registry=self.registry,
        )
        self._stats = stats
        self._db_sizes = db_sizes
        self._last_backup_at = last_backup_at
        self._state = _StateCollector(db_stats=db_stats, with_backup_age=last_backup_at is not None)
        self._replication = _ReplicationCollector(replication) if replication is not None else None

    def read_state(self) -> MetricsState:
        """The expensive part of a scrape: ``store.stats()``, the database's size and the
        newest backup's time (blocking; a failure is logged and leaves its part out, a
        scrape never fails)."""
        try:
            stats = self._stats()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail for it
            log.warning("metrics: reading store stats failed: %s", exc)
            stats = {}
        try:
            sizes = self._db_sizes()
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: reading the database size failed: %s", exc)
            sizes = {}
        last = None
        if self._last_backup_at is not None:
            try:
                last = self._last_backup_at()
            except Exception as exc:  # noqa: BLE001
                log.warning("metrics: reading the last backup failed: %s", exc)
        return {"stats": stats, "sizes": sizes, "last_backup_at": last}

    def render(self, state: MetricsState | None = None) -> bytes:
        """The Prometheus text exposition with ``state`` (default: :meth:`read_state` now).

        Reads the file sizes and ``db.get_stats()``: call it off the event loop.
        """
        if state is None:
            state = self.read_state()
        sources: list[Any] = [self.registry, self._state.bound(state)]
        if self._replication is not None:
            sources.append(self._replication)
        return generate_latest(_Scrape(*sources))


class _Scrape:
    """The metrics of several sources as one, for ``generate_latest``."""

    def __init__(self, *sources: Any) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source.collect()


class _StateCollector(Collector):
    """Database state: ``state`` (read at most once per interval) plus the cheap live reads."""

    def __init__(
        self,
        *,
        db_stats: Callable[[], dict[str, int]],
        with_backup_age: bool,
        state: MetricsState | None = None,
    ) -> None:
        self._db_stats = db_stats
        self._with_backup_age = with_backup_age
        self._snapshot: MetricsState = state or {}

    def bound(self, state: MetricsState) -> _StateCollector:
        """This collector reporting ``state``."""
        return _StateCollector(db_stats=self._db_stats, with_backup_age=self._with_backup_age, state=state)

    def describe(self) -> list[Metric]:
        return []  # read at collect time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        stats = self._snapshot.get("stats") or {}
        if "agents_active" in stats:
            yield GaugeMetricFamily(
                "icn_mcp_agents_active",
                "Agents with a token that is neither expired nor revoked.",
                value=stats["agents_active"],
            )
        tasks = GaugeMetricFamily("icn_mcp_tasks", "Tasks by status.", labels=["status"])
        for status in TASK_STATUSES:
            key = f"tasks_{status}"
            if key in stats:
                tasks.add_metric([status], stats[key])
        yield tasks
        for key, help_text in (
            ("tasks_total", "Tasks ever created."),
            ("runs_total", "Run reports ever recorded."),
            ("artifacts_total", "Artifacts ever recorded."),
        ):
            if key in stats:
                yield GaugeMetricFamily(f"icn_mcp_{key}", help_text, value=stats[key])

        sizes = self._snapshot.get("sizes") or {}
        for key, name, help_text in (
            ("database", "icn_mcp_db_size_bytes", "Size of the database in bytes (SQLite: its file)."),
            (
                "wal",
                "icn_mcp_db_wal_size_bytes",
                "Size of SQLite's write-ahead log in bytes (0 on PostgreSQL, whose WAL is the cluster's).",
            ),
        ):
            if key in sizes:
                yield GaugeMetricFamily(name, help_text, value=sizes[key])

        db = self._db_stats()
        for key, help_text in (
            ("transactions", "Write transactions committed by this server."),
            ("busy_retries", "Transactions retried because SQLite was busy or locked."),
            ("busy_exhausted", "Transactions that stayed busy through every retry."),
            ("lock_waits", "Waits for an in-process keyed lock."),
            (
                "write_lock_waits",
                "Write transactions that waited for another process's write lock (SQLite; "
                "the writes of the next 2 s then poll for it).",
            ),
            ("reconnects", "Connections reopened after a failed health check."),
            ("storage_full_errors", "Writes refused because the disk was full (answered 507 storage_full)."),
            (
                "storage_full_incidents",
                "Times the disk became full: each begins with a refused write "
                "and ends with the next write that succeeds.",
            ),
        ):
            if key in db:
                yield CounterMetricFamily(f"icn_mcp_db_{key}", help_text, value=db[key])
        for key, name, help_text in (
            ("open_connections", "icn_mcp_db_pool_connections", "PostgreSQL connections open in the pool."),
            ("pool_available", "icn_mcp_db_pool_available", "PostgreSQL connections idle in the pool."),
            (
                "pool_requests_waiting",
                "icn_mcp_db_pool_requests_waiting",
                "Requests waiting for a PostgreSQL connection from the pool.",
            ),
            ("pool_max", "icn_mcp_db_pool_max", "Most connections the pool may open (MCP_DB_POOL_MAX)."),
        ):
            if key in db and db.get("pool_max"):
                yield GaugeMetricFamily(name, help_text, value=db[key])
        if "storage_full" in db:
            yield GaugeMetricFamily(
                "icn_mcp_db_storage_full",
                "1 while writes are refused because the disk is full, else 0.",
                value=db["storage_full"],
            )

        if self._with_backup_age:
            last = self._snapshot.get("last_backup_at")
            age = GaugeMetricFamily(
                "icn_mcp_last_backup_age_seconds",
                "Seconds since the newest backup was taken (absent when there is none).",
            )
            if last is not None:
                age.add_metric([], max(0.0, time.time() - last))
            yield age


class _ReplicationCollector(Collector):
    """Litestream's state (db/replica.py), read live at each scrape; only with a replica."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield GaugeMetricFamily(
            "icn_mcp_replication_running",
            "1 while Litestream runs for this database: in this process, or (with serve --workers) "
            "in the worker holding the replicator lock, whose published status a standby worker reports; else 0.",
            value=1 if status.get("active", status["running"]) else 0,
        )
        yield GaugeMetricFamily(
            "icn_mcp_replication_lag_seconds",
            "How long the oldest change not yet in the replica has waited (0: caught up).",
            value=status["lag_s"],
        )
        yield CounterMetricFamily(
            "icn_mcp_replication_restarts", "Times Litestream died and was restarted.", value=status["restarts"]
        )
        yield CounterMetricFamily(
            "icn_mcp_replication_errors", "Errors Litestream logged, plus its unexpected exits.", value=status["errors"]
        )
