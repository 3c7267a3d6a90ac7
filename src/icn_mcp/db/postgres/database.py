"""PostgresDatabase: a psycopg_pool of checked connections, transactions and retry.

Connections come from a :class:`psycopg_pool.ConnectionPool` in autocommit mode
(this module issues ``BEGIN``/``COMMIT``), each checked before it is handed out, so a
server restart or ``pg_terminate_backend`` costs no request: dead connections are
dropped and replaced. The check costs no round trip (:func:`_check_idle`): a
server that ends an idle connection says so on its socket (the terminating error, or
the end of the stream), so only a connection whose socket has something to read is
asked with an empty query (``ConnectionPool.check_connection``). Sizes and lifetimes
come from ``MCP_DB_POOL_*``.

Write transactions are ``SERIALIZABLE`` (the same guarantee as SQLite's single
writer: code written for one behaves the same on the other). ``run_in_transaction``
retries the whole call with exponential backoff and jitter on
``serialization_failure`` (40001), ``deadlock_detected`` (40P01) and on a connection
lost before COMMIT was sent (nothing was committed, so running it again is safe). A
connection lost while COMMIT was in flight is ambiguous: the server may have
committed. That raises :class:`~icn_mcp.errors.CommitUnknown` and is never retried.

Timestamps (``TIMESTAMPTZ``) are read back as the same fixed-width UTC text the
SQLite backend stores (``2026-01-01T00:00:00.000000Z``), so callers see one format.
"""

from __future__ import annotations

import logging
import random
import select
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from icn_mcp.config import redact_url
from icn_mcp.db import migration_files as _migrations
from icn_mcp.db.base import BaseDatabase
from icn_mcp.db.keyed_locks import KeyedLocks
from icn_mcp.db.leases import AdvisoryLease
from icn_mcp.db.postgres import backup as _backup
from icn_mcp.db.postgres import driver
from icn_mcp.db.postgres import info as _info
from icn_mcp.db.postgres import migrations as _pg_migrations
from icn_mcp.db.postgres.listen import WorkListener
from icn_mcp.db.postgres.locks import PostgresLeaseSQL
from icn_mcp.db.timestamps import format_ts
from icn_mcp.errors import (
    BusyError,
    CommitUnknown,
    DatabaseClosed,
    DatabaseError,
    DatabaseUnavailable,
)

__all__ = ["PostgresDatabase", "RETRY_SQLSTATES"]

log = logging.getLogger("icn_mcp.db")

T = TypeVar("T")

#: serialization_failure, deadlock_detected: the server rolled back; safe to re-run.
RETRY_SQLSTATES = frozenset({"40001", "40P01"})

#: Isolation levels a write transaction may ask for; SERIALIZABLE is the default.
ISOLATION_LEVELS = {
    "serializable": "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "repeatable read": "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "read committed": "BEGIN ISOLATION LEVEL READ COMMITTED",
}

DEFAULT_RETRIES = 8
DEFAULT_RETRY_BASE_DELAY_S = 0.01
DEFAULT_RETRY_MAX_DELAY_S = 2.0


