"""Per-key token buckets: the per-IP and per-token request limits of the server.

A limit of N requests per minute is a bucket of N tokens refilled at N/60 per second,
so a client may burst up to N requests and then sustain N per minute. Used only from
the event loop's thread, so it needs no lock.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Callable

from icn_mcp.server.errors import ApiError

__all__ = ["RateLimiter", "RefusalLimiter", "REFUSED_REFRESH_PER_TOKEN_PER_MIN"]

#: Buckets are pruned when there are more than this many keys.
PRUNE_ABOVE_KEYS = 10_000
#: Refused refreshes one token may have per minute before it is answered 429.
REFUSED_REFRESH_PER_TOKEN_PER_MIN = 6


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

    def wait_s(self, key: str) -> float:
        """Seconds until ``key`` has a token (0.0 if it has one now), taking none."""
        if not self.enabled:
            return 0.0
        tokens, then = self._buckets.get(key, (self.capacity, self._clock()))
        tokens = min(self.capacity, tokens + (self._clock() - then) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait_s: float) -> int:
        """Whole seconds for a Retry-After header (at least 1)."""
        return max(1, math.ceil(wait_s))

    def _prune(self, now: float) -> None:
        # A bucket that would be full again carries no information.
        refill_s = self.capacity / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill_s}


class RefusalLimiter:
    """Limits refusals, not requests: after too many refused attempts with one
    token, further attempts with it are answered 429 (with Retry-After) before any
    work is done. Used for ``POST /api/agent/refresh``, which the original agent SDK
    repeats without end when it is refused (docs/server.md, "Clients"); its 429
    handling then ends the loop. Keyed by token only: refusals of other tokens from
    the same address (say, behind one NAT) must not block a good token's refresh,
    and a refusal is a cheap read, bounded per address by the ordinary rate limit.
    """

    def __init__(
        self, per_min: int = REFUSED_REFRESH_PER_TOKEN_PER_MIN, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limiter = RateLimiter(per_min, clock=clock)

    @staticmethod
    def _key(token: str) -> str:
        # A hash: the limiter never holds a usable token.
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:32]

    def check(self, token: str) -> None:
        """ApiError 429 when this token has used up its refusals."""
        wait = self.limiter.wait_s(self._key(token))
        if wait:
            retry_after = RateLimiter.retry_after(wait)
            raise ApiError(
                429,
                "rate_limited",
                {"retry_after_s": retry_after, "reason": "too many refused refreshes of this token"},
                {"Retry-After": str(retry_after)},
            )

    def refused(self, token: str) -> None:
        """Count one refusal against this token."""
        self.limiter.acquire(self._key(token))
