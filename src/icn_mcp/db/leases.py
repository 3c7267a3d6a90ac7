"""Advisory locks (leases) shared by every process and host using one database.

An :class:`AdvisoryLease` is one row in ``advisory_locks`` with an owner and an
expiry, taken in a write transaction of the database; an expired lease may be taken
over, so a holder killed with -9 loses the lock when its lease ends. The waiting,
polling and error handling live here once; each backend supplies the SQL as a
:class:`LeaseSQL` (SQLite: :mod:`icn_mcp.db.sqlite.locks`, with host timestamps;
PostgreSQL: :mod:`icn_mcp.db.postgres.locks`, with the server's ``now()``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from icn_mcp.db.base import ADVISORY_POLL_MAX_S, ADVISORY_POLL_MIN_S, BaseDatabase, default_owner_id
from icn_mcp.errors import DatabaseError, LockLost, LockTimeout

__all__ = ["AdvisoryLease", "LeaseSQL"]

log = logging.getLogger("icn_mcp.db.locks")


class LeaseSQL(Protocol):
    """A backend's statements for ``advisory_locks``; each runs inside a transaction."""

    def take(self, conn: Any, name: str, owner: str, ttl_s: float) -> tuple[str, str] | None:
        """Insert or take over an expired (or our own) lease: ``(acquired_at, expires_at)``."""

    def holder(self, conn: Any, name: str) -> tuple[str, str] | None:
        """``(owner, expires_at)`` of the current row, if any."""

    def renew(self, conn: Any, name: str, owner: str, ttl_s: float) -> str | None:
        """Extend a live lease of ``owner``; the new expiry, or None if it is not live."""

    def release(self, conn: Any, name: str, owner: str) -> int:
        """Delete the row of ``owner``; the number of rows deleted."""


#: The longest lease and the longest wait an advisory lock accepts: a lease's expiry
#: must stay a representable timestamp (a ttl of 1e12 s raised OverflowError).
MAX_ADVISORY_TTL_S = 365 * 24 * 60 * 60.0
MAX_ADVISORY_WAIT_S = 24 * 60 * 60.0


def _check_seconds(name: str, value: object, *, minimum_exclusive: bool, maximum: float) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (
            (0 < value <= maximum) if minimum_exclusive else (0 <= value <= maximum)  # NaN fails both
        )
    )
    if not ok:
        allowed = f"above 0 and at most {maximum:.0f}" if minimum_exclusive else f"from 0 to {maximum:.0f}"
        raise DatabaseError(f"advisory lock {name}={value!r} is not valid: expected a number of seconds {allowed}")


@dataclass
class AdvisoryLease:
    """A held cross-process lock: its row in ``advisory_locks``.

    Use as a context manager (released on exit), or call :meth:`release`.
    :meth:`renew` extends the lease; it raises :class:`LockLost` once the lease has
    expired (whether or not another process took the lock since) or was released.
    """

    db: BaseDatabase
    name: str
    owner: str
    ttl_s: float
    acquired_at: str
    expires_at: str
    released: bool = False

    @classmethod
    def acquire(
        cls,
        db: BaseDatabase,
        sql: LeaseSQL,
        name: str,
        *,
        ttl_s: float,
        wait_s: float = 0.0,
        owner: str | None = None,
    ) -> AdvisoryLease:
        """Take the lease on ``name``, waiting up to ``wait_s``; LockTimeout names the holder."""
        if not isinstance(name, str) or not name:
            raise DatabaseError(f"advisory lock name must be a non-empty string, not {name!r}")
        _check_seconds("ttl_s", ttl_s, minimum_exclusive=True, maximum=MAX_ADVISORY_TTL_S)
        # A NaN wait made the deadline never arrive: waiting forever on a held lock.
        _check_seconds("wait_s", wait_s, minimum_exclusive=False, maximum=MAX_ADVISORY_WAIT_S)
        owner = owner or default_owner_id()
        deadline = time.monotonic() + max(wait_s, 0.0)
        start = time.monotonic()
        delay = ADVISORY_POLL_MIN_S
        while True:

            def attempt(conn: Any) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
                taken = sql.take(conn, name, owner, ttl_s)
                return taken, (None if taken is not None else sql.holder(conn, name))

            taken, held = db.run_in_transaction(attempt)
            if taken is not None:
                log.debug("advisory lock %r acquired by %s until %s", name, owner, taken[1])
                return cls(db, name, owner, ttl_s, taken[0], taken[1])
            if time.monotonic() >= deadline:
                db._count("lock_waits")  # type: ignore[attr-defined]
                raise LockTimeout(
                    name,
                    time.monotonic() - start,
                    owner=held[0] if held else None,
                    expires_at=held[1] if held else None,
                )
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, ADVISORY_POLL_MAX_S)

    @property
    def _sql(self) -> LeaseSQL:
        return self.db.lease_sql  # type: ignore[attr-defined]

    def renew(self, ttl_s: float | None = None) -> str:
        """Extend the lease by ``ttl_s`` (default: the original ttl) from now."""
        ttl = self.ttl_s if ttl_s is None else ttl_s
        _check_seconds("ttl_s", ttl, minimum_exclusive=True, maximum=MAX_ADVISORY_TTL_S)
        if self.released:
            raise LockLost(self.name, self.owner)
        expires_at = self.db.run_in_transaction(lambda conn: self._sql.renew(conn, self.name, self.owner, ttl))
        if expires_at is None:
            raise LockLost(self.name, self.owner)
        self.expires_at = expires_at
        return expires_at

    def release(self) -> bool:
        """Release the lock if we still own it; False if it was no longer ours."""
        if self.released:
            return False
        self.released = True
        removed = self.db.run_in_transaction(lambda conn: self._sql.release(conn, self.name, self.owner)) == 1
        if not removed:
            log.warning("advisory lock %r was no longer held by %s at release", self.name, self.owner)
        return removed

    def __enter__(self) -> AdvisoryLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
