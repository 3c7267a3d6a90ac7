"""Noticing commits made by any connection, in any process, to one SQLite file.

``PRAGMA data_version`` on one connection changes whenever another connection (of this
or any other process) commits to the database. A server keeps ONE such connection for
everything that waits for changes (waiting claims), so waiting costs one cheap read per
poll, whatever the number of waiters.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

__all__ = ["DataVersion"]


class DataVersion:
    """``PRAGMA data_version`` read on one dedicated, read-only connection.

    Calls are serialised by a lock, so the connection may be used from any thread.
    The busy timeout defaults to 0: a server reads it on its event loop, where it must
    never wait; :meth:`read_or_none` answers None when the read would have to wait.
    """

    #: When the version cannot be read (busy), look for work at the next poll anyway.
    fallback_poll_s = 0.0

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        # Read-only: the watcher never writes and never creates the file.
        uri = self.path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        return conn

    def read(self) -> int:
        """The current data version; a different number means another connection committed."""
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            try:
                return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                # A broken connection (file replaced, I/O error): reopen on the next read.
                self._close_locked()
                raise

    def read_or_none(self) -> int | None:
        """:meth:`read`, or None when it cannot be read right now (busy, I/O error):
        the caller cannot tell whether anything changed and should look."""
        try:
            return self.read()
        except sqlite3.Error:
            return None

    def version(self) -> int | None:
        """:meth:`read_or_none` (the :class:`~icn_mcp.db.base.ChangeFeed` protocol)."""
        return self.read_or_none()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
