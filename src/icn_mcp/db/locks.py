"""Keyed in-process locks and cross-process advisory locks (leases).

:class:`KeyedLocks` serialises work on one key inside one process. The same lock is
usable from threads (``with locks("k"):``) and from asyncio (``async with
locks("k"):``): waiting threads block on an Event, waiting coroutines await a future,
and a release hands the lock to the oldest waiter (FIFO), whichever kind it is. An
asyncio waiter never occupies a thread. Keys are forgotten once nobody holds or waits
for them, so a stream of distinct keys does not leak memory.

:class:`AdvisoryLease` is a lock shared by every process using the database: one row
in ``advisory_locks`` with an owner and an expiry. It is taken inside ``BEGIN
IMMEDIATE``; an expired lease may be taken over, so a holder killed with -9 loses the
lock when its lease ends.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Deque

from icn_mcp.db.timestamps import format_ts, utc_now
from icn_mcp.errors import DatabaseError, LockLost, LockTimeout

if TYPE_CHECKING:
    from icn_mcp.db.database import Database

__all__ = ["KeyedLocks", "KeyLock", "AdvisoryLease", "default_owner_id", "with_lock"]

log = logging.getLogger("icn_mcp.db.locks")

#: How often a waiting advisory lock polls the table, at first and at most.
ADVISORY_POLL_MIN_S = 0.01
ADVISORY_POLL_MAX_S = 0.25


class _Waiter:
    __slots__ = ("granted", "event", "loop", "future", "owner")

    def __init__(self, owner: object) -> None:
        self.granted = False
        self.owner = owner
        self.event: threading.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future[None] | None = None

    def grant(self) -> bool:
        """Hand the lock to this waiter; False if it can no longer take it.

        Called with the registry mutex held.
        """
        if self.event is not None:
            self.granted = True
            self.event.set()
            return True
        assert self.loop is not None and self.future is not None
        if self.future.done():  # cancelled or timed out already
            return False
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # its event loop is closed: the waiter is gone
            return False
        self.granted = True
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Entry:
    __slots__ = ("owner", "waiters", "refs")

    def __init__(self) -> None:
        self.owner: object | None = None
        self.waiters: Deque[_Waiter] = collections.deque()
        self.refs = 0  # holders + waiters; the entry is dropped at zero


def _current_owner() -> object:
    """The thread, or the asyncio task when called from a running event loop."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else threading.get_ident()


