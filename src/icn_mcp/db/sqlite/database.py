"""Database: connections, pragmas, health checks, transactions and retry.

One sqlite3 connection per thread (connections must not be shared between threads),
opened in autocommit mode: this module issues ``BEGIN IMMEDIATE``/``COMMIT`` itself.
Every connection the database opened is tracked, so :meth:`Database.close` closes all
of them, in every thread. A child process created by ``fork`` never touches its
parent's connections: they are set aside (not closed, which could disturb the
parent's locks) and the child opens its own on first use.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import sqlite3
import stat
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from icn_mcp.config import (
    MAX_BUSY_TIMEOUT_MS,
    MAX_CACHE_SIZE_KIB,
    MAX_INTERVAL_S,
    MAX_JOURNAL_SIZE_LIMIT,
    MAX_RETRIES,
)
from icn_mcp.db.base import BaseDatabase
from icn_mcp.db.changes import DataVersion
from icn_mcp.db.files import make_private_dirs
from icn_mcp.db.keyed_locks import KeyedLocks
from icn_mcp.db.leases import AdvisoryLease
from icn_mcp.db.sqlite import backup as _backup
from icn_mcp.db.sqlite import info as _info
from icn_mcp.db.sqlite import migrations as _migrations
from icn_mcp.db.sqlite.locks import SQLiteLeaseSQL
from icn_mcp.db.storage import StorageWatch, is_storage_full_error
from icn_mcp.errors import (
    BusyError,
    DatabaseClosed,
    DatabaseError,
    DatabaseFileError,
)

__all__ = [
    "Database",
    "DEFAULT_BUSY_TIMEOUT_MS",
    "DEFAULT_HEALTH_CHECK_INTERVAL_S",
    "DEFAULT_RETRIES",
]

log = logging.getLogger("icn_mcp.db")

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_MS = 30_000
DEFAULT_SYNCHRONOUS = "NORMAL"
DEFAULT_TEMP_STORE = "MEMORY"
DEFAULT_CACHE_SIZE_KIB = 8 * 1024
DEFAULT_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
DEFAULT_HEALTH_CHECK_INTERVAL_S = 30.0
#: Busy retries after the first attempt; with the defaults below they span ~10 s,
#: on top of SQLite's own busy timeout for each attempt.
DEFAULT_RETRIES = 8
DEFAULT_RETRY_BASE_DELAY_S = 0.01
DEFAULT_RETRY_MAX_DELAY_S = 2.0
#: SQLite's own default: a PASSIVE checkpoint after a commit leaves this many pages in
#: the WAL. 0 means another process owns checkpointing (Litestream, see db/replica.py):
#: this process then never checkpoints, not even when it closes.
DEFAULT_WAL_AUTOCHECKPOINT = 1000

_SYNCHRONOUS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}
_TEMP_STORE = {"DEFAULT": 0, "FILE": 1, "MEMORY": 2}

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

#: A ``BEGIN IMMEDIATE`` that took longer than this may have waited for another
#: process's write lock (SQLite's busy handler sleeps at least 1 ms before its first
#: retry), or only for the GIL or a CPU: the next writes poll, to find out which.
_SLOW_BEGIN_S = 0.0008
_PROBE_WRITES = 8
#: A write that found the lock held polls, and so do the writes after it until this
#: long has passed without finding it held again.
_CONTENTION_WINDOW_S = 2.0
#: The polling: first and longest sleep between tries.
_LOCK_POLL_MIN_S = 0.00005
_LOCK_POLL_MAX_S = 0.002
_clock = time.perf_counter  # CLOCK_MONOTONIC, the cheapest clock to read here


class _WriteLockTimeout(sqlite3.OperationalError):
    """Another thread of this process held the write lock for the whole busy timeout
    (a busy error like SQLite's own: retried, then BusyError)."""

    sqlite_errorcode = _SQLITE_BUSY
    sqlite_errorname = "SQLITE_BUSY"


def is_busy_error(exc: BaseException) -> bool:
    """True for SQLITE_BUSY, SQLITE_LOCKED and their extended codes (BUSY_SNAPSHOT...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


class _Connection:
    """One thread's connection and when it was last checked."""

    __slots__ = ("conn", "pid", "thread", "last_check", "identity")

    def __init__(self, conn: sqlite3.Connection, identity: tuple[int, int]) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.thread = weakref.ref(threading.current_thread())
        self.last_check = time.monotonic()
        self.identity = identity

    def thread_alive(self) -> bool:
        thread = self.thread()
        return thread is not None and thread.is_alive()


# Connections inherited across fork: kept referenced forever so that the child never
# closes (and never checkpoints or unlocks) a connection that belongs to its parent.
_inherited_after_fork: list[sqlite3.Connection] = []
_open_databases: weakref.WeakSet[Database] = weakref.WeakSet()


class Database(BaseDatabase):
    """One SQLite database file, its connections, migrations and transactions.

    Opening applies pending migrations (``migrate=False`` skips that). Use it as a
    context manager, or call :meth:`close`. All arguments but ``path`` are keyword-only
    and validated; defaults are the production settings documented in DESIGN.md.
    """

    backend = "sqlite"
    #: The statements of advisory locks on this backend (see icn_mcp.db.leases).
    lease_sql = SQLiteLeaseSQL()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        migrations_dir: str | os.PathLike[str] | None = None,
        migrate: bool = True,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        synchronous: str = DEFAULT_SYNCHRONOUS,
        temp_store: str = DEFAULT_TEMP_STORE,
        cache_size_kib: int = DEFAULT_CACHE_SIZE_KIB,
        journal_size_limit: int = DEFAULT_JOURNAL_SIZE_LIMIT,
        health_check_interval_s: float = DEFAULT_HEALTH_CHECK_INTERVAL_S,
        retries: int = DEFAULT_RETRIES,
        retry_base_delay_s: float = DEFAULT_RETRY_BASE_DELAY_S,
        retry_max_delay_s: float = DEFAULT_RETRY_MAX_DELAY_S,
        allow_missing_migrations: bool = False,
        allow_out_of_order_migrations: bool = False,
        read_only: bool = False,
        wal_autocheckpoint: int = DEFAULT_WAL_AUTOCHECKPOINT,
    ) -> None:
        synchronous = str(synchronous).upper()
        temp_store = str(temp_store).upper()
        _require(synchronous in _SYNCHRONOUS, "synchronous", synchronous, "one of " + ", ".join(_SYNCHRONOUS))
        _require(temp_store in _TEMP_STORE, "temp_store", temp_store, "one of " + ", ".join(_TEMP_STORE))
        _require_int("busy_timeout_ms", busy_timeout_ms, 0, MAX_BUSY_TIMEOUT_MS)
        _require_int("cache_size_kib", cache_size_kib, 1, MAX_CACHE_SIZE_KIB)
        _require_int("journal_size_limit", journal_size_limit, -1, MAX_JOURNAL_SIZE_LIMIT)
        _require_int("retries", retries, 0, MAX_RETRIES)
        _require_seconds("health_check_interval_s", health_check_interval_s)
        _require_seconds("retry_base_delay_s", retry_base_delay_s)
        _require_seconds("retry_max_delay_s", retry_max_delay_s)
        _require_int("wal_autocheckpoint", wal_autocheckpoint, 0, 2**31 - 1)
        raw_path = os.fspath(path)
        _require(
            raw_path not in ("", ":memory:") and not raw_path.startswith("file:"),
            "path",
            raw_path,
            "a file path (WAL needs a real file)",
        )

        self.path = Path(os.path.abspath(raw_path))
        self._path_str = str(self.path)  # stat()ed before every write: skip __fspath__
        self.migrations_dir = (
            Path(migrations_dir) if migrations_dir is not None else _migrations.default_migrations_dir()
        )
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.temp_store = temp_store
        self.cache_size_kib = cache_size_kib
        self.journal_size_limit = journal_size_limit
        self.health_check_interval_s = health_check_interval_s
        self.retries = retries
        self.retry_base_delay_s = retry_base_delay_s
        self.retry_max_delay_s = retry_max_delay_s
        self.allow_missing_migrations = allow_missing_migrations
        self.allow_out_of_order_migrations = allow_out_of_order_migrations
        #: Opened for inspection: never creates, converts or writes the file.
        self.read_only = bool(read_only)
        self.wal_autocheckpoint = wal_autocheckpoint

        self._local = threading.local()
        self._registry_lock = threading.Lock()
        self._connections: dict[int, _Connection] = {}
        self._closed = False
        self._file_error: DatabaseFileError | None = None
        self._fork_error: DatabaseError | None = None
        self._pid = os.getpid()
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
            "write_lock_waits": 0,
        }
        #: This process's write transactions, one at a time (see _begin_write).
        self._write_lock = threading.Lock()
        #: Until this _clock() time, and for this many more writes, writes poll for
        #: SQLite's lock (see _begin_write).
        self._contended_until = 0.0
        self._probes = 0
        #: Full-disk incidents: StorageFull instead of a raw error, logged once each.
        self._storage = StorageWatch(self.path)

        if self.read_only:
            check_database_file(self.path)
        else:
            self._create_file()
        _open_databases.add(self)
        try:
            self.connection()
            if migrate and not self.read_only:
                self.migrate()
        except BaseException:
            self.close()
            raise

    @property
    def target(self) -> str:
        """The database file's absolute path."""
        return str(self.path)

    # -- files and connections ------------------------------------------------------

    def _create_file(self) -> None:
        """Create the directory (0700) and an empty file (0600) so SQLite inherits them.

        SQLite gives the -wal and -shm files the permissions of the database file.
        """
        try:
            make_private_dirs(self.path.parent)  # 0700 at every level it creates
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create or open database file {self.path}: {exc.strerror}",
                hint=_write_access_hint(self.path),
            ) from None

    def _identity(self) -> tuple[int, int]:
        try:
            st = os.stat(self._path_str)
        except FileNotFoundError:
            raise DatabaseFileError(
                str(self.path),
                "was deleted",
                hint="restore it (icn-mcp db restore) or restart to create a new, empty database",
            ) from None
        return (st.st_dev, st.st_ino)

    def _check_identity(self, record: _Connection) -> None:
        """Refuse to write into a file that is no longer the one at ``self.path``."""
        error: DatabaseFileError | None = self._file_error
        if error is None:
            try:
                identity = self._identity()
            except DatabaseFileError as exc:
                error = exc
            else:
                if identity == record.identity:
                    return
                error = DatabaseFileError(
                    str(self.path),
                    "was replaced by another file",
                    hint="close and reopen the database (restart the process) to use the new file",
                )
            self._file_error = error
            log.error("%s", error)
        raise error

    def _open_connection(self) -> _Connection:
        if self._fork_error is not None:
            raise self._fork_error
        identity = self._identity()
        if self.read_only:
            conn = self._with_retry(self._connect_read_only)
        else:
            try:
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,  # autocommit: we issue BEGIN/COMMIT ourselves
                    check_same_thread=False,  # so close() can close it from any thread
                    timeout=self.busy_timeout_ms / 1000,
                )
            except sqlite3.Error as exc:
                raise DatabaseError(f"cannot open database {self.path}: {exc}") from None
        try:
            self._with_retry(lambda: self._configure(conn))
        except BaseException:
            conn.close()
            raise
        conn.row_factory = sqlite3.Row
        record = _Connection(conn, identity)
        self._local.record = record
        with self._registry_lock:
            # Connections of threads that have ended are closed here, so a thread pool
            # that replaces its threads does not accumulate open connections.
            for key, other in list(self._connections.items()):
                if not other.thread_alive() and other.pid == os.getpid():
                    del self._connections[key]
                    _close_quietly(other.conn)
            self._connections[id(record)] = record
        self._count("connections_opened")
        return record

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that cannot write (``query_only``) and leaves nothing behind.

        - File and directory writable: an ordinary connection with ``query_only``. It
          creates the WAL's ``-wal``/``-shm`` like any reader, and SQLite removes them
          when the last connection closes, so nothing is left beside the file. (A
          ``mode=ro`` connection could not remove them.)
        - Otherwise, with no ``-wal`` beside the file, the file holds everything:
          ``mode=ro&immutable=1`` reads it without locks and without a ``-shm``, which
          a read-only directory would not let SQLite create.
        - Otherwise (a live WAL that someone else writes): ``mode=ro``.
        """
        from urllib.parse import quote

        path = self._path_str
        wal = path + "-wal"
        writable = os.access(path, os.W_OK) and os.access(os.path.dirname(path), os.W_OK | os.X_OK)
        live_wal = os.path.exists(wal) and os.path.getsize(wal) > 0
        if writable:
            target, uri = path, False
        else:
            target, uri = "file:" + quote(path) + ("?mode=ro" if live_wal else "?mode=ro&immutable=1"), True
        conn = None
        try:
            conn = sqlite3.connect(
                target, uri=uri, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
            )
            conn.execute("PRAGMA query_only = ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if is_busy_error(exc):
                raise
            raise DatabaseError(
                f"cannot read database {self.path}: {exc}",
                hint=_read_access_hint(self.path),
            ) from None
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        """Apply and read back every pragma; fail loudly on any that did not take."""
        if self.read_only:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute(f"PRAGMA temp_store = {self.temp_store}")
            conn.execute(f"PRAGMA cache_size = {-int(self.cache_size_kib)}")
            return
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if is_busy_error(exc):
                raise
            if is_storage_full_error(exc, self.path.parent):  # no room for -wal/-shm
                raise self._storage.refused(exc) from exc
            raise DatabaseError(
                f"{self.path} cannot be used as an SQLite database: {exc}",
                hint="is it an SQLite file? restore it from a backup or point MCP_DB_PATH elsewhere",
            ) from None
        if str(mode).lower() != "wal":
            raise DatabaseError(
                f"could not enable WAL journal mode on {self.path} (it stays {mode!r})",
                hint="WAL needs a local filesystem that supports shared memory",
            )
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute(f"PRAGMA temp_store = {self.temp_store}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA journal_size_limit = {int(self.journal_size_limit)}")
        conn.execute(f"PRAGMA cache_size = {-int(self.cache_size_kib)}")
        # Litestream replicates WAL frames before it checkpoints them itself; a
        # checkpoint it did not make forces it to snapshot the whole database again
        # (its docs: disable autocheckpoints while it runs). Issue 12.
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(self.wal_autocheckpoint)}")
        expected = self.expected_pragmas()
        actual = self.read_pragmas(conn)
        for name, value in expected.items():
            if actual[name] != value:
                raise DatabaseError(f"PRAGMA {name} on {self.path} is {actual[name]!r} after setting it to {value!r}")

    def expected_pragmas(self) -> dict[str, Any]:
        """The value each pragma must read back as, in SQLite's own terms."""
        return {
            "journal_mode": "wal",
            "busy_timeout": self.busy_timeout_ms,
            "synchronous": _SYNCHRONOUS[self.synchronous],
            "temp_store": _TEMP_STORE[self.temp_store],
            "foreign_keys": 1,
            "journal_size_limit": self.journal_size_limit,
            "cache_size": -self.cache_size_kib,
            "wal_autocheckpoint": self.wal_autocheckpoint,
        }

    @staticmethod
    def read_pragmas(conn: sqlite3.Connection) -> dict[str, Any]:
        """The live values of the pragmas this module sets."""
        names = (
            "journal_mode",
            "busy_timeout",
            "synchronous",
            "temp_store",
            "foreign_keys",
            "journal_size_limit",
            "cache_size",
            "wal_autocheckpoint",
        )
        values = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}
        values["journal_mode"] = str(values["journal_mode"]).lower()
        return values

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened, checked or reopened as needed."""
        return self._record().conn

    def _record(self) -> _Connection:
        if self._closed:
            raise DatabaseClosed(f"database {self.path} is closed")
        if self._file_error is not None:
            raise self._file_error
        record: _Connection | None = getattr(self._local, "record", None)
        if record is None or record.pid != os.getpid():
            return self._open_connection()
        if time.monotonic() - record.last_check >= self.health_check_interval_s:
            return self._health_check(record)
        return record

    def _health_check(self, record: _Connection) -> _Connection:
        """``SELECT 1``; on failure close and reopen this thread's connection."""
        self._count("health_checks")
        try:
            record.conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            self._count("health_check_failures")
            log.warning("database %s failed its health check (%s); reconnecting", self.path, exc)
            self._discard(record)
            record = self._open_connection()
            self._count("reconnects")
        self._check_identity(record)
        record.last_check = time.monotonic()
        return record

    def _discard(self, record: _Connection) -> None:
        with self._registry_lock:
            self._connections.pop(id(record), None)
        if getattr(self._local, "record", None) is record:
            del self._local.record
        _close_quietly(record.conn)

    def check_health(self) -> dict[str, Any]:
        """Probe the database now: ``{"ok", "latency_ms", "error"}`` (never raises)."""
        started = time.perf_counter()
        try:
            record = self._record()
            record.conn.execute("SELECT 1").fetchone()
            self._check_identity(record)
            record.last_check = time.monotonic()
        except (sqlite3.Error, DatabaseError) as exc:
            return {"ok": False, "latency_ms": round((time.perf_counter() - started) * 1000, 3), "error": str(exc)}
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3), "error": None}

    def check_storage(self) -> dict[str, Any]:
        """``{"full", "since"}``: is a full-disk incident going on (never raises)?

        While one is, this probes with a real one-page write (``PRAGMA user_version``
        rewritten to its own value) at most once a second, so that the incident ends
        when space returns even if no other write comes.
        """
        if self._storage.probe_due():

            def probe(conn: sqlite3.Connection) -> None:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute(f"PRAGMA user_version = {int(version)}")

            try:
                self._transaction_once(probe)  # not counted as a refused write
            except (sqlite3.Error, DatabaseError) as exc:
                log.debug("storage probe of %s failed: %s", self.path, exc)
            else:
                self._storage.wrote()
        since = self._storage.since
        return {"full": since is not None, "since": since}

    # -- transactions ---------------------------------------------------------------

    def _refuse_read_only(self) -> None:
        if self.read_only:
            raise DatabaseError(f"database {self.path} was opened read-only (for inspection)")

    @contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if the block raises.

        Does not retry (a ``with`` block cannot be re-run); use
        :meth:`run_in_transaction` for that.
        """
        self._refuse_read_only()
        record = self._record()
        conn = record.conn
        _refuse_nested(conn)
        self._check_identity(record)
        self._begin_write(conn)
        try:
            try:
                yield conn
            except BaseException:
                _rollback(conn)
                raise
            _commit(conn)
            self._stats["transactions"] += 1  # under the write lock, like every writer's
        finally:
            self._write_lock.release()

    @contextmanager
    def read_transaction(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads (from the first read to the end).

        Only for reads: a write inside it may fail with SQLITE_BUSY_SNAPSHOT; use
        :meth:`write_transaction` or :meth:`run_in_transaction` to write.
        """
        conn = self.connection()
        _refuse_nested(conn)
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            _rollback(conn)  # a read transaction has nothing to commit

    def run_in_transaction(self, fn: Callable[[sqlite3.Connection], T], *, retries: int | None = None) -> T:
        """``fn(conn)`` inside ``BEGIN IMMEDIATE``; the whole call retried when busy.

        SQLITE_BUSY, SQLITE_LOCKED and their extended codes (SQLITE_BUSY_SNAPSHOT
        among them) roll back and retry with exponential backoff and jitter, at most
        ``retries`` times (default: the database's setting), then raise
        :class:`BusyError`. ``fn`` may run more than once, so it must do nothing but
        database work that the rollback undoes.
        """
        self._refuse_read_only()
        tries = 0
        while True:
            try:
                return self._transaction_once(fn)
            except sqlite3.OperationalError as exc:
                tries = self._backoff_or_raise(exc, tries, retries)

    def _transaction_once(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # The hot path of every write: kept flat on purpose (see bench_transactions.py).
        record = self._record()
        conn = record.conn
        if conn.in_transaction:
            _refuse_nested(conn)
        try:
            st = os.stat(self._path_str)
            same_file = st.st_ino == record.identity[1] and st.st_dev == record.identity[0]
        except OSError:
            same_file = False
        if not same_file:
            self._check_identity(record)  # raises DatabaseFileError with the details
        # During a full-disk incident, a commit that changed rows ends it.
        changes = conn.total_changes if self._storage.since is not None else -1
        self._begin_write(conn)
        try:
            try:
                result = fn(conn)
            except BaseException:
                _rollback(conn)
                raise
            _commit(conn)
            self._stats["transactions"] += 1  # under the write lock, like every writer's
        finally:
            self._write_lock.release()
        if changes >= 0 and conn.total_changes != changes:
            self._storage.wrote()
        return result

    def _begin_write(self, conn: sqlite3.Connection) -> None:
        """This process's write lock, then ``BEGIN IMMEDIATE``: SQLite's write lock.

        On return the caller holds both and must release ``_write_lock`` after its
        commit or rollback; on an exception it holds neither.

        Threads of one process write one at a time, taking turns at a lock that hands
        over at once (no first-come-first-served promise; waited for at most
        ``busy_timeout_ms``, then a busy error as SQLite's own), so SQLite's lock is
        contended only between processes (and this process's other connections:
        a restore's, a second Database on the file). There,
        SQLite's busy handler sleeps 1, 2, 5, 10... ms between tries though the
        holder's transaction usually ends within a fraction of a millisecond: with
        several processes writing (``serve --workers N``) those sleeps were most of
        the latency. So while other processes are writing, begins try the lock with
        SQLite's handler off and poll for it themselves: 50 us, doubling to 2 ms,
        until the same busy timeout. (Only the begin: every statement inside the
        transaction keeps the busy timeout.)

        "While other processes are writing": a begin through SQLite's handler that
        took over 0.8 ms may have waited for the lock, or only for the GIL or a CPU,
        so it makes the next 8 writes poll, to find out; a polled begin answered
        "busy" met another process's lock for sure (counted in
        ``write_lock_waits``), and polling then goes on until 2 s pass without
        another. Alone on the database, a process keeps SQLite's handler: one
        statement per begin.
        """
        lock = self._write_lock
        if not lock.acquire(False) and not lock.acquire(timeout=self.busy_timeout_ms / 1000):
            raise _WriteLockTimeout("database is locked (by another thread of this process)")
        try:
            started = _clock()
            if self._probes or started < self._contended_until:
                self._poll_begin(conn)
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                if _clock() - started > _SLOW_BEGIN_S:
                    self._probes = _PROBE_WRITES
        except BaseException:
            try:
                # Begun, then failed (restoring the busy timeout): not the caller's.
                _rollback(conn)
                _restore_busy_timeout(conn, self.busy_timeout_ms)
            finally:
                lock.release()
            raise

    def _poll_begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE`` tried without SQLite's busy handler, polled until the
        busy timeout (see :meth:`_begin_write`); the last busy error after that."""
        timeout_ms = int(self.busy_timeout_ms)
        deadline = _clock() + timeout_ms / 1000
        delay = _LOCK_POLL_MIN_S
        waited = False
        while True:
            try:
                conn.execute("PRAGMA busy_timeout = 0")
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if not is_busy_error(exc):
                    raise
                if not waited:  # another process holds the lock: a wait for sure
                    waited = True
                    self._count("write_lock_waits")
                self._contended_until = _clock() + _CONTENTION_WINDOW_S
                self._probes = 0
                if _clock() >= deadline:
                    raise
            finally:
                conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            time.sleep(min(delay, max(0.0, deadline - _clock())))
            delay = min(delay * 2, _LOCK_POLL_MAX_S)
        if not waited and self._probes:
            self._probes -= 1

    def _polls_write_lock(self) -> bool:
        """Whether the next write polls for SQLite's lock (see :meth:`_begin_write`)."""
        return bool(self._probes) or _clock() < self._contended_until

    def _with_retry(self, attempt: Callable[[], T], *, retries: int | None = None) -> T:
        tries = 0
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                tries = self._backoff_or_raise(exc, tries, retries)

    def _backoff_or_raise(self, exc: sqlite3.OperationalError, tries: int, retries: int | None) -> int:
        """After a failed attempt: re-raise, raise BusyError, or sleep; the new count."""
        if not is_busy_error(exc):
            if is_storage_full_error(exc, self.path.parent):
                raise self._storage.refused(exc) from exc
            raise exc
        budget = self.retries if retries is None else retries
        if tries >= budget:
            self._count("busy_exhausted")
            raise BusyError(tries + 1, exc) from exc
        tries += 1
        self._count("busy_retries")
        delay = min(self.retry_max_delay_s, self.retry_base_delay_s * (2 ** (tries - 1)))
        log.debug("database busy (%s); retry %d/%d in %.3fs", exc, tries, budget, delay)
        time.sleep(delay / 2 + random.uniform(0, delay / 2))
        return tries

    #: Used by migrations: re-run ``attempt`` (which opens its own transaction) when busy.
    run_in_transaction_retrying = _with_retry

    # -- locks ----------------------------------------------------------------------

    def advisory_lock(
        self, name: str, *, ttl_s: float = 30.0, wait_s: float = 0.0, owner: str | None = None
    ) -> AdvisoryLease:
        """A lock shared by every process using this database, held for ``ttl_s``.

        Waits up to ``wait_s`` for the current holder, then raises
        :class:`~icn_mcp.errors.LockTimeout` naming the owner and the expiry.
        """
        return AdvisoryLease.acquire(self, self.lease_sql, name, ttl_s=ttl_s, wait_s=wait_s, owner=owner)

    # -- migrations -----------------------------------------------------------------

    def migration_files(self) -> list[_migrations.MigrationFile]:
        return _migrations.discover(self.migrations_dir)

    def migrate(self) -> list[str]:
        """Apply pending migrations; the versions applied by this call."""
        return _migrations.apply(
            self,
            self.migration_files(),
            allow_missing=self.allow_missing_migrations,
            allow_out_of_order=self.allow_out_of_order_migrations,
        )

    def migration_plan(self) -> _migrations.MigrationPlan:
        """Applied, pending, changed, missing and failed migrations; changes nothing."""
        return _migrations.plan(self.connection(), self.migration_files())

    def verify_migrations(self) -> _migrations.MigrationPlan:
        """The plan, or its first problem raised: what would stop start-up, then a
        migration recorded as failed that has not been applied since."""
        current = self.migration_plan()
        problems = current.problems(
            allow_missing=self.allow_missing_migrations,
            allow_out_of_order=self.allow_out_of_order_migrations,
        )
        problems += current.failure_errors()
        if problems:
            raise problems[0]
        return current

    def dry_run_migrations(self) -> list[_migrations.DryRunResult]:
        """Apply pending migrations in a transaction, roll back, report each."""
        return _migrations.dry_run(self, self.migration_files())

    def migration_history(self) -> list[_migrations.AppliedMigration]:
        return list(_migrations.read_history(self.connection()).values())

    # -- diagnostics and life cycle -------------------------------------------------

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._stats[name] += 1

    def get_stats(self) -> dict[str, int]:
        """Counters since opening, with constant keys (for metrics)."""
        with self._stats_lock:
            stats = dict(self._stats)
        stats["lock_waits"] += self._locks.waits
        stats.update(self._storage.stats())
        with self._registry_lock:
            stats["open_connections"] = len(self._connections)
        return stats

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Checkpoint the WAL (without waiting for others) and close every connection.

        Connections of every thread are closed. When this was the last connection to
        the database in any process, SQLite checkpoints fully and removes the WAL.

        Call it when no other thread is in a transaction. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        _open_databases.discard(self)
        with self._registry_lock:
            records = list(self._connections.values())
            self._connections.clear()
        self._local = threading.local()
        mine = [r for r in records if r.pid == os.getpid()]
        # wal_autocheckpoint 0: Litestream owns checkpointing (see __init__).
        if mine and self._file_error is None and self.wal_autocheckpoint:
            conn = mine[0].conn
            try:
                if not conn.in_transaction:
                    # PASSIVE: copy what it can without waiting for anyone. TRUNCATE
                    # holds the write lock while it waits for readers, so every CLI
                    # command closing beside a busy server stalled the server's
                    # writers (up to 0.5 s seen in bench_server.py). The last
                    # connection to close, in any process, checkpoints fully and
                    # removes the WAL anyway.
                    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if busy:
                        log.debug("checkpoint at close of %s was partial", self.path)
            except sqlite3.Error as exc:
                log.debug("checkpoint at close of %s failed: %s", self.path, exc)
        for record in mine:
            _close_quietly(record.conn)

    def _forget_after_fork(self) -> None:
        """In a forked child: set the parent's connections aside, open fresh ones.

        Runs in the child's only thread, so it takes no lock: another parent thread may
        have held one at the moment of the fork, and waiting for it would hang forever.
        """
        records = list(self._connections.values())
        _inherited_after_fork.extend(r.conn for r in records)
        if any(_in_transaction(r.conn) for r in records):
            # SQLite keeps its lock state per process; fork copied the parent's open
            # transaction into it, so this child's own connections would wait on a
            # lock nobody here can release (BusyError after minutes of retries).
            self._fork_error = DatabaseError(
                "this process was forked while a transaction was open in its parent; "
                "SQLite's lock state was copied with it, so this process cannot use "
                f"database {self.path}",
                hint="fork only while no transaction is open, or start child processes "
                "with the 'spawn' or 'forkserver' method",
            )
        self._connections = {}
        self._local = threading.local()
        self._registry_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._locks = KeyedLocks()
        self._write_lock = threading.Lock()
        self._contended_until = 0.0
        self._probes = 0
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<Database {str(self.path)!r}{' closed' if self._closed else ''}>"

    # -- backup and diagnostics (sqlite/backup.py, sqlite/info.py) -----------------------

    def create_backup(self, path: str | os.PathLike[str] | None = None, **options: Any) -> Any:
        """A verified snapshot of this database; see :func:`icn_mcp.db.sqlite.backup.create_backup`.

        Without ``path`` it goes to ``backups/`` beside the database file.
        """
        return _backup.create_backup(path, db=self, **options)

    def verify_backup(self, path: str | os.PathLike[str], **options: Any) -> Any:
        """Check a backup against this database's migrations; see :func:`icn_mcp.db.sqlite.backup.verify_backup`."""
        return _backup.verify_backup(path, db=self, **options)

    def restore_from_backup(self, path: str | os.PathLike[str], **options: Any) -> Any:
        """Verify, keep a safety copy, restore; see :func:`icn_mcp.db.sqlite.backup.restore_from_backup`."""
        return _backup.restore_from_backup(path, db=self, **options)

    def get_database_info(self, **options: Any) -> dict[str, Any]:
        """Size, tables, indexes, migrations, last backup, health; see :mod:`icn_mcp.db.sqlite.info`."""
        return _info.get_database_info(db=self, **options)

    def list_backups(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Backups in ``directory`` named ``icn-mcp-<UTC time>.sqlite``, oldest first."""
        return _backup.list_backups(directory)

    def latest_backup(self, directory: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The newest backup in ``directory`` (see :func:`icn_mcp.db.sqlite.backup.latest_backup`)."""
        return _backup.latest_backup(directory)

    def change_feed(self, on_change: Callable[[], None] | None = None) -> DataVersion:
        """``PRAGMA data_version`` on one read-only connection (see :mod:`icn_mcp.db.changes`);
        read by polling, so ``on_change`` is never called."""
        return DataVersion(self.path)

    def size_bytes(self) -> dict[str, int]:
        """The database file and its write-ahead log, by ``stat`` (0 when missing)."""
        sizes = {}
        for key, suffix in (("database", ""), ("wal", "-wal")):
            try:
                sizes[key] = os.stat(os.fspath(self.path) + suffix).st_size
            except OSError:
                sizes[key] = 0
        return sizes


#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def check_database_file(path: Path) -> None:
    """Refuse, without creating or changing anything, a path that is not an SQLite file.

    SQLite itself treats a 0-byte file as an empty database, and a read-write open
    turns it into one; an inspection must say what it is instead.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        raise DatabaseError(
            f"database {path} does not exist",
            hint="check --db / MCP_DB_PATH, or run 'icn-mcp db migrate' to create it",
        ) from None
    except IsADirectoryError:
        raise DatabaseError(f"database path {path} is a directory, not a database file") from None
    except OSError as exc:
        raise DatabaseError(f"cannot read database {path}: {exc.strerror}", hint=_read_access_hint(path)) from None
    if header != SQLITE_HEADER:
        what = "the file is empty (0 bytes)" if not header else "it does not start with the SQLite header"
        raise DatabaseError(
            f"{path} is not an SQLite database: {what}",
            hint="point --db / MCP_DB_PATH at the database, or restore it from a backup "
            "(icn-mcp db restore); it was left as it is",
        )


def _owner(st: os.stat_result) -> str:
    try:
        import pwd

        return pwd.getpwuid(st.st_uid).pw_name
    except (ImportError, KeyError):
        return f"uid {st.st_uid}"


def _read_access_hint(path: Path) -> str:
    """Which part of ``path`` stops this user from reading it."""
    for level in [path, *path.parents]:
        try:
            st = os.stat(level)
        except OSError:
            continue
        if level == path and not os.access(level, os.R_OK):
            return (
                f"the file is not readable by this user (mode {stat.filemode(st.st_mode)}, "
                f"owner {_owner(st)}); run as its owner"
            )
        if level != path and not os.access(level, os.X_OK):
            return f"directory {level} cannot be entered by this user; run as the database's owner"
    return "check the file's permissions"


def _write_access_hint(path: Path) -> str:
    """What stops this user from creating or writing ``path``: the file or its directory."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError:
        return "check the permissions of the file and of every directory above it"
    if st is not None and not os.access(path, os.W_OK):
        return (
            f"the database file is read-only for this user (mode {stat.filemode(st.st_mode)}, "
            f"owner {_owner(st)}); run as its owner. 'icn-mcp db status', 'db info' and "
            "'db verify' can inspect it as it is"
        )
    directory = path.parent
    if not directory.exists():
        return f"directory {directory} does not exist and cannot be created here (MCP_DB_DIR / MCP_DB_PATH)"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable by this user (MCP_DB_DIR / MCP_DB_PATH)"
    return "check the permissions of the file and of every directory above it"


def _require(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise DatabaseError(f"{name}={value!r} is not valid: expected {allowed}")


def _require_int(name: str, value: object, minimum: int, maximum: int) -> None:
    # Ranges shared with the MCP_* settings (icn_mcp.config): beyond them SQLite reads a
    # pragma back as something else, or the retry backoff overflows.
    ok = _is_int(value) and minimum <= value <= maximum  # type: ignore[operator]
    _require(ok, name, value, f"an integer from {minimum} to {maximum}")


def _require_seconds(name: str, value: object) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= MAX_INTERVAL_S  # also refuses NaN
    )
    _require(ok, name, value, f"a number of seconds from 0 to {MAX_INTERVAL_S:g}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse_nested(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        raise DatabaseError(
            "a transaction is already open on this thread's connection; nested transactions are not supported"
        )


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the original error matters more
            log.warning("rollback failed: %s", exc)


def _restore_busy_timeout(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Best effort after a failed begin: the busy timeout back from a polled begin's 0
    (left at 0, later statements of the connection would fail when busy, not wait)."""
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    except sqlite3.Error as exc:
        log.warning("could not restore busy_timeout on a connection: %s", exc)


def _commit(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("COMMIT")
    except BaseException:
        # COMMIT can fail (disk full, I/O error); never leave the transaction open.
        _rollback(conn)
        raise


def _in_transaction(conn: sqlite3.Connection) -> bool:
    try:
        return conn.in_transaction
    except sqlite3.Error:  # closed
        return False


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error as exc:
        log.debug("closing a connection failed: %s", exc)


def _after_fork_in_child() -> None:
    for db in list(_open_databases):
        db._forget_after_fork()


def _close_all_at_exit() -> None:
    for db in list(_open_databases):
        if db._pid == os.getpid():
            db.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
