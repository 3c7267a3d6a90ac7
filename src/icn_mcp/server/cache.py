"""A value computed at most once per interval, shared by concurrent requests.

``/healthz/db`` and ``/metrics`` need no token and are never rate limited, yet the
database part of each is expensive: ``count(*)`` of every table plus a ``dbstat``
pass, and the counts of ``store.stats()``. :class:`SharedValue` keeps such a result
for ``ttl_s`` seconds (``MCP_HEALTH_CACHE_S``), and while it is being computed every
other caller waits for that one computation (single flight) instead of starting its
own, without holding a worker thread while it waits. So a flood of probes costs at
most one computation per interval, and at most one runs at any time.

A failed computation is not kept: its callers all get its exception, and the next
caller starts a new one. If the caller running the computation is cancelled, the
others start a new one rather than inherit its cancellation.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Generic, TypeVar

import anyio

__all__ = ["SharedValue"]

T = TypeVar("T")


class _Flight(Generic[T]):
    """One computation in progress; its callers wait on ``done``."""

    __slots__ = ("done", "value", "error", "cancelled")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.cancelled = False


class SharedValue(Generic[T]):
    """``await get()``: the result of ``compute()``, recomputed at most every ``ttl_s``.

    Use it from one event loop (the server's); ``compute`` is a coroutine function,
    typically a :meth:`Hub.call` of the blocking work. ``on_compute`` is called each
    time a computation starts (the metrics count them). ``ttl_s = 0`` keeps nothing,
    but callers arriving during a computation still share it.
    """

    def __init__(
        self,
        compute: Callable[[], Awaitable[T]],
        ttl_s: float,
        *,
        on_compute: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl_s >= 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s!r}")
        self._compute = compute
        self._ttl_s = ttl_s
        self._on_compute = on_compute
        self._clock = clock
        self._value: T | None = None
        self._expires_at: float | None = None  # None: no value kept
        self._flight: _Flight[T] | None = None

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    async def get(self) -> T:
        """The kept value while fresh, else the result of the one computation in flight."""
        while True:
            if self._expires_at is not None and self._clock() < self._expires_at:
                return self._value  # type: ignore[return-value]
            flight = self._flight
            if flight is None:
                return await self._lead()
            await flight.done.wait()
            if flight.cancelled:
                continue  # its leader was cancelled, not us: compute anew
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[return-value]

    async def _lead(self) -> T:
        flight: _Flight[T] = _Flight()
        self._flight = flight
        try:
            if self._on_compute is not None:
                self._on_compute()
            value = await self._compute()
        except anyio.get_cancelled_exc_class():
            flight.cancelled = True
            raise
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.value = value
            # The interval counts from the end of the computation: a value is never
            # served more than ttl_s after it was read.
            self._value, self._expires_at = value, self._clock() + self._ttl_s
            return value
        finally:
            self._flight = None
            flight.done.set()
