"""The persistence contract: what every backend of :mod:`icn_mcp.db` provides.

:class:`BaseDatabase` is the one interface the store, the server and the CLI use.
Two implementations: :class:`icn_mcp.db.sqlite.database.Database` (the embedded
default, one file) and :class:`icn_mcp.db.postgres.database.PostgresDatabase` (a
server many hosts share). :func:`icn_mcp.db.open_database` picks one from the
settings. This module imports neither backend; both import it.

What the contract promises, on every backend:

- ``write_transaction()``: a context manager yielding a connection inside a write
  transaction that commits on success and rolls back on an exception. Statements are
  run with ``conn.execute(sql, params)``; each backend has its own placeholder style
  (``?`` on SQLite, ``%s`` on PostgreSQL), which is why backend SQL lives beside its
  backend.
- ``read_transaction()``: a consistent snapshot for several reads.
- ``run_in_transaction(fn, retries=None)``: ``fn(conn)`` in a write transaction, the
  whole call retried with exponential backoff and jitter on transient conflicts
  (SQLite: busy/locked; PostgreSQL: serialization failure, deadlock, a connection lost
  before COMMIT was sent). :class:`~icn_mcp.errors.BusyError` when the budget is spent;
  :class:`~icn_mcp.errors.CommitUnknown` (never retried) when the connection was lost
  while COMMIT was in flight.
- ``advisory_lock(name, ttl_s=, wait_s=)``: a lease shared by every process and host
  using the database; :class:`~icn_mcp.errors.LockTimeout` names the holder.
- ``lock(key)``: an in-process keyed lock (threads and asyncio).
- migrations: ``migrate``, ``migration_plan``, ``verify_migrations``,
  ``dry_run_migrations``, ``migration_history``; the same history table, checksums
  and failure records on both backends.
- ``create_backup``, ``verify_backup``, ``restore_from_backup``,
  ``get_database_info`` (and ``*_async`` variants that do not block an event loop).
- ``check_health()``, ``get_stats()`` (constant keys), ``close()``.
"""

from __future__ import annotations

import abc
import asyncio
import os
import socket
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, TypeVar

from icn_mcp.db.keyed_locks import KeyedLocks, KeyLock

__all__ = [
    "BaseDatabase",
    "default_owner_id",
    "ADVISORY_POLL_MIN_S",
    "ADVISORY_POLL_MAX_S",
    "STAT_KEYS",
]

T = TypeVar("T")

#: How often a waiting advisory lock polls, at first and at most.
ADVISORY_POLL_MIN_S = 0.01
ADVISORY_POLL_MAX_S = 0.25

#: Keys every backend's :meth:`BaseDatabase.get_stats` returns (backends may add more).
STAT_KEYS = (
    "transactions",
    "busy_retries",
    "busy_exhausted",
    "connections_opened",
    "reconnects",
    "health_checks",
    "health_check_failures",
    "lock_waits",
    "open_connections",
)


def default_owner_id() -> str:
    """``host:pid:random``: unique per acquisition, readable by an operator."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ChangeFeed(Protocol):
    """What waiting claims watch (:meth:`BaseDatabase.change_feed`)."""

    #: While :meth:`version` answers None, look for work at most this often (0: at
    #: every poll).
    fallback_poll_s: float

    def version(self) -> int | None:
        """A number that changes when anyone commits work; None when it cannot tell."""

    def close(self) -> None:
        """Release the feed's connection."""


