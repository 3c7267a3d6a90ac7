"""Per-key token buckets: the per-IP and per-token request limits of the server.

A limit of N requests per minute is a bucket of N tokens refilled at N/60 per second,
so a client may burst up to N requests and then sustain N per minute. Used only from
the event loop's thread, so it needs no lock.
"""

from __future__ import annotations

import math
import time
from typing import Callable

__all__ = ["RateLimiter"]

#: Buckets are pruned when there are more than this many keys.
PRUNE_ABOVE_KEYS = 10_000


class RateLimiter:
    """``per_min`` requests per minute for each key; ``per_min=0`` allows everything."""

    def __init__(self, per_min: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_min < 0:
            raise ValueError(f"per_min must be >= 0, got {per_min}")
        self.per_min = per_min
        self.capacity = float(per_min)
        self.rate = per_min / 60.0
        self._clock = clock
        #: key -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.per_min > 0

    def acquire(self, key: str) -> float:
        """Take one token for ``key``: 0.0 if allowed, else seconds until one is free."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens, then = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > PRUNE_ABOVE_KEYS:
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait_s: float) -> int:
        """Whole seconds for a Retry-After header (at least 1)."""
        return max(1, math.ceil(wait_s))

    def _prune(self, now: float) -> None:
        # A bucket that would be full again carries no information.
        refill_s = self.capacity / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill_s}