class KeyedLocks:
    """A registry of named, non-reentrant locks for threads and coroutines."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        #: Acquisitions that had to wait (for metrics).
        self.waits = 0

    def __call__(self, key: str, *, timeout: float | None = None) -> "KeyLock":
        """A context manager (sync and async) holding the lock on ``key``."""
        return KeyLock(self, key, timeout)

    def __len__(self) -> int:
        """Number of keys currently held or waited for."""
        with self._mutex:
            return len(self._entries)

    def locked(self, key: str) -> bool:
        with self._mutex:
            entry = self._entries.get(key)
            return entry is not None and entry.owner is not None

    # -- acquisition ---------------------------------------------------------------

    def _enter(self, key: str, owner: object) -> tuple[_Entry, _Waiter | None]:
        """Take the lock at once, or enqueue a waiter. Mutex held by the caller."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        if entry.owner == owner and entry.owner is not None:
            raise DatabaseError(
                f"lock {key!r} is already held by this "
                f"{'task' if isinstance(owner, asyncio.Task) else 'thread'}; "
                "keyed locks are not reentrant"
            )
        entry.refs += 1
        if entry.owner is None and not entry.waiters:
            entry.owner = owner
            return entry, None
        waiter = _Waiter(owner)
        entry.waiters.append(waiter)
        self.waits += 1
        return entry, waiter

    def _abandon(self, key: str, entry: _Entry, waiter: _Waiter) -> None:
        """A waiter gave up before being granted. Mutex held by the caller.

        Whoever takes a waiter out of the queue drops its reference, exactly once: here
        if it is still queued; otherwise release() already skipped it (a cancelled
        future) and dropped it. Dropping it twice would forget the key while another
        holder has it, letting a third one in beside it.
        """
        try:
            entry.waiters.remove(waiter)
        except ValueError:
            return  # release() already removed it and dropped its reference
        entry.refs -= 1
        if entry.refs == 0:
            del self._entries[key]

    def acquire(self, key: str, timeout: float | None = None) -> None:
        """Block the calling thread until ``key`` is ours; LockTimeout after ``timeout``."""
        owner = threading.get_ident()
        start = time.monotonic()
        with self._mutex:
            entry, waiter = self._enter(key, owner)
            if waiter is None:
                return
            waiter.event = threading.Event()
        waiter.event.wait(timeout)
        with self._mutex:
            if waiter.granted:
                entry.owner = owner
                return
            self._abandon(key, entry, waiter)
        raise LockTimeout(key, time.monotonic() - start)

    async def acquire_async(self, key: str, timeout: float | None = None) -> None:
        """Await ``key`` without occupying a thread; LockTimeout after ``timeout``."""
        owner = _current_owner()
        start = time.monotonic()
        with self._mutex:
            entry, waiter = self._enter(key, owner)
            if waiter is None:
                return
            waiter.loop = asyncio.get_running_loop()
            waiter.future = waiter.loop.create_future()
        try:
            if timeout is None:
                await waiter.future
            else:
                await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except (asyncio.CancelledError, asyncio.TimeoutError) as exc:
            with self._mutex:
                granted = waiter.granted
                if not granted:
                    waiter.future.cancel()
                    self._abandon(key, entry, waiter)
                else:
                    entry.owner = owner
            if granted:
                # Handed to us just as we gave up: pass it on, never strand it.
                self.release(key)
            if isinstance(exc, asyncio.TimeoutError):
                raise LockTimeout(key, time.monotonic() - start) from None
            raise
        with self._mutex:
            entry.owner = owner

    def release(self, key: str) -> None:
        """Release ``key`` and hand it to the oldest live waiter, if any."""
        with self._mutex:
            entry = self._entries.get(key)
            if entry is None or entry.owner is None:
                raise DatabaseError(f"lock {key!r} is not held")
            entry.refs -= 1
            entry.owner = None
            while entry.waiters:
                waiter = entry.waiters.popleft()
                if waiter.grant():
                    # Ownership passes directly; the new owner records itself.
                    entry.owner = waiter.owner
                    return
                entry.refs -= 1  # that waiter is gone
            if entry.refs == 0:
                del self._entries[key]