class _ConnectionLost(Exception):
    """The connection died before COMMIT was sent: nothing was committed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _check_idle(conn: Any) -> None:
    """The pool's pre-use check, without a round trip in the usual case.

    An idle connection in autocommit mode receives nothing from the server unless the
    server ended it (``pg_terminate_backend``, a restart: an error message and the end
    of the stream) or has something to report (a changed setting). Only then is the
    connection asked with an empty query, which raises when it is dead: the pool then
    drops it, counts it in ``connections_lost`` and hands out another.
    """
    if conn.closed or conn.broken:
        import psycopg

        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        from psycopg_pool import ConnectionPool

        ConnectionPool.check_connection(conn)


def _make_loader(psycopg: Any) -> Any:
    from psycopg.types.datetime import TimestamptzLoader

    class UtcTextLoader(TimestamptzLoader):
        """TIMESTAMPTZ as icn-mcp's stored text format (see icn_mcp.db.timestamps).

        The server's text in UTC (``2026-01-02 03:04:05.6+00``, ISO DateStyle, a
        session TimeZone of UTC) is rewritten as it is, without a datetime in between:
        a claim reads four timestamps. Any other shape (another time zone, another
        DateStyle, a year past 9999) goes through the datetime.
        """

        def load(self, data: Any) -> str:  # type: ignore[override]
            raw = bytes(data)
            if (
                21 < len(raw) < 30
                and raw[-3:] == b"+00"
                and raw[4] == raw[7] == 45  # '-'
                and raw[10] == 32  # ' '
                and raw[13] == raw[16] == 58  # ':'
                and (len(raw) == 22 or raw[19] == 46)  # no fraction, or '.'
            ):
                text = raw.decode("ascii")
                return f"{text[:10]}T{text[11:19]}.{text[20:-3]:0<6}Z"
            return format_ts(super().load(data))

    return UtcTextLoader


#: How long the pool retries reopening a lost connection before leaving it to the next
#: request (see the pool's construction below).
RECONNECT_TIMEOUT_S = 15.0


class PostgresDatabase(BaseDatabase):
    """One PostgreSQL database shared by any number of processes and hosts.

    ``url`` is a ``postgresql://`` connection string (its password is never shown:
    :attr:`target` is the URL without it). Opening applies pending migrations
    (``migrate=False`` skips that). All other arguments are keyword-only.
    """

    backend = "postgresql"
    #: The statements of advisory locks on this backend (see icn_mcp.db.leases).
    lease_sql = PostgresLeaseSQL()

    def __init__(
        self,
        url: str,
        *,
        migrations_dir: str | Path | None = None,
        migrate: bool = True,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_max_lifetime_s: float = 3600.0,
        pool_max_idle_s: float = 600.0,
        pool_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        retries: int = DEFAULT_RETRIES,
        retry_base_delay_s: float = DEFAULT_RETRY_BASE_DELAY_S,
        retry_max_delay_s: float = DEFAULT_RETRY_MAX_DELAY_S,
        allow_missing_migrations: bool = False,
        allow_out_of_order_migrations: bool = False,
        application_name: str = "icn-mcp",
    ) -> None:
        self._psycopg, pool_class = driver.load()
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise DatabaseError(
                f"pool_min={pool_min!r}, pool_max={pool_max!r} are not valid: "
                "expected 0 <= pool_min <= pool_max and pool_max >= 1"
            )
        self.url = url
        self._target = redact_url(url)
        self.migrations_dir = (
            Path(migrations_dir)
            if migrations_dir is not None
            else _pg_migrations.migrations_dir_for(_migrations.default_migrations_dir())
        )
        self.pool_timeout_s = pool_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.retry_base_delay_s = retry_base_delay_s
        self.retry_max_delay_s = retry_max_delay_s
        self.allow_missing_migrations = allow_missing_migrations
        self.allow_out_of_order_migrations = allow_out_of_order_migrations
        self.application_name = application_name
        self._loader = _make_loader(self._psycopg)
        self._closed = False
        self._locks = KeyedLocks()
        self._stats_lock = threading.Lock()
        self._stats = {
            "transactions": 0,
            "busy_retries": 0,
            "busy_exhausted": 0,
            "connections_opened": 0,
            "reconnects": 0,
            "health_checks": 0,
            "health_check_failures": 0,
            "lock_waits": 0,
            "connection_retries": 0,
            "commit_unknown": 0,
        }
        self._pool = pool_class(
            url,
            min_size=pool_min,
            max_size=pool_max,
            max_lifetime=pool_max_lifetime_s,
            max_idle=pool_max_idle_s,
            timeout=pool_timeout_s,
            kwargs=self._connect_kwargs(),
            configure=self._configure,
            check=_check_idle,
            name="icn-mcp",
            # A lost connection is reopened with psycopg_pool's backoff (1, 2, 4, 8 s)
            # for this long, then given up; the next request that finds no
            # connection opens one at once. Without a bound the backoff doubles for
            # the default 5 minutes, and after an outage of a few minutes requests
            # got 503 for minutes more although PostgreSQL was back.
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            open=False,
        )
        try:
            self._pool.open(wait=pool_min > 0, timeout=connect_timeout_s)
        except Exception as exc:
            self._pool.close(timeout=0)
            self._closed = True
            raise DatabaseUnavailable(self._target, f"no connection within {connect_timeout_s:g} s ({exc})") from None
        try:
            if migrate:
                self.migrate()
        except BaseException:
            self.close()
            raise

    # -- connections ----------------------------------------------------------------

    @property
    def target(self) -> str:
        """The connection URL without its password."""
        return self._target

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "connect_timeout": max(1, int(self.connect_timeout_s)),
            "application_name": self.application_name,
            **driver.DEAD_PEER_SETTINGS,
        }

    def _configure(self, conn: Any) -> None:
        """Run once on every new connection the pool opens."""
        conn.adapters.register_loader("timestamptz", self._loader)
        self._count("connections_opened")

    def _direct_connection(self) -> Any:
        """A connection of its own, outside the pool (session-level locks need one)."""
        try:
            conn = self._psycopg.connect(self.url, **self._connect_kwargs())
        except self._psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                self._target, str(exc).strip().splitlines()[0] if str(exc).strip() else exc
            ) from None
        self._configure(conn)
        return conn

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection in autocommit mode, returned to the pool afterwards."""
        if self._closed:
            raise DatabaseClosed(f"database {self._target} is closed")
        from psycopg_pool import PoolTimeout

        try:
            cm = self._pool.connection(timeout=self.pool_timeout_s)
            conn = cm.__enter__()
        except PoolTimeout as exc:
            raise DatabaseUnavailable(self._target, f"no connection within {self.pool_timeout_s:g} s ({exc})") from None
        try:
            yield conn
        except BaseException as exc:
            cm.__exit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, self._psycopg.Error) and conn.broken:
                # The connection died under a read (or any use that is not a write
                # transaction, which says itself whether it may be re-run): the
                # database is unreachable, as when no connection can be had.
                detail = str(exc).strip().splitlines()
                raise DatabaseUnavailable(self._target, detail[0] if detail else type(exc).__name__) from exc
            raise
        cm.__exit__(None, None, None)

    # -- transactions ---------------------------------------------------------------

    def _begin_write(self, conn: Any, isolation: str) -> None:
        if isolation not in ISOLATION_LEVELS:
            raise DatabaseError(f"isolation={isolation!r} is not valid: expected one of {', '.join(ISOLATION_LEVELS)}")
        conn.execute(ISOLATION_LEVELS[isolation])

    @contextmanager
    def write_transaction(self, *, isolation: str = "serializable") -> Iterator[Any]:
        """``BEGIN ISOLATION LEVEL SERIALIZABLE`` ... ``COMMIT``; rolled back on error.

        Not retried (a ``with`` block cannot be re-run): use :meth:`run_in_transaction`.
        A connection lost during COMMIT raises :class:`CommitUnknown`.
        """
        with self.connection() as conn:
            try:
                self._begin_write(conn, isolation)
                yield conn
            except BaseException:
                self._rollback(conn)
                raise
            self._commit(conn)

    @contextmanager
    def read_transaction(self) -> Iterator[Any]:
        """A consistent, read-only snapshot (``REPEATABLE READ READ ONLY``)."""
        with self.connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            finally:
                self._rollback(conn)

    def run_in_transaction(
        self, fn: Callable[[Any], T], *, retries: int | None = None, isolation: str = "serializable"
    ) -> T:
        """``fn(conn)`` in a serializable transaction, re-run on transient failures.

        Re-run (with backoff and jitter, at most ``retries`` times) on
        serialization_failure, deadlock_detected, and a connection lost before COMMIT
        was sent; then :class:`BusyError` (conflicts) or :class:`DatabaseUnavailable`
        (connections). Never re-run after a connection was lost during COMMIT:
        :class:`CommitUnknown`. ``fn`` may run more than once, so it must do nothing
        but database work that the rollback undoes.

        ``isolation="read committed"`` is for work that is correct statement by
        statement, such as one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
        LOCKED)``: under SERIALIZABLE, concurrent claimers of different rows still
        conflict on the index range they read (bench/bench_pg_transactions.py).
        """
        if isolation not in ISOLATION_LEVELS:  # before taking a connection
            self._begin_write(None, isolation)
        tries = 0
        budget = self.retries if retries is None else retries
        while True:
            try:
                return self._transaction_once(fn, isolation)
            except _ConnectionLost as lost:
                if tries >= budget:
                    raise DatabaseUnavailable(self._target, lost.cause) from lost.cause
                self._count("connection_retries")
                log.warning("connection to %s lost before COMMIT (%s); retrying", self._target, lost.cause)
                tries = self._sleep(tries, budget, lost.cause)
            except self._psycopg.Error as exc:
                tries = self._after_conflict(exc, tries, budget)

    def run_statement(self, fn: Callable[[Any], T], *, retries: int | None = None) -> T:
        """``fn(conn)`` running exactly one statement in autocommit: its own transaction.

        One round trip where :meth:`run_in_transaction` needs three (``BEGIN``, the
        statement, ``COMMIT``); for work that is one statement, such as a ``FOR UPDATE
        SKIP LOCKED`` claim. The statement has committed when ``fn`` returns. Re-run
        (backoff and jitter, at most ``retries`` times) on serialization_failure and
        deadlock_detected, which the server rolled back. A connection lost while the
        statement was in flight raises :class:`CommitUnknown` and is never re-run: the
        server may have committed it. ``fn`` must run one statement and nothing else.
        """
        tries = 0
        budget = self.retries if retries is None else retries
        while True:
            try:
                with self.connection() as conn:
                    try:
                        result = fn(conn)
                    except self._psycopg.Error as exc:
                        if conn.broken:
                            self._count("commit_unknown")
                            raise CommitUnknown(self._target, exc) from exc
                        raise
                self._count("transactions")
                return result
            except self._psycopg.Error as exc:
                tries = self._after_conflict(exc, tries, budget)

    def _after_conflict(self, exc: Any, tries: int, budget: int) -> int:
        """After a failed try: re-raise ``exc`` unless the server rolled it back as a
        conflict (serialization_failure, deadlock_detected) and the budget allows
        another try (then :class:`BusyError` when it does not); the new count of tries,
        once the backoff has passed."""
        if exc.sqlstate not in RETRY_SQLSTATES:
            raise exc
        if tries >= budget:
            self._count("busy_exhausted")
            raise BusyError(tries + 1, exc) from exc
        self._count("busy_retries")
        return self._sleep(tries, budget, exc)

    def _sleep(self, tries: int, budget: int, cause: BaseException) -> int:
        tries += 1
        delay = min(self.retry_max_delay_s, self.retry_base_delay_s * (2 ** (tries - 1)))
        log.debug("transaction failed (%s); retry %d/%d in %.3fs", cause, tries, budget, delay)
        time.sleep(delay / 2 + random.uniform(0, delay / 2))
        return tries

    def _transaction_once(self, fn: Callable[[Any], T], isolation: str) -> T:
        with self.connection() as conn:
            try:
                self._begin_write(conn, isolation)
                result = fn(conn)
            except Exception as exc:
                if conn.broken:
                    raise _ConnectionLost(exc) from exc
                self._rollback(conn)
                raise
            except BaseException:
                self._rollback(conn)
                raise
            self._commit(conn)
            return result

    def _commit(self, conn: Any) -> None:
        try:
            conn.execute("COMMIT")
        except self._psycopg.Error as exc:
            if conn.broken:
                # COMMIT was sent (or half sent) and no answer came back: the server
                # may have committed. Re-running could apply it twice.
                self._count("commit_unknown")
                raise CommitUnknown(self._target, exc) from exc
            self._rollback(conn)
            raise
        self._count("transactions")

    def _rollback(self, conn: Any) -> None:
        if conn.broken or conn.closed:
            return
        try:
            conn.execute("ROLLBACK")
        except self._psycopg.Error as exc:  # the original error matters more
            log.warning("rollback failed: %s", exc)

    # -- locks ----------------------------------------------------------------------

    def advisory_lock(
        self, name: str, *, ttl_s: float = 30.0, wait_s: float = 0.0, owner: str | None = None
    ) -> AdvisoryLease:
        """A lease shared by every process and host, timed by the server's ``now()``."""
        return AdvisoryLease.acquire(self, self.lease_sql, name, ttl_s=ttl_s, wait_s=wait_s, owner=owner)

    # -- migrations -----------------------------------------------------------------

    def migration_files(self) -> list[_migrations.MigrationFile]:
        return _migrations.discover(self.migrations_dir)

    def migrate(self) -> list[str]:
        """Apply pending migrations under the migration lock; the versions applied."""
        files = self.migration_files()
        conn = self._direct_connection()
        try:
            return _pg_migrations.apply(
                conn,
                files,
                self._psycopg,
                allow_missing=self.allow_missing_migrations,
                allow_out_of_order=self.allow_out_of_order_migrations,
            )
        finally:
            conn.close()  # ends the session, and any advisory lock with it

    def migration_plan(self) -> _migrations.MigrationPlan:
        with self.connection() as conn:
            return _pg_migrations.plan(conn, self.migration_files())

    def dry_run_migrations(self) -> list[_migrations.DryRunResult]:
        files = self.migration_files()
        with self.connection() as conn:
            return _pg_migrations.dry_run(conn, files, self._psycopg)

    def migration_history(self) -> list[_migrations.AppliedMigration]:
        with self.connection() as conn:
            return list(_pg_migrations.read_history(conn).values())

    # -- backup and diagnostics -----------------------------------------------------

    def create_backup(self, path: Any = None, **options: Any) -> Any:
        """``pg_dump`` (custom format) + manifest; see :func:`icn_mcp.db.postgres.backup.create_backup`."""
        return _backup.create_backup(self, path, **options)

    def verify_backup(self, path: Any, **options: Any) -> Any:
        """``pg_restore --list`` and a restore into a scratch database; see :mod:`icn_mcp.db.postgres.backup`."""
        return _backup.verify_backup(self, path, **options)

    def restore_from_backup(self, path: Any, **options: Any) -> Any:
        """Verify, safety dump of a non-empty database, restore in one transaction."""
        return _backup.restore_from_backup(self, path, **options)

    def get_database_info(self, **options: Any) -> dict[str, Any]:
        """Size, tables, indexes, migrations, health and pool, from the catalogs."""
        return _info.get_database_info(self, backup_dir=options.get("backup_dir"))

    def list_backups(self, directory: Any) -> list[Path]:
        """``pg_dump`` backups in ``directory`` named like ours, oldest first."""
        return _backup.list_backups(directory)

    def latest_backup(self, directory: Any) -> dict[str, Any] | None:
        """The newest published dump in ``directory`` (one with its manifest), or None."""
        return _info.last_backup(directory)

    def change_feed(self, on_change: Callable[[], None] | None = None) -> WorkListener:
        """``LISTEN icn_mcp_work`` on a connection of its own (see :mod:`.listen`), started;
        ``on_change`` is called from its thread at each notification."""
        return WorkListener(self, on_change=on_change).start()

    def size_bytes(self) -> dict[str, int]:
        """``pg_database_size`` of this database; ``wal`` is 0: PostgreSQL's WAL is the
        cluster's, shared by every database on the server, not this database's."""
        with self.read_transaction() as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        return {"database": int(size), "wal": 0}

    # -- diagnostics and life cycle -------------------------------------------------

    def check_health(self) -> dict[str, Any]:
        """``SELECT 1`` on a pooled connection: ``{"ok", "latency_ms", "error"}``."""
        started = time.perf_counter()
        self._count("health_checks")
        try:
            with self.connection() as conn:
                conn.execute("SELECT 1").fetchone()
        except (self._psycopg.Error, DatabaseError) as exc:
            self._count("health_check_failures")
            return {"ok": False, "latency_ms": round((time.perf_counter() - started) * 1000, 3), "error": str(exc)}
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3), "error": None}

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._stats[name] += 1

    def get_stats(self) -> dict[str, int]:
        """Counters since opening plus the pool's gauges, with constant keys."""
        with self._stats_lock:
            stats = dict(self._stats)
        stats["lock_waits"] += self._locks.waits
        pool = self._pool.get_stats()
        # Connections found dead by the pre-use check (and replaced): after a server
        # restart or pg_terminate_backend, one per connection that was in the pool.
        stats["reconnects"] = int(pool.get("connections_lost", 0))
        stats["open_connections"] = int(pool.get("pool_size", 0))
        stats["pool_available"] = int(pool.get("pool_available", 0))
        stats["pool_requests_waiting"] = int(pool.get("requests_waiting", 0))
        stats["pool_max"] = int(pool.get("pool_max", 0))
        return stats

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the pool and every connection in it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pool.close()

    def __repr__(self) -> str:
        return f"<PostgresDatabase {self._target!r}{' closed' if self._closed else ''}>"
