"""Noticing work on PostgreSQL: LISTEN on one dedicated connection per server process.

Migration 0007 makes every row that becomes claimable (a task created open, a last
dependency completed, a claim put back) ``NOTIFY icn_mcp_work`` at commit, from
whichever host committed it. :class:`WorkListener` holds ONE connection of its own,
outside the pool (a pooled connection would carry LISTEN back into the pool), in a
daemon thread, and counts the notifications: :meth:`WorkListener.version` changes when
work may have appeared anywhere, which is what waiting claims watch
(:class:`icn_mcp.server.waiting.ClaimWaiters`).

The listener proves itself: after each (re)connection it sends a notification to
itself and waits for it. Until that probe arrives, or while the connection is down,
:meth:`~WorkListener.version` answers None and the waiters fall back to looking every
:data:`FALLBACK_POLL_S`. That is also what happens behind a PgBouncer in transaction
pooling mode, where LISTEN cannot work: the probe never comes back. A connection
lost is noticed within seconds (TCP keepalives and ``tcp_user_timeout``, as on every
connection: :data:`icn_mcp.db.postgres.driver.DEAD_PEER_SETTINGS`), then
reopened with backoff; every reconnection counts as a change, because notifications
sent while it was down are lost.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from icn_mcp.db.postgres.database import PostgresDatabase

__all__ = ["WorkListener", "CHANNEL", "FALLBACK_POLL_S"]

log = logging.getLogger("icn_mcp.db")

#: The channel migration 0007's trigger notifies.
CHANNEL = "icn_mcp_work"
#: How often waiting claims look for work while the listener is not working.
FALLBACK_POLL_S = 0.25
#: How long the self-test notification may take to come back.
PROBE_TIMEOUT_S = 2.0
#: Reconnection backoff: first and longest wait.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


class WorkListener:
    """``LISTEN icn_mcp_work`` on a dedicated connection, in a daemon thread."""

    fallback_poll_s = FALLBACK_POLL_S

    def __init__(
        self,
        db: PostgresDatabase,
        *,
        on_change: Callable[[], None] | None = None,
        channel: str = CHANNEL,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ):
        self._db = db
        self._on_change = on_change
        self._channel = channel
        self._probe_timeout_s = probe_timeout_s
        self._lock = threading.Lock()
        self._count = 0
        self._working = False
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread = threading.Thread(target=self._run, name="icn-mcp-listen", daemon=True)
        #: Connections opened (the first, then one per reconnection).
        self.connections = 0

    def start(self) -> WorkListener:
        self._thread.start()
        return self

    @property
    def working(self) -> bool:
        """Is LISTEN in place and proven by a notification that came back?"""
        return self._working

    def version(self) -> int | None:
        """A number that changes when work may have appeared; None while the listener
        is not working (then look every :data:`FALLBACK_POLL_S`)."""
        with self._lock:
            return self._count if self._working else None

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening and close the connection (the thread ends within ~1 s)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------------------

    def _changed(self) -> None:
        with self._lock:
            self._count += 1
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:  # noqa: BLE001 - the listener outlives its subscriber
                log.debug("LISTEN %s: on_change failed", self._channel, exc_info=True)

    def _run(self) -> None:
        delay = RETRY_MIN_S
        while not self._stop.is_set():
            try:
                self._listen()
                delay = RETRY_MIN_S
            except Exception as exc:  # noqa: BLE001 - a listener must outlive its connections
                if self._stop.is_set():
                    break
                if self._working or self.connections <= 1:
                    log.warning(
                        "LISTEN %s on %s failed (%s); waiting claims poll every %g s until it is back",
                        self._channel,
                        self._db.target,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                        FALLBACK_POLL_S,
                    )
            finally:
                self._working = False
                self._close_conn()
            self._stop.wait(delay)
            delay = min(RETRY_MAX_S, delay * 2)

    def _listen(self) -> None:
        psycopg = self._db._psycopg
        kwargs = {
            **self._db._connect_kwargs(),  # with driver.DEAD_PEER_SETTINGS
            "autocommit": True,
            # Told apart from the pool's connections in pg_stat_activity.
            "application_name": f"{self._db.application_name}-listen",
        }
        self._conn = conn = psycopg.connect(self._db.url, **kwargs)
        self.connections += 1
        conn.execute(f"LISTEN {self._channel}")
        probe = f"probe-{uuid.uuid4().hex}"
        conn.execute("SELECT pg_notify(%s, %s)", (self._channel, probe))
        deadline = time.monotonic() + self._probe_timeout_s
        while not self._working and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "LISTEN %s on %s: a test notification did not come back within %g s "
                    "(a transaction-pooling PgBouncer?); waiting claims poll every %g s",
                    self._channel,
                    self._db.target,
                    self._probe_timeout_s,
                    FALLBACK_POLL_S,
                )
                # Poll, and try again later: the pooler may have been bypassed since.
                self._stop.wait(60.0)
                return
            for notify in conn.notifies(timeout=min(remaining, 0.5)):
                if notify.payload == probe:
                    # Anything missed before LISTEN was in place counts as a change.
                    self._changed()
                    self._working = True
                    break
        while not self._stop.is_set():
            for _ in conn.notifies(timeout=1.0, stop_after=1):
                self._changed()
            # notifies() returns quietly at its timeout; a dead connection raises.
            if conn.closed or conn.broken:
                raise psycopg.OperationalError("the listening connection was closed")

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
