"""Waiting claims: an agent asks for work once and gets it the moment it exists.

A claim with ``wait_s > 0`` that finds nothing claimable waits, holding no database
connection and no worker thread: it is an asyncio future in one queue per server
process. ONE watcher task per process notices when work may have appeared and then
offers it to the waiters in arrival order:

- a commit by any connection, of this or another process or host (a task created, a
  dependency completed, a claim released): the database's change feed, read every
  ``poll_interval_s`` while anyone waits. On SQLite ``PRAGMA data_version`` on one
  dedicated connection (a few microseconds on the event loop, never waiting for a
  lock: when it cannot be read, look anyway); on PostgreSQL a count of
  ``NOTIFY icn_mcp_work`` received on one dedicated LISTEN connection (when that is
  down, look every ``fallback_poll_s``);
- a commit by this process: :meth:`ClaimWaiters.notify`, so it need not wait for
  the next poll;
- a lease that expires (no commit announces it): the earliest lease among claimed
  tasks is re-read after every change, and the watcher acts when it is due.

Serving is one claim per waiter, first come first served, through the same
``claim_next_task`` as an ordinary claim: one task goes to one waiter, and a waiter
whose claim finds nothing (another process was quicker) keeps waiting for the rest
of its time. SIGTERM (:meth:`ClaimWaiters.close`) ends every wait at once with
nothing claimed. A client that disconnects while waiting is forgotten.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable

from icn_mcp.store.models import Claim

__all__ = ["ClaimWaiters", "DEFAULT_POLL_INTERVAL_S", "client_disconnected"]

log = logging.getLogger("icn_mcp.server.waiting")

#: How often the watcher reads ``PRAGMA data_version`` while anyone waits. A commit by
#: another process is noticed within this time; one by this process at once.
DEFAULT_POLL_INTERVAL_S = 0.01


@dataclass(eq=False)
class _Waiter:
    #: Claims for this waiter's caller, checking its credential again first (a token
    #: revoked while it waited must not be handed a task).
    claim: Callable[[], Awaitable[Claim | None]]
    future: asyncio.Future[Claim | None]
    #: A claim for this waiter is running: its result is the answer, whatever happens.
    claiming: bool = False
    #: The request stopped waiting (timeout, disconnect, cancel): skip it.
    gone: bool = False
    since: float = field(default_factory=time.monotonic)


class ClaimWaiters:
    """The waiting claims of one server process and their one watcher.

    Each waiter brings its own ``claim()`` (in a worker thread: the caller's
    credential checked again, then ``Store.claim_next_task``); ``data_version()``
    returns a number that changes when anyone commits, or None when it cannot tell;
    while ``data_version()`` answers None the waiters are offered work at most every
    ``fallback_poll_s`` (0: at every poll); ``next_lease_expiry()`` is the earliest
    lease of a claimed task, or None; ``now()`` the clock leases are written with.
    """

    def __init__(
        self,
        *,
        data_version: Callable[[], Awaitable[int | None]],
        next_lease_expiry: Callable[[], Awaitable[datetime | None]],
        now: Callable[[], datetime],
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        fallback_poll_s: float = 0.0,
        on_wake: Callable[[float], None] | None = None,
        on_empty_wake: Callable[[], None] | None = None,
    ) -> None:
        self._data_version = data_version
        self._next_lease_expiry = next_lease_expiry
        self._now = now
        self.poll_interval_s = poll_interval_s
        self.fallback_poll_s = fallback_poll_s
        self._on_wake = on_wake
        self._on_empty_wake = on_empty_wake
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._changed: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def waiting(self) -> int:
        """How many claims are waiting now."""
        return sum(1 for waiter in self._waiters if not waiter.gone)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> bool:
        """Are claims waiting? Then a new waiting claim queues behind them."""
        return self._live()

    async def wait(
        self,
        claim: Callable[[], Awaitable[Claim | None]],
        wait_s: float,
        *,
        disconnected: Callable[[], Awaitable[Any]] | None = None,
    ) -> Claim | None:
        """Wait up to ``wait_s`` seconds, behind the claims already waiting, for a claim.

        The caller has just found nothing claimable (or others wait before it).
        Returns the claim, or None when nothing became claimable in time, when the
        server is shutting down, or when ``disconnected()`` finished first (the client
        is gone). Errors of the claim itself (revoked agent...) are raised.
        """
        if wait_s <= 0 or self._closed:
            return None
        loop = asyncio.get_running_loop()
        waiter = _Waiter(claim, loop.create_future())
        self._waiters.append(waiter)
        self._start_watcher()
        self.notify()
        gone: asyncio.Task[Any] | None = None
        try:
            pending: set[asyncio.Future[Any]] = {waiter.future}
            if disconnected is not None:
                gone = asyncio.ensure_future(disconnected())
                pending.add(gone)
            await asyncio.wait(pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.future.done() and waiter.claiming:
                # Its claim is being made right now: that claim is the answer (else the
                # task would stay claimed by an agent that was told "nothing").
                await asyncio.wait({waiter.future})
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()
            return None
        finally:
            waiter.gone = True
            if not waiter.future.done():
                waiter.future.cancel()
            if gone is not None and not gone.done():
                gone.cancel()
            self._forget(waiter)

    def notify(self) -> None:
        """Something this process committed may have made a task claimable."""
        if self._changed is not None:
            self._changed.set()

    def close(self) -> None:
        """End every wait at once with nothing claimed (shutdown); later claims do not wait."""
        self._closed = True
        for waiter in list(self._waiters):
            if not waiter.future.done() and not waiter.claiming:
                waiter.future.set_result(None)
        self.notify()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the watcher to stop."""
        self.close()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                pass

    # -- the watcher ----------------------------------------------------------------

    def _forget(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _start_watcher(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _live(self) -> bool:
        return not self._closed and any(not waiter.gone for waiter in self._waiters)

    async def _watch(self) -> None:
        assert self._changed is not None
        changed = self._changed
        version: int | None = None
        next_expiry: datetime | None = None
        looked = 0.0
        while self._live():
            if not changed.is_set():
                try:
                    await asyncio.wait_for(changed.wait(), self.poll_interval_s)
                except TimeoutError:
                    pass
            notified = changed.is_set()
            changed.clear()
            if not self._live():
                break
            current = await self._data_version()
            due = next_expiry is not None and self._now() >= next_expiry
            blind = current is None and time.monotonic() - looked >= self.fallback_poll_s
            if notified or due or blind or (current is not None and current != version):
                version = current
                noticed = looked = time.monotonic()
                try:
                    await self._serve(noticed)
                    next_expiry = await self._next_lease_expiry()
                except Exception:  # noqa: BLE001 - the waiters keep waiting
                    log.warning("waiting claims: serving the waiters failed", exc_info=True)
                    await asyncio.sleep(self.poll_interval_s)

    async def _serve(self, noticed: float) -> None:
        """Offer work to the waiters in arrival order until a claim finds nothing."""
        first = True
        for waiter in list(self._waiters):
            if waiter.gone or waiter.future.done():
                continue
            if self._closed:
                return
            waiter.claiming = True
            try:
                claimed = await waiter.claim()
            except Exception as exc:  # noqa: BLE001 - the waiter's own error (revoked...)
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
                continue
            finally:
                waiter.claiming = False
            if claimed is None:
                if first and self._on_empty_wake is not None:
                    self._on_empty_wake()
                return
            first = False
            if not waiter.future.done():
                waiter.future.set_result(claimed)
            if self._on_wake is not None:
                self._on_wake(time.monotonic() - noticed)


async def client_disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    """Returns when the HTTP client goes away (its request body already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