class KeyLock:
    """``with`` / ``async with`` form of one key of a :class:`KeyedLocks`."""

    __slots__ = ("_locks", "key", "timeout")

    def __init__(self, locks: KeyedLocks, key: str, timeout: float | None) -> None:
        if not isinstance(key, str) or not key:
            raise DatabaseError(f"lock key must be a non-empty string, not {key!r}")
        self._locks = locks
        self.key = key
        self.timeout = timeout

    def __enter__(self) -> "KeyLock":
        self._locks.acquire(self.key, self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self._locks.release(self.key)

    async def __aenter__(self) -> "KeyLock":
        await self._locks.acquire_async(self.key, self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._locks.release(self.key)


_process_locks = KeyedLocks()


def with_lock(key: str, *, timeout: float | None = None) -> KeyLock:
    """The process-wide keyed lock on ``key``: ``with with_lock("k"):`` or ``async with``."""
    return _process_locks(key, timeout=timeout)


# -- advisory locks ----------------------------------------------------------------


def default_owner_id() -> str:
    """``host:pid:random``: unique per acquisition, readable by an operator."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_ACQUIRE_SQL = """
INSERT INTO advisory_locks (name, owner, acquired_at, expires_at)
VALUES (?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    owner = excluded.owner,
    acquired_at = excluded.acquired_at,
    expires_at = excluded.expires_at
WHERE advisory_locks.expires_at <= excluded.acquired_at
   OR advisory_locks.owner = excluded.owner
RETURNING owner
"""


@dataclass
class AdvisoryLease:
    """A held cross-process lock: its row in ``advisory_locks``.

    Use as a context manager (released on exit), or call :meth:`release`.
    :meth:`renew` extends the lease; it raises :class:`LockLost` once the lease has
    expired (whether or not another process took the lock since) or was released.
    """

    db: "Database"
    name: str
    owner: str
    ttl_s: float
    acquired_at: str
    expires_at: str
    released: bool = False

    @classmethod
    def acquire(
        cls,
        db: "Database",
        name: str,
        *,
        ttl_s: float,
        wait_s: float = 0.0,
        owner: str | None = None,
    ) -> "AdvisoryLease":
        if not isinstance(name, str) or not name:
            raise DatabaseError(f"advisory lock name must be a non-empty string, not {name!r}")
        if not ttl_s > 0:
            raise DatabaseError(f"advisory lock ttl_s must be > 0, not {ttl_s!r}")
        owner = owner or default_owner_id()
        deadline = time.monotonic() + max(wait_s, 0.0)
        start = time.monotonic()
        delay = ADVISORY_POLL_MIN_S
        while True:

            def attempt(conn: Any) -> tuple[bool, Any, str, str]:
                # The clock is read inside the transaction, once the write lock is
                # ours: a lease that waited for the lock starts when it is taken, not
                # when it was asked for (issue 9 item 11).
                now = utc_now()
                acquired_at, expires_at = format_ts(now), format_ts(now, plus_s=ttl_s)
                row = conn.execute(
                    _ACQUIRE_SQL, (name, owner, acquired_at, expires_at)
                ).fetchone()
                if row is not None:
                    return True, None, acquired_at, expires_at
                held = conn.execute(
                    "SELECT owner, expires_at FROM advisory_locks WHERE name = ?", (name,)
                ).fetchone()
                return False, held, acquired_at, expires_at

            ok, held, acquired_at, expires_at = db.run_in_transaction(attempt)
            if ok:
                log.debug("advisory lock %r acquired by %s until %s", name, owner, expires_at)
                return cls(db, name, owner, ttl_s, acquired_at, expires_at)
            if time.monotonic() >= deadline:
                db._count("lock_waits")
                raise LockTimeout(
                    name,
                    time.monotonic() - start,
                    owner=held[0] if held else None,
                    expires_at=held[1] if held else None,
                )
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, ADVISORY_POLL_MAX_S)

    def renew(self, ttl_s: float | None = None) -> str:
        """Extend the lease by ``ttl_s`` (default: the original ttl) from now."""
        ttl = self.ttl_s if ttl_s is None else ttl_s

        def renew(conn: Any) -> tuple[int, str]:
            now = utc_now()  # inside the transaction, as in acquire
            expires_at = format_ts(now, plus_s=ttl)
            renewed = conn.execute(
                "UPDATE advisory_locks SET expires_at = ? "
                "WHERE name = ? AND owner = ? AND expires_at > ?",
                (expires_at, self.name, self.owner, format_ts(now)),
            ).rowcount
            return renewed, expires_at

        if self.released:
            raise LockLost(self.name, self.owner)
        renewed, expires_at = self.db.run_in_transaction(renew)
        if renewed != 1:
            raise LockLost(self.name, self.owner)
        self.expires_at = expires_at
        return expires_at

    def release(self) -> bool:
        """Release the lock if we still own it; False if it was no longer ours."""
        if self.released:
            return False
        self.released = True

        def delete(conn: Any) -> int:
            return conn.execute(
                "DELETE FROM advisory_locks WHERE name = ? AND owner = ?",
                (self.name, self.owner),
            ).rowcount

        removed = self.db.run_in_transaction(delete) == 1
        if not removed:
            log.warning("advisory lock %r was no longer held by %s at release", self.name, self.owner)
        return removed

    def __enter__(self) -> "AdvisoryLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