class BaseDatabase(abc.ABC):
    """One database, whatever the engine: transactions, locks, migrations, backups.

    Subclasses set :attr:`backend` and implement the abstract methods; the async
    variants, ``lock``, ``verify_migrations`` and the context-manager protocol are
    shared here.
    """

    #: ``"sqlite"`` or ``"postgresql"``.
    backend: ClassVar[str]
    migrations_dir: Path
    allow_missing_migrations: bool = False
    allow_out_of_order_migrations: bool = False
    _locks: KeyedLocks

    # -- identity -------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def target(self) -> str:
        """What this database is, for messages: a file path or a URL without password."""

    # -- transactions ---------------------------------------------------------------

    @abc.abstractmethod
    def write_transaction(self) -> AbstractContextManager[Any]:
        """A connection in a write transaction; commit on success, roll back on error."""

    @abc.abstractmethod
    def read_transaction(self) -> AbstractContextManager[Any]:
        """A connection in a read-only snapshot; always rolled back at the end."""

    @abc.abstractmethod
    def run_in_transaction(self, fn: Callable[[Any], T], *, retries: int | None = None) -> T:
        """``fn(conn)`` in a write transaction, retried on transient conflicts."""

    # -- locks ----------------------------------------------------------------------

    def lock(self, key: str, *, timeout: float | None = None) -> KeyLock:
        """An in-process keyed lock of this database (``with`` or ``async with``)."""
        return self._locks(key, timeout=timeout)

    @abc.abstractmethod
    def advisory_lock(self, name: str, *, ttl_s: float = 30.0, wait_s: float = 0.0, owner: str | None = None) -> Any:
        """A lease on ``name`` shared by every process using this database."""

    # -- migrations -----------------------------------------------------------------

    @abc.abstractmethod
    def migrate(self) -> list[str]:
        """Apply pending migrations; the versions applied by this call."""

    @abc.abstractmethod
    def migration_plan(self) -> Any:
        """Applied, pending, changed, missing and failed migrations; changes nothing."""

    @abc.abstractmethod
    def dry_run_migrations(self) -> list[Any]:
        """Apply pending migrations in a transaction, roll back, report each."""

    @abc.abstractmethod
    def migration_history(self) -> list[Any]:
        """The applied migrations, oldest first."""

    def verify_migrations(self) -> Any:
        """The plan, or the first problem that would stop start-up, raised."""
        current = self.migration_plan()
        problems = current.problems(
            allow_missing=self.allow_missing_migrations,
            allow_out_of_order=self.allow_out_of_order_migrations,
        )
        if problems:
            raise problems[0]
        return current

    # -- backup and diagnostics -----------------------------------------------------

    @abc.abstractmethod
    def create_backup(self, path: str | os.PathLike[str] | None = None, **options: Any) -> Any:
        """A verified backup of this database, published atomically."""

    @abc.abstractmethod
    def verify_backup(self, path: str | os.PathLike[str], **options: Any) -> Any:
        """Check that ``path`` is a backup this code can restore."""

    @abc.abstractmethod
    def restore_from_backup(self, path: str | os.PathLike[str], **options: Any) -> Any:
        """Verify ``path``, keep a safety copy of the current content, restore."""

    @abc.abstractmethod
    def get_database_info(self, **options: Any) -> dict[str, Any]:
        """Sizes, tables, row counts, migrations, last backup, health, as plain data."""

    @abc.abstractmethod
    def list_backups(self, directory: str | os.PathLike[str]) -> list[Path]:
        """This backend's backups in ``directory`` (named like ours), oldest first."""

    @abc.abstractmethod
    def latest_backup(self, directory: str | os.PathLike[str]) -> dict[str, Any] | None:
        """``{"path", "created_at", "size_bytes"}`` of the newest backup in ``directory``, or None."""

    @abc.abstractmethod
    def change_feed(self, on_change: Callable[[], None] | None = None) -> ChangeFeed:
        """A new watcher of commits that may make work claimable, for waiting claims:
        one per server process (it holds a connection of its own); close it after use.

        ``on_change`` is called, from another thread, as soon as the backend learns of
        a change by itself (PostgreSQL's notifications); where changes are only seen
        by reading :meth:`ChangeFeed.version` (SQLite) it is never called."""

    @abc.abstractmethod
    def size_bytes(self) -> dict[str, int]:
        """``{"database": n, "wal": n}``: bytes on disk now (cheap enough for every scrape)."""

    async def create_backup_async(self, path: str | os.PathLike[str] | None = None, **options: Any) -> Any:
        """:meth:`create_backup` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.create_backup, path, **options)

    async def verify_backup_async(self, path: str | os.PathLike[str], **options: Any) -> Any:
        """:meth:`verify_backup` in a worker thread."""
        return await asyncio.to_thread(self.verify_backup, path, **options)

    async def restore_from_backup_async(self, path: str | os.PathLike[str], **options: Any) -> Any:
        """:meth:`restore_from_backup` in a worker thread."""
        return await asyncio.to_thread(self.restore_from_backup, path, **options)

    async def get_database_info_async(self, **options: Any) -> dict[str, Any]:
        """:meth:`get_database_info` in a worker thread."""
        return await asyncio.to_thread(self.get_database_info, **options)

    # -- life cycle -----------------------------------------------------------------

    @abc.abstractmethod
    def check_health(self) -> dict[str, Any]:
        """Probe the database now: ``{"ok", "latency_ms", "error"}`` (never raises)."""

    def check_storage(self) -> dict[str, Any]:
        """``{"full", "since"}``: is a full-disk incident going on (never raises)?

        This default answers "not full": the backend has no incident to report (on
        PostgreSQL the server's disk is the server's to watch; a write it refuses for
        space fails like any other write)."""
        return {"full": False, "since": None}

    @abc.abstractmethod
    def get_stats(self) -> dict[str, int]:
        """Counters since opening, with at least the keys in :data:`STAT_KEYS`."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection; idempotent."""

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
