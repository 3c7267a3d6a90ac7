"""Full-disk incidents of one database (issue 9 item 12).

When the filesystem holding the database is full, SQLite fails every write that needs
a new page with SQLITE_FULL ("database or disk is full"). That is not a bug to log
with a traceback per request: it is one incident, from the first refused write until
a write succeeds again. :class:`StorageWatch` keeps that state for a
:class:`~icn_mcp.db.Database`: it turns each such error into
:class:`~icn_mcp.errors.StorageFull`, logs the incident once when it begins and once
when it ends, and counts refused writes and incidents for the metrics. Writes are
never blocked by it: each one is tried, so writes resume by themselves the moment
space returns.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

from icn_mcp.db.timestamps import format_ts, utc_now
from icn_mcp.errors import StorageFull

__all__ = ["StorageWatch", "is_storage_full_error", "STORAGE_STATS_KEYS", "PROBE_INTERVAL_S"]

log = logging.getLogger("icn_mcp.db")

_SQLITE_FULL = 13
_SQLITE_IOERR = 10

#: Less free space than this makes an I/O error a full-disk error (see
#: :func:`is_storage_full_error`): SQLite needs whole pages and 32 KiB -shm regions.
NEARLY_FULL_BYTES = 1 << 20

#: The keys :meth:`StorageWatch.stats` adds to ``Database.get_stats()``.
STORAGE_STATS_KEYS = ("storage_full", "storage_full_errors", "storage_full_incidents")

#: While storage is full, a health check probes with a real write at most this often.
PROBE_INTERVAL_S = 1.0


def is_storage_full_error(exc: BaseException, directory: Path | None = None) -> bool:
    """True when ``exc`` says there is no space left: SQLITE_FULL, an OSError
    ENOSPC/EDQUOT, or, when ``directory`` is given, any SQLITE_IOERR while that
    directory's filesystem has (next to) nothing free. SQLite reports a full disk as
    an I/O error where it cannot tell: growing the ``-shm`` file, for one, fails with
    SQLITE_IOERR_SHMSIZE ("disk I/O error")."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        if code & 0xFF == _SQLITE_FULL:
            return True
        return code & 0xFF == _SQLITE_IOERR and directory is not None and _nearly_full(directory)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _nearly_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    # root may write into the blocks reserved for it; others may not.
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize < NEARLY_FULL_BYTES


class StorageWatch:
    """Is the database's storage full? Since when, and how many writes were refused."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        #: When the current incident began (a timestamp), None while writes succeed.
        self.since: str | None = None
        self._errors = 0
        self._incidents = 0
        self._refused_in_incident = 0
        self._last_probe = 0.0

    @property
    def full(self) -> bool:
        return self.since is not None

    def refused(self, exc: BaseException) -> StorageFull:
        """Note a write refused for want of space; the error to raise instead."""
        with self._lock:
            self._errors += 1
            self._refused_in_incident += 1
            since = self.since
            if since is None:
                since = self.since = format_ts(utc_now())
                self._incidents += 1
                # One line for the whole incident: every refused request is in the
                # access log (status 507) and the metrics, not here.
                log.error(
                    "database %s: the disk is full (%s); writes are refused with "
                    "storage_full until space is freed on %s",
                    self._path,
                    exc,
                    self._path.parent,
                )
        return StorageFull(str(self._path), str(exc), since=since)

    def wrote(self) -> None:
        """Note that a write reached the disk: the incident, if any, is over."""
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            log.warning(
                "database %s: writes succeed again (%d refused for want of space since %s)",
                self._path,
                self._refused_in_incident,
                self.since,
            )
            self.since = None
            self._refused_in_incident = 0

    def probe_due(self) -> bool:
        """True at most once per :data:`PROBE_INTERVAL_S` while storage is full."""
        if self.since is None:
            return False
        with self._lock:
            now = time.monotonic()
            if now - self._last_probe < PROBE_INTERVAL_S:
                return False
            self._last_probe = now
            return True

    def stats(self) -> dict[str, int]:
        """``storage_full`` (0 or 1), ``storage_full_errors``, ``storage_full_incidents``."""
        with self._lock:
            return {
                "storage_full": int(self.since is not None),
                "storage_full_errors": self._errors,
                "storage_full_incidents": self._incidents,
            }
