"""Keyed in-process locks for threads and asyncio, shared by both backends.

:class:`KeyedLocks` serialises work on one key inside one process. The same lock is
usable from threads (``with locks("k"):``) and from asyncio (``async with
locks("k"):``): waiting threads block on an Event, waiting coroutines await a future,
and a release hands the lock to the oldest waiter (FIFO), whichever kind it is. An
asyncio waiter never occupies a thread. Keys are forgotten once nobody holds or waits
for them, so a stream of distinct keys does not leak memory.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

from icn_mcp.errors import DatabaseError, LockTimeout

__all__ = ["KeyedLocks", "KeyLock", "with_lock"]


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
        self.waiters: collections.deque[_Waiter] = collections.deque()
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

    def __call__(self, key: str, *, timeout: float | None = None) -> KeyLock:
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
        except (TimeoutError, asyncio.CancelledError) as exc:
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

    def __enter__(self) -> KeyLock:
        self._locks.acquire(self.key, self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self._locks.release(self.key)

    async def __aenter__(self) -> KeyLock:
        await self._locks.acquire_async(self.key, self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._locks.release(self.key)


_process_locks = KeyedLocks()


def with_lock(key: str, *, timeout: float | None = None) -> KeyLock:
    """The process-wide keyed lock on ``key``: ``with with_lock("k"):`` or ``async with``."""
    return _process_locks(key, timeout=timeout)
