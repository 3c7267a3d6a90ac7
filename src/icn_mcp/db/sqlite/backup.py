"""Backups: create, verify, restore, prune.

A backup is one self-contained SQLite file (rollback-journal mode, no ``-wal``
beside it) plus a JSON manifest beside it (``<backup>.json``) recording its
SHA-256, size, creation time, source, SQLite version, latest migration and row
counts. See docs/backup.md for the design and the measurements behind it.

Create: the snapshot is taken with SQLite's online backup API in ONE step
(``pages=-1``) from a connection of its own, into a temporary file in the target
directory. One step means one read transaction, hence a consistent snapshot; in WAL
mode that read transaction never blocks writers. (A backup stepped a few pages at a
time restarts whenever another connection writes and may never finish.) The copy is
switched to ``journal_mode=DELETE``, checked, hashed, fsynced and only then linked
into place (never over a file already there), followed by its manifest and an
fsync of the directory. Any failure removes everything this call wrote; the live
database is only ever read (through a ``mode=ro`` URI, so a deleted database is an
error, never recreated).

Restore: the backup is verified first and refused, with the live database untouched,
when it is damaged, truncated, not SQLite, has migrations this code does not know,
foreign-key violations or virtual tables. Then ONE connection takes the live
database's write lock (``BEGIN IMMEDIATE``) and holds it while a second connection
copies the live database into the safety backup and the first replaces the content
by SQL from the attached backup, committing once. Every commit another connection
had acknowledged is therefore in the safety copy, or it waited for the lock and
landed in the restored database. The migrations the backup lacks run on the same
connection before that commit, so other connections, in any process, see the
restored content and the current schema as one committed change; no file is copied
over the database, so no stale ``-wal``/``-shm`` can be replayed over it. Afterwards
the integrity check runs. With no database file at all (a new machine), the backup
is copied, migrated and checked in a temporary file linked into place at the end.

Backups are read through ``immutable=1`` URIs, which never create ``-wal``/``-shm``
beside them. Concurrent backups prune under an flock on the directory and never
delete a newer backup or one whose maker has not returned; killed backups' temporary
files carry their host, pid and process start time and are removed by the next one.

Every public function takes ``db=`` (keyword). The functions of the same names in
:mod:`icn_mcp.db` work on the process-wide database with the ``MCP_BACKUP_*``
settings (:mod:`icn_mcp.db.process`). Names, manifests, default directories and the
result classes are shared with PostgreSQL in :mod:`icn_mcp.db.backup_files` (and
re-exported here).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

from icn_mcp.db import backup_files as _files
from icn_mcp.db.backup_files import (
    BACKUP_DIR_NAME,
    BACKUP_PREFIX,
    FILE_MODE,
    MANIFEST_FORMAT,
    MANIFEST_FORMAT_VERSION,
    MANIFEST_SUFFIX,
    NAME_TIME_FORMAT,
    SAFETY_BACKUP_PREFIX,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    BackupResult,
    BackupVerification,
    RestoreResult,
    backup_dir_for,
    manifest_path,
)
from icn_mcp.db.files import make_private_dirs
from icn_mcp.db.sqlite import migrations as _migrations
from icn_mcp.db.sqlite.catalog import count_rows, quote_identifier
from icn_mcp.db.timestamps import format_ts, utc_now
from icn_mcp.errors import BackupError, IcnMcpError, MigrationError, RestoreError

if TYPE_CHECKING:
    from icn_mcp.db.sqlite.database import Database

__all__ = [
    "BackupResult",
    "BackupVerification",
    "RestoreResult",
    "create_backup",
    "verify_backup",
    "restore_from_backup",
    "restore_new_database",
    "prune_backups",
    "list_temp_files",
    "remove_orphan_temp_files",
    "backup_dir_for",
    "list_backups",
    "latest_backup",
    "default_backup_dir",
    "manifest_path",
    "BACKUP_DIR_NAME",
    "BACKUP_PREFIX",
    "SAFETY_BACKUP_PREFIX",
    "BACKUP_SUFFIX",
    "MANIFEST_SUFFIX",
    "CHECKS",
]

log = logging.getLogger("icn_mcp.db.backup")

BACKUP_SUFFIX = ".sqlite"
DIR_MODE = 0o700
#: ``full`` = PRAGMA integrity_check, ``quick`` = PRAGMA quick_check (skips the
#: comparison of every index with its table), ``none`` = no check (safety copies).
CHECKS = ("full", "quick", "none")
DEFAULT_CHECK = "full"
#: How many problems an integrity check reports at most.
MAX_INTEGRITY_PROBLEMS = 20
HASH_CHUNK_BYTES = 1 << 20
PROGRESS_INTERVAL_S = 0.25
#: The new file is written to disk this much at a time (see _write_out).
WRITE_OUT_CHUNK_BYTES = 4 * 1024 * 1024
#: Flush the device's write cache after this much written out (see _write_out).
WRITE_OUT_FLUSH_BYTES = 16 * 1024 * 1024
#: Large files are shrunk in steps of this size before being unlinked (see _remove_file).
REMOVE_STEP_BYTES = 16 * 1024 * 1024
#: Free space asked for beyond the database's size, so a backup never fills the
#: disk that the live database (often on the same filesystem) needs for its WAL.
FREE_SPACE_MARGIN_BYTES = 16 * 1024 * 1024

SQLITE_HEADER = b"SQLite format 3\x00"
_HEADER_BYTES = 100

#: Only files named exactly like this are ever pruned: never a user's own files.
BACKUP_NAME = re.compile(r"^icn-mcp-(?P<stamp>[0-9]{8}T[0-9]{6}\.[0-9]{6}Z)\.sqlite$")

#: ``progress(phase, done, total)``: phase is ``"copy"`` or ``"hash"`` (bytes),
#: ``"check"`` or ``"sync"`` (0 of 1 when starting, 1 of 1 when done).
Progress = Callable[[str, int, int], None]


# -- paths ----------------------------------------------------------------------------


def default_backup_dir(db: Database) -> Path:
    """``backups/`` beside the database file."""
    return backup_dir_for(db.path)


def list_backups(directory: str | os.PathLike[str]) -> list[Path]:
    """Backups in ``directory`` named like ours (``icn-mcp-<UTC time>.sqlite``), oldest first."""
    directory = Path(directory)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [directory / name for name in sorted(n for n in names if BACKUP_NAME.match(n))]


def latest_backup(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"path", "created_at", "size_bytes"}`` of the newest backup, or None."""
    for path in reversed(list_backups(directory)):
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # pruned meanwhile
            continue
        created_at = None
        try:
            created_at = json.loads(manifest_path(path).read_text("utf-8")).get("created_at")
        except (OSError, ValueError, AttributeError):
            pass
        if created_at is None:
            stamp = BACKUP_NAME.match(path.name)["stamp"]  # type: ignore[index]
            created_at = format_ts(datetime.strptime(stamp, NAME_TIME_FORMAT).replace(tzinfo=UTC))
        return {"path": str(path), "created_at": created_at, "size_bytes": size}
    return None


def prune_backups(
    directory: str | os.PathLike[str], keep: int, *, protect: str | os.PathLike[str] | None = None
) -> list[str]:
    """Delete all but the newest ``keep`` backups in ``directory``; the paths removed.

    Only files named like ours are considered, so nothing else in the directory is
    ever touched, and ``protect`` (the backup just made) is never removed, nor any
    backup whose name sorts after it: a backup never deletes a newer one (another
    process's, or one named in the future by a clock set back). A backup another
    process is still publishing is skipped. Pruners take turns (a lock on the
    directory), so however many run at once at least ``keep`` backups remain. Each
    removed backup's manifest goes with it. (The rule is both backends':
    :func:`icn_mcp.db.backup_files.prune_backup_files`.)
    """
    return _files.prune_backup_files(directory, keep, listing=list_backups, protect=protect, remove=_remove_file)


# -- temporary files ------------------------------------------------------------------

#: ``.icn-mcp-backup-<host>-<pid>-<process start>-<random>.tmp`` (plus SQLite's
#: ``-journal``/``-wal``/``-shm`` of it): who made it, so that the next backup can tell
#: a killed backup's leftovers from a running one's.
TEMP_NAME = re.compile(
    r"^\.icn-mcp-backup-(?:(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<start>[0-9]+)-)?"
    r"[A-Za-z0-9_]+\.tmp(?:-journal|-wal|-shm)?$"
)
#: ``state`` of a temporary file in :func:`list_temp_files`.
TEMP_IN_PROGRESS = "in_progress"
TEMP_ORPHAN = "orphan"
TEMP_UNKNOWN = "unknown"


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), else None.

    With the pid it tells a process apart from a later one that reused its pid.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return int(data[data.rindex(b")") + 2 :].split()[19])  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def _temp_prefix() -> str:
    pid = os.getpid()
    return f"{TEMP_PREFIX}{_host_tag()}-{pid}-{_process_start(pid) or 0}-"


def _make_temp(directory: Path) -> tuple[int, Path]:
    """A new private (0600) temporary file in ``directory`` named after this process."""
    prefix = _temp_prefix()
    while True:
        path = directory / f"{prefix}{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE), path
        except FileExistsError:
            continue


def _temp_state(name: str) -> str:
    match = TEMP_NAME.match(name)
    if match is None or match["host"] is None or match["host"] != _host_tag():
        return TEMP_UNKNOWN  # an older icn-mcp's, or another host's: cannot tell
    pid, start = int(match["pid"]), int(match["start"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return TEMP_ORPHAN
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return TEMP_UNKNOWN
    actual = _process_start(pid)
    if start and actual is not None and actual != start:
        return TEMP_ORPHAN  # the pid was reused by a later process
    return TEMP_IN_PROGRESS


def list_temp_files(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Temporary files of backups in ``directory``: ``{"path", "size_bytes", "state"}``.

    ``state``: ``in_progress`` (its process runs), ``orphan`` (its process is gone:
    a killed backup's; the next backup removes it) or ``unknown`` (made by an older
    icn-mcp or on another host; remove it by hand when no backup runs).
    """
    directory = Path(directory)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names:
        if not (name.startswith(TEMP_PREFIX) and TEMP_NAME.match(name)):
            continue
        try:
            size = os.stat(directory / name).st_size
        except FileNotFoundError:
            continue
        found.append({"path": str(directory / name), "size_bytes": size, "state": _temp_state(name)})
    return found


def remove_orphan_temp_files(directory: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary files of backups whose process is gone; the paths removed."""
    removed = []
    for item in list_temp_files(directory):
        if item["state"] != TEMP_ORPHAN:
            continue
        try:
            _remove_file(item["path"])
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("could not remove orphaned backup file %s: %s", item["path"], _cause(exc))
            continue
        log.warning("removed %s (%d bytes), left by a backup whose process is gone", item["path"], item["size_bytes"])
        removed.append(item["path"])
    return removed


# -- helpers ------------------------------------------------------------------------


def _cause(exc: BaseException) -> str:
    """A short cause for a message: ``No space left on device (ENOSPC)``."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
    return str(exc) or type(exc).__name__


def _hint_for(exc: BaseException) -> str | None:
    text = _cause(exc).lower()
    if "enospc" in text or "disk is full" in text or "no space" in text:
        return "free some space or back up to another filesystem; nothing was left behind"
    if "erofs" in text or "eacces" in text or "eperm" in text or "readonly" in text:
        return "choose a writable directory (MCP_BACKUP_DIR or an explicit PATH)"
    return None


def _remove_file(path: str | os.PathLike[str]) -> None:
    """Unlink ``path``; a large file is first shrunk from the end in steps.

    Unlinking a 1 GB file on ext4 frees all its extents in one journal transaction,
    and a writer's fsync waited behind it for up to ~0.3 s in bench/bench_backup.py
    runs; freeing 16 MB at a time keeps each transaction small.
    """
    try:
        st = os.stat(path)
        size = st.st_size if st.st_nlink == 1 else 0
        # Another name for the same file (a temp file of a backup killed between its
        # link and unlink, or a user's hard link to a backup): unlink only this name.
        # Shrinking would empty the file under its other name too.
        while size > REMOVE_STEP_BYTES:
            size -= REMOVE_STEP_BYTES
            os.truncate(path, size)
    except FileNotFoundError:
        raise
    except OSError as exc:  # e.g. a read-only filesystem: the unlink says what matters
        log.debug("could not shrink %s before removing it: %s", path, exc)
    os.unlink(path)


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _source_uri(path: Path) -> str:
    """A URI that reads a backup without ever writing beside it.

    ``mode=ro`` is not enough: a read-only connection to a WAL-mode file (a hand
    ``cp`` of a live database) creates ``-wal`` and ``-shm`` beside it and leaves
    them there. ``immutable=1`` takes no locks and opens no side files; it is right
    for a file nobody writes, and :func:`verify_backup` refuses a file with a
    non-empty ``-wal`` or ``-journal`` beside it, whose content it would miss.
    """
    return "file:" + quote(str(path)) + "?immutable=1"


def _open_live(db: Database, mode: str, error: Callable[..., Exception]) -> sqlite3.Connection:
    """A connection of our own to the live database file, never creating it.

    A plain ``sqlite3.connect(path)`` creates a missing file (with the umask's
    permissions, not 0600): a backup of a deleted database would then copy an empty
    database it had just made. ``mode=ro``/``mode=rw`` URIs fail instead.
    """
    missing = "the database file is missing (deleted or moved?)"
    hint = "check MCP_DB_PATH, or restore the database with 'icn-mcp db restore'"
    if not db.path.exists():
        raise error(str(db.path), missing, hint=hint)
    try:
        conn = sqlite3.connect(
            "file:" + quote(str(db.path)) + f"?mode={mode}",
            uri=True,
            timeout=db.busy_timeout_ms / 1000,
            isolation_level=None,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(db.busy_timeout_ms)}")
        # As the database's own connections: 0 when Litestream owns checkpointing.
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(db.wal_autocheckpoint)}")
    except sqlite3.Error as exc:
        if not db.path.exists():
            raise error(str(db.path), missing, hint=hint) from None
        raise error(str(db.path), f"cannot open the database: {exc}") from exc
    return conn


def _sha256(path: Path, progress: Progress | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    done = 0
    total = path.stat().st_size
    last = time.monotonic()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None and time.monotonic() - last >= PROGRESS_INTERVAL_S:
                progress("hash", done, total)
                last = time.monotonic()
    if progress is not None:
        progress("hash", done, total)
    return digest.hexdigest(), done


def _timed_sha256(path: Path, progress: Progress | None) -> tuple[str, int, float]:
    started = time.perf_counter()
    digest, size = _sha256(path, progress)
    return digest, size, time.perf_counter() - started


def _integrity(conn: sqlite3.Connection, check: str) -> list[str]:
    """Problems reported by the check (empty when it says ok)."""
    if check == "none":
        return []
    pragma = "integrity_check" if check == "full" else "quick_check"
    rows = conn.execute(f"PRAGMA {pragma}({MAX_INTEGRITY_PROBLEMS})").fetchall()
    return [str(row[0]) for row in rows if row[0] != "ok"]


def _latest_migration(conn: sqlite3.Connection) -> str | None:
    history = _migrations.read_history(conn)
    return max(history) if history else None


def _check_value(check: str) -> str:
    value = str(check).lower()
    if value not in CHECKS:
        raise BackupError("-", f"check={check!r} is not valid: expected one of {', '.join(CHECKS)}")
    return value


def _open_destination(path: Path) -> sqlite3.Connection:
    """The connection writing the temporary copy.

    No journal and no syncs while copying: the file is private until published, a
    failure deletes it, and it is fsynced once at the end.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    return conn


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux), or None where it is missing."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4


def _write_out(path: Path) -> None:
    """Write ``path`` to disk a few MB at a time, flushing the device as it goes.

    One fsync of a whole 1 GB copy put all of it in flight at once, and a writer's
    checkpoint fsync on the same filesystem (ext4 orders data before the journal)
    waited behind it for 0.4-0.8 s in bench/bench_backup.py. Writing one chunk at a
    time and waiting for it leaves at most one chunk for such a writer to wait on.

    That alone still stalled writers 300-500 ms: sync_file_range never flushes the
    device's write cache, so the data piled up there (in the host's page cache, on a
    virtual disk) and the writer's next fsync paid for flushing all of it. An fsync of
    the (unchanged) directory every WRITE_OUT_FLUSH_BYTES issues that device flush in
    small steps, without writing the rest of the file; the worst writer gap fell to
    ~30 ms. Without sync_file_range (not Linux) it is a plain fsync.
    """
    fd = os.open(path, os.O_RDONLY)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        if _sync_file_range is not None:
            size = os.fstat(fd).st_size
            flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
            unflushed = 0
            for offset in range(0, size, WRITE_OUT_CHUNK_BYTES):
                if _sync_file_range(fd, offset, WRITE_OUT_CHUNK_BYTES, flags) != 0:
                    break  # unsupported here: the fsync below does it all
                unflushed += WRITE_OUT_CHUNK_BYTES
                if unflushed >= WRITE_OUT_FLUSH_BYTES:
                    os.fsync(dir_fd)
                    unflushed = 0
        os.fsync(fd)
    finally:
        os.close(dir_fd)
        os.close(fd)


class _CopyMonitor:
    """Reports the temporary file's growth while SQLite copies in one step."""

    def __init__(self, path: Path, total: int, progress: Progress | None) -> None:
        self.path = path
        self.total = total
        self.progress = progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backup-progress", daemon=True)

    def __enter__(self) -> _CopyMonitor:
        if self.progress is not None:
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.progress is not None
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            try:
                size = os.stat(self.path).st_size
                self.progress("copy", min(size, self.total), self.total)
            except Exception as exc:  # noqa: BLE001 - progress must never break a backup
                log.debug("progress report failed: %s", exc)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


# -- create -------------------------------------------------------------------------


def create_backup(
    path: str | os.PathLike[str] | None = None,
    *,
    db: Database,
    backup_dir: str | os.PathLike[str] | None = None,
    keep: int | None = None,
    check: str | None = None,
    progress: Progress | None = None,
    prefix: str = BACKUP_PREFIX,
) -> BackupResult:
    """Make a verified, self-contained snapshot of the database; never blocks writers.

    ``path``: the backup file to write (refused if it exists), or an existing
    directory to put a default-named backup in. Default: ``<backup_dir>/icn-mcp-<UTC
    time>.sqlite``, where ``backup_dir`` defaults to ``backups/`` beside the database
    (``MCP_BACKUP_DIR`` or ``$MCP_DB_DIR/backups`` for the process-wide database).
    ``keep``: after success, delete all but the newest ``keep`` backups in the same
    directory (0 or None: keep all). ``check``: ``full`` (integrity_check, default),
    ``quick`` (quick_check) or ``none``. ``progress(phase, done, total)`` is called
    from this and from a helper thread while the copy runs.

    Raises :class:`~icn_mcp.errors.BackupError` naming the path and the cause; then
    nothing is left under the final name and no temporary file remains.
    """
    check = _check_value(check or DEFAULT_CHECK)
    keep = _files.check_keep(keep, path or backup_dir)

    started = time.perf_counter()
    moment = utc_now()
    if not db.path.exists():  # checked again when the source is opened
        _open_live(db, "ro", BackupError)
    final, name_moment = _final_path(db, path, backup_dir, prefix, moment)
    directory = final.parent
    _make_directory(directory, final)
    remove_orphan_temp_files(directory)  # killed backups' leftovers: their space counts below
    _require_free_space(db, directory, final)

    timings: dict[str, float] = {}
    pending: list[Future[Any]] = []
    # Per call, not module-wide: a pool's idle threads do not survive fork.
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icn-mcp-backup-hash")
    temps: list[Path] = []
    published: list[Path] = []
    # Held (flock, shared) on the new file's inode from now until this call returns:
    # once published, a concurrent pruner sees the backup in use and leaves it.
    hold_fd: int | None = None
    try:
        hold_fd, tmp = _make_temp(directory)
        temps += [tmp] + [Path(f"{tmp}{s}") for s in ("-journal", "-wal", "-shm")]
        _files.hold_in_use(hold_fd, tmp)

        phase = time.perf_counter()
        # Read-only, and never created: a missing live file is an error, not an
        # empty database to back up.
        source = _open_live(db, "ro", BackupError)
        try:
            source.execute("PRAGMA query_only = 1")
            total = source.execute("PRAGMA page_count").fetchone()[0] * source.execute("PRAGMA page_size").fetchone()[0]
            dest = _open_destination(tmp)
            try:
                with _CopyMonitor(tmp, total, progress):
                    # ONE step: one read transaction on the source, a consistent snapshot.
                    source.backup(dest, pages=-1)
                if progress is not None:
                    progress("copy", total, total)
                timings["copy"] = time.perf_counter() - phase

                # The copied header says WAL; make the copy a single self-contained file.
                mode = dest.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
                if str(mode).lower() != "delete":
                    raise BackupError(str(final), f"the copy stayed in journal mode {mode!r}")

                # The file is final now: hash it in a second thread while the check
                # reads it (both release the GIL), instead of one after the other.
                hashing = hasher.submit(_timed_sha256, tmp, progress)
                pending.append(hashing)
                phase = time.perf_counter()
                if progress is not None:
                    progress("check", 0, 1)
                problems = _integrity(dest, check)
                if problems:
                    raise BackupError(
                        str(final),
                        f"the copy failed {'integrity_check' if check == 'full' else 'quick_check'}: "
                        + "; ".join(problems[:3]),
                        hint="the live database itself is probably damaged: run 'icn-mcp db verify' "
                        "and restore it from an older verified backup",
                    )
                if progress is not None:
                    progress("check", 1, 1)
                timings["check"] = time.perf_counter() - phase
                latest = _latest_migration(dest)
                if latest is None:
                    # verify_backup would call it invalid: never publish such a file.
                    raise BackupError(
                        str(final),
                        f"the copy of {db.path} has no migration history: not an icn-mcp database",
                        hint="run 'icn-mcp db migrate' (or check MCP_DB_PATH) and back up again",
                    )
                rows = count_rows(dest)
                page_size = dest.execute("PRAGMA page_size").fetchone()[0]
                page_count = dest.execute("PRAGMA page_count").fetchone()[0]
            finally:
                dest.close()
        finally:
            source.close()
        leftovers = [p.name for p in temps[1:] if p.exists()]
        if leftovers:
            raise BackupError(str(final), f"the copy is not self-contained: {', '.join(leftovers)} beside it")

        sha256, size, timings["hash"] = hashing.result()

        phase = time.perf_counter()
        if progress is not None:
            progress("sync", 0, 1)
        _write_out(tmp)
        # The backup first, then its manifest: a manifest never names a missing file.
        final = _files.publish_backup(tmp, final, prefix, BACKUP_SUFFIX, name_moment)
        published.append(final)
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            "file": final.name,
            "sha256": sha256,
            "size_bytes": size,
            "created_at": format_ts(moment),
            "source_path": str(db.path),
            "sqlite_version": sqlite3.sqlite_version,
            "latest_migration": latest,
            "page_size": page_size,
            "page_count": page_count,
            "check": check,
            "row_counts": rows,
        }
        fd, manifest_tmp = _make_temp(directory)
        temps.append(manifest_tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())

        _files.publish_file(manifest_tmp, manifest_path(final), final)
        published.append(manifest_path(final))
        _fsync_path(directory, directory=True)
        if progress is not None:
            progress("sync", 1, 1)
        timings["sync"] = time.perf_counter() - phase
    except BaseException as exc:
        for future in pending:
            if not future.cancel():
                future.exception()  # wait: never delete the file under a running hash
        if hold_fd is not None:
            os.close(hold_fd)
        for leftover in temps + published:
            try:
                _remove_file(leftover)
            except FileNotFoundError:
                pass
            except OSError as cleanup_exc:
                log.error("could not remove %s after a failed backup: %s", leftover, cleanup_exc)
        if published:
            try:
                _fsync_path(directory, directory=True)
            except OSError:
                pass
        if isinstance(exc, BackupError) or not isinstance(exc, (OSError, sqlite3.Error)):
            raise
        raise BackupError(str(final), _cause(exc), hint=_hint_for(exc)) from exc
    finally:
        hasher.shutdown(wait=True)

    try:
        pruned = prune_backups(directory, keep, protect=final) if keep else []
    finally:
        os.close(hold_fd)
    timings["total"] = time.perf_counter() - started
    log.info("backup of %s written to %s (%d bytes)", db.path, final, size)
    return BackupResult(
        path=str(final),
        manifest_path=str(manifest_path(final)),
        size_bytes=size,
        sha256=sha256,
        created_at=manifest["created_at"],
        source_path=str(db.path),
        latest_migration=latest,
        row_counts=rows,
        check=check,
        timings_s={k: round(v, 4) for k, v in timings.items()},
        pruned=pruned,
    )


def _final_path(
    db: Database,
    path: str | os.PathLike[str] | None,
    backup_dir: str | os.PathLike[str] | None,
    prefix: str,
    moment: datetime,
) -> tuple[Path, datetime | None]:
    """Where the backup goes, and the time in its name when this call chose the name
    (None: the caller named the file); see :func:`icn_mcp.db.backup_files.backup_target`.
    Never the live database or one of its files."""
    directory = Path(backup_dir) if backup_dir is not None else default_backup_dir(db)
    target, name_moment = _files.backup_target(path, directory, prefix, BACKUP_SUFFIX, moment)
    if name_moment is None and (target == db.path or str(target).startswith(f"{db.path}-")):
        raise BackupError(str(target), "that is the live database (or one of its files)")
    return target, name_moment


def _make_directory(directory: Path, final: Path) -> None:
    """Create the backup directory (0700) if missing; it must be a writable place."""
    try:
        make_private_dirs(directory)  # every level it creates is 0700, parents too
    except OSError as exc:
        raise BackupError(
            str(final), f"cannot create directory {directory}: {_cause(exc)}", hint=_hint_for(exc)
        ) from None


def _require_free_space(db: Database, directory: Path, final: Path) -> None:
    try:
        needed = os.stat(db.path).st_size + FREE_SPACE_MARGIN_BYTES
        st = os.statvfs(directory)
    except OSError:
        return  # unknown: the copy itself will fail cleanly if space runs out
    free = st.f_bavail * st.f_frsize
    if free < needed:
        others = list_temp_files(directory)
        held = (
            f"; {len(others)} temporary backup file(s) there hold {sum(t['size_bytes'] for t in others)} bytes "
            f"({', '.join(sorted({t['state'] for t in others}))}: see 'icn-mcp db info')"
            if others
            else ""
        )
        raise BackupError(
            str(final),
            f"not enough free space in {directory}: about {needed} bytes needed, {free} free{held}",
            hint="free some space or back up to another filesystem",
        )


# -- verify ---------------------------------------------------------------------------


def _read_header(path: Path, size: int, problems: list[str]) -> tuple[bool, int | None, str | None]:
    """Check the 100-byte header and that the file holds every page it declares."""
    with open(path, "rb") as fh:
        header = fh.read(_HEADER_BYTES)
    if len(header) < _HEADER_BYTES or not header.startswith(SQLITE_HEADER):
        problems.append("not an SQLite database (no 'SQLite format 3' header)")
        return False, None, None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        problems.append(f"damaged header: page size {page_size} is not a power of two >= 512")
        return False, None, None
    journal_mode = "wal" if header[18] == 2 else "delete"
    declared_pages = int.from_bytes(header[28:32], "big")
    # The declared size is valid only when the two change counters agree.
    if declared_pages and header[24:28] == header[92:96]:
        expected = declared_pages * page_size
        if size < expected:
            problems.append(
                f"truncated: {size} bytes, the header declares {declared_pages} pages of {page_size} ({expected} bytes)"
            )
            return False, page_size, journal_mode
    if size % page_size:
        problems.append(f"truncated: {size} bytes is not a whole number of {page_size}-byte pages")
        return False, page_size, journal_mode
    return True, page_size, journal_mode


def verify_backup(
    path: str | os.PathLike[str],
    *,
    db: Database | None = None,
    migrations_dir: str | os.PathLike[str] | None = None,
    check: str = DEFAULT_CHECK,
) -> BackupVerification:
    """Check that ``path`` is a backup that can be relied on; never raises for a bad file.

    Checks, in order: the SQLite header (and that no page is missing), ``PRAGMA
    integrity_check`` (``check="quick"``: quick_check), that the migration history is
    readable and every applied migration has a file here with the same checksum, and,
    when the manifest exists, its SHA-256, size and row counts. The file is opened
    read-only and never changed. ``migrations_dir`` defaults to the database's
    (without ``db``: the migrations shipped with icn-mcp).
    """
    check = _check_value(check)
    path = Path(os.path.abspath(os.fspath(path)))
    if migrations_dir is None:
        migrations_dir = db.migrations_dir if db is not None else _migrations.default_migrations_dir()
    problems: list[str] = []
    found: dict[str, Any] = {}

    def result() -> BackupVerification:
        return BackupVerification(path=str(path), ok=not problems, problems=problems, **found)

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        problems.append("the file does not exist")
        return result()
    except OSError as exc:
        problems.append(f"cannot read the file: {_cause(exc)}")
        return result()
    if not path.is_file():
        problems.append("not a regular file")
        return result()
    found["size_bytes"] = size
    for suffix in ("-wal", "-journal"):
        # Part of the content may be in there; reading it would mean writing beside
        # the operator's file (and replaying a journal changes the file itself).
        side = Path(f"{path}{suffix}")
        try:
            side_size = side.stat().st_size
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"cannot read {side}: {_cause(exc)}")
            return result()
        if side_size:
            problems.append(
                f"{side.name} ({side_size} bytes) is beside it: not a self-contained backup; "
                "copy a live database with 'icn-mcp db backup', never with cp"
            )
            return result()
    try:
        header_ok, page_size, journal_mode = _read_header(path, size, problems)
    except OSError as exc:
        problems.append(f"cannot read the file: {_cause(exc)}")
        return result()
    found.update(header_ok=header_ok, page_size=page_size, journal_mode=journal_mode)
    if not header_ok:
        return result()

    try:
        conn = sqlite3.connect(_source_uri(path), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        problems.append(f"cannot open read-only: {exc}")
        return result()
    try:
        try:
            integrity = _integrity(conn, check)
        except sqlite3.Error as exc:
            integrity = [str(exc)]
        found["integrity"] = "ok" if not integrity else "; ".join(integrity)
        if integrity:
            problems.append(
                f"{'integrity_check' if check == 'full' else 'quick_check'} failed: " + "; ".join(integrity[:3])
            )
            return result()
        try:
            history = _migrations.read_history(conn)
            found["row_counts"] = count_rows(conn)
        except sqlite3.Error as exc:
            problems.append(f"cannot read the migration history or count rows: {exc}")
            found["migrations_ok"] = False
            return result()
    finally:
        conn.close()

    try:
        files = {mf.version: mf for mf in _migrations.discover(Path(migrations_dir))}
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a report
        problems.append(f"cannot read the migration files in {migrations_dir}: {exc}")
        files = None
    found["applied_migrations"] = list(history)
    found["latest_migration"] = max(history) if history else None
    if not history:
        problems.append("no migration history (schema_migrations): not an icn-mcp database")
        found["migrations_ok"] = False
    elif files is not None:
        unknown = [v for v in history if v not in files]
        changed = [v for v, m in history.items() if v in files and files[v].checksum != m.checksum]
        found.update(unknown_migrations=unknown, changed_migrations=changed)
        if unknown:
            problems.append(
                f"newer schema than this icn-mcp knows: migration(s) {', '.join(unknown)} "
                f"applied in the backup have no file in {migrations_dir}"
            )
        if changed:
            problems.append(
                f"migration(s) {', '.join(changed)} in the backup have a different checksum "
                f"than their files in {migrations_dir}"
            )
        found["migrations_ok"] = not unknown and not changed

    _verify_manifest(path, size, found, problems)
    return result()


def _verify_manifest(path: Path, size: int, found: dict[str, Any], problems: list[str]) -> None:
    mpath = manifest_path(path)
    if not mpath.exists():
        return
    found["manifest_path"] = str(mpath)
    try:
        manifest = json.loads(mpath.read_text("utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not an {MANIFEST_FORMAT} manifest")
    except (OSError, ValueError) as exc:
        problems.append(f"manifest {mpath} is unreadable: {exc}")
        found["manifest_ok"] = False
        return
    sha256, _ = _sha256(path, None)
    found["sha256"] = sha256
    found["created_at"] = manifest.get("created_at")
    bad: list[str] = []
    if manifest.get("sha256") != sha256:
        bad.append(f"SHA-256 {sha256} differs from the manifest's {manifest.get('sha256')}")
    if manifest.get("size_bytes") != size:
        bad.append(f"size {size} differs from the manifest's {manifest.get('size_bytes')}")
    if manifest.get("row_counts") != found.get("row_counts"):
        bad.append("row counts differ from the manifest's")
    problems.extend(bad)
    found["manifest_ok"] = not bad


# -- restore ----------------------------------------------------------------------------


#: The schema name the backup is attached under during a restore.
_BK = "icn_restore_source"
#: SQLite's own tables a restore knows how to carry over (see _replace_content).
_INTERNAL_TABLES = ("sqlite_sequence", "sqlite_stat1")
_ROWID_ALIASES = ("rowid", "_rowid_", "oid")


def _refuse_uncopyable(conn: sqlite3.Connection, schema: str, source_path: Path, what: str) -> None:
    """RestoreError unless every table of ``schema`` can be copied/dropped faithfully by SQL.

    Virtual tables (and their shadow tables) depend on a module and on its own
    storage rules; internal ``sqlite_*`` tables other than sqlite_sequence and
    sqlite_stat1 (e.g. sqlite_stat4) have no SQL way to be recreated.
    """
    rows = conn.execute("SELECT name, type FROM pragma_table_list WHERE schema = ? ORDER BY name", (schema,)).fetchall()
    bad = [
        f"{name!r} ({kind} table)"
        for name, kind in rows
        if kind in ("virtual", "shadow")
        or (
            name.lower().startswith("sqlite_")
            and name.lower() not in _INTERNAL_TABLES + ("sqlite_schema", "sqlite_temp_schema")
        )
    ]
    if bad:
        raise RestoreError(
            str(source_path),
            f"{what} holds tables a restore cannot copy faithfully: {', '.join(bad)}",
            hint="the live database was not changed; restore such a database by stopping every "
            "process and copying the file into place",
        )


def _replace_content(conn: sqlite3.Connection) -> None:
    """Inside the caller's write transaction, make ``main`` a copy of the attached backup.

    Drops every table, index, trigger and view of ``main`` (not SQLite's own
    ``sqlite_*`` objects), recreates the backup's tables from its sqlite_schema SQL,
    copies their rows (rowids included, so rowid tables without an INTEGER PRIMARY
    KEY keep them), then creates indexes, views and finally triggers (after the rows,
    so no trigger fires during the copy; after views, so INSTEAD OF triggers find
    their view). sqlite_sequence, sqlite_stat1, user_version and application_id
    follow the backup. Foreign keys must be OFF on the connection.
    """
    not_internal = "lower(substr(name, 1, 7)) <> 'sqlite_'"
    for kind in ("trigger", "view", "index", "table"):
        for (name,) in conn.execute(
            f"SELECT name FROM main.sqlite_schema WHERE type = ? AND {not_internal} ORDER BY rowid", (kind,)
        ).fetchall():
            conn.execute(f"DROP {kind.upper()} IF EXISTS main.{quote_identifier(name)}")  # a table's go with it

    objects = conn.execute(
        f"SELECT type, name, sql FROM {_BK}.sqlite_schema WHERE sql IS NOT NULL AND {not_internal} ORDER BY rowid"
    ).fetchall()
    tables = [(name, sql) for kind, name, sql in objects if kind == "table"]
    for _, sql in tables:
        conn.execute(sql)  # unqualified CREATE: into main
    for name, _ in tables:
        _copy_rows(conn, name)

    main_tables = {n for (n,) in conn.execute("SELECT name FROM main.sqlite_schema WHERE type = 'table'")}
    bk_tables = {n for (n,) in conn.execute(f"SELECT name FROM {_BK}.sqlite_schema WHERE type = 'table'")}
    if "sqlite_sequence" in main_tables:
        conn.execute("DELETE FROM main.sqlite_sequence")
        if "sqlite_sequence" in bk_tables:
            conn.execute(f"INSERT INTO main.sqlite_sequence (name, seq) SELECT name, seq FROM {_BK}.sqlite_sequence")
    if "sqlite_stat1" in main_tables:
        conn.execute("DELETE FROM main.sqlite_stat1")
    if "sqlite_stat1" in bk_tables:
        if "sqlite_stat1" not in main_tables:
            conn.execute("CREATE TABLE main.sqlite_stat1 (tbl, idx, stat)")
        conn.execute(f"INSERT INTO main.sqlite_stat1 (tbl, idx, stat) SELECT tbl, idx, stat FROM {_BK}.sqlite_stat1")

    for order in ("index", "view", "trigger"):
        for kind, _, sql in objects:
            if kind == order:
                conn.execute(sql)
    for pragma in ("user_version", "application_id"):
        value = int(conn.execute(f"PRAGMA {_BK}.{pragma}").fetchone()[0])
        conn.execute(f"PRAGMA main.{pragma} = {value}")


def _copy_rows(conn: sqlite3.Connection, table: str) -> None:
    columns = conn.execute("SELECT name, hidden FROM pragma_table_xinfo(?, ?)", (table, _BK)).fetchall()
    names = [name for name, hidden in columns if hidden == 0]  # generated columns are computed
    without_rowid = conn.execute(
        "SELECT wr FROM pragma_table_list WHERE schema = ? AND name = ?", (_BK, table)
    ).fetchone()[0]
    taken = {name.lower() for name, _ in columns}
    selected = [quote_identifier(n) for n in names]
    if not without_rowid:
        alias = next((a for a in _ROWID_ALIASES if a not in taken), None)
        if alias is None:
            raise sqlite3.DatabaseError(
                f"table {table!r} has columns named rowid, _rowid_ and oid: its rowids cannot be copied"
            )
        selected.insert(0, alias)
    cols = ", ".join(selected)
    conn.execute(
        f"INSERT INTO main.{quote_identifier(table)} ({cols}) SELECT {cols} FROM {_BK}.{quote_identifier(table)}"
    )


def _refuse_unfit(source_path: Path, verification: BackupVerification, without_manifest: bool) -> None:
    """RestoreError unless the verified backup may be restored (nothing changed yet)."""
    unchanged = "the live database was not changed"
    if not verification.ok:
        more = f" (and {len(verification.problems) - 1} more)" if len(verification.problems) > 1 else ""
        hint = f"{unchanged}; 'icn-mcp db verify-backup PATH' lists every problem"
        if verification.unknown_migrations:
            hint = f"upgrade icn-mcp to the version that made this backup; {unchanged}"
        raise RestoreError(str(source_path), verification.problems[0] + more, hint=hint)
    if verification.manifest_path is None and not without_manifest:
        # Without the manifest nothing ties the file to the backup that was made: a
        # file edited by hand (a token hash of someone's choosing) would go through.
        raise RestoreError(
            str(source_path),
            f"its manifest {manifest_path(source_path)} is missing, so its SHA-256, size and "
            "row counts cannot be checked",
            hint=f"{unchanged}; if you trust this file (a hand copy, a backup from elsewhere), "
            "restore it on purpose with --without-manifest",
        )


def _restore_cause(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorname", None)
        return f"{exc} ({code})" if code else str(exc)
    return _cause(exc)


def _is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (
        isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL"
    )


def restore_from_backup(
    path: str | os.PathLike[str],
    *,
    db: Database,
    backup_dir: str | os.PathLike[str] | None = None,
    check: str = DEFAULT_CHECK,
    without_manifest: bool = False,
) -> RestoreResult:
    """Replace the database's content with the backup at ``path``, safely.

    Verifies the backup first (``check``: how thoroughly) and raises
    :class:`~icn_mcp.errors.RestoreError`, with the live database untouched, if it is
    not fit, or if its manifest is missing (unless ``without_manifest``: restore
    such a file on purpose). Otherwise, under one hold of the live database's write
    lock, makes a safety backup of the live database into ``backup_dir`` (named
    ``icn-mcp-pre-restore-<time>.sqlite``, never pruned), replaces the content with
    the backup's by SQL and applies the migrations the backup lacks, all in one
    transaction: other connections and processes see one committed change, never
    the backup's older schema, and a commit acknowledged to any of them is either in
    the safety copy or made after the restore, into its result. Other writers wait
    for the lock meanwhile (their busy timeout), for about the time a backup takes.

    When the database file does not exist (a fresh machine), it is created from the
    backup by :func:`restore_new_database`; there is nothing to keep a safety copy of.
    """
    started = time.perf_counter()
    source_path = Path(os.path.abspath(os.fspath(path)))
    if source_path.exists() and db.path.exists() and os.path.samefile(source_path, db.path):
        raise RestoreError(str(source_path), "that is the live database itself")

    verification = verify_backup(source_path, migrations_dir=db.migrations_dir, check=check)
    _refuse_unfit(source_path, verification, without_manifest)
    if not db.path.exists():
        return _restore_new(
            source_path,
            db.path,
            db.migrations_dir,
            verification,
            started,
            allow_missing=db.allow_missing_migrations,
            allow_out_of_order=db.allow_out_of_order_migrations,
        )

    unchanged = "the live database was not changed"
    safety: BackupResult | None = None

    def live_error(live_path: str, cause: str, *, hint: str | None = None) -> RestoreError:
        return RestoreError(str(source_path), f"{live_path}: {cause}", hint=hint)

    # L1: our own connection to the live file (never created if missing). URIs on, so
    # the backup can be ATTACHed read-only; a read-only attached database takes only
    # a read transaction under BEGIN IMMEDIATE, so the backup file is never written.
    live = _open_live(db, "rw", live_error)
    try:
        live.execute("PRAGMA foreign_keys = OFF")  # ignored inside a transaction: set it first
        try:
            live.execute(f"ATTACH DATABASE ? AS {_BK}", (_source_uri(source_path),))
        except sqlite3.Error as exc:
            raise RestoreError(str(source_path), f"cannot attach it read-only: {exc}", hint=unchanged) from exc
        # The backup does not change (read-only, verified): refuse what cannot be
        # copied faithfully before taking any lock or making a safety copy.
        _refuse_uncopyable(live, _BK, source_path, "the backup")
        if live.execute(f"PRAGMA {_BK}.foreign_key_check").fetchone() is not None:
            raise RestoreError(
                str(source_path),
                "the backup has rows violating a foreign key (PRAGMA foreign_key_check)",
                hint=unchanged,
            )

        # ONE hold of the live write lock from here to COMMIT: the safety copy and the
        # replacement see the same state, and any other writer either committed before
        # this (so its rows are in the safety copy) or waits and commits after (into
        # the restored database). Nothing acknowledged falls in between.
        try:
            live.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise RestoreError(
                str(source_path),
                f"cannot take the write lock of {db.path}: {exc}",
                hint=f"{unchanged}; retry when the database is less busy",
            ) from exc
        try:
            _refuse_uncopyable(live, "main", source_path, "the live database")
            # An empty file (an earlier attempt's, or a database opened but never
            # migrated) holds nothing to keep: no safety copy of it.
            if live.execute("SELECT count(*) FROM main.sqlite_schema").fetchone()[0]:
                try:
                    # A second connection (create_backup's own, read-only) copies the
                    # live database: L1 has written nothing yet, so that snapshot is
                    # exactly the state being replaced; WAL readers are not blocked.
                    safety = create_backup(db=db, backup_dir=backup_dir, check="none", prefix=SAFETY_BACKUP_PREFIX)
                except BackupError as exc:
                    raise RestoreError(
                        str(source_path),
                        f"the safety backup of the live database failed: {exc.cause}",
                        hint=exc.hint or unchanged,
                    ) from exc
                log.info("safety backup of %s before restore: %s", db.path, safety.path)
            kept = f"; the safety backup is {safety.path}" if safety is not None else ""
            try:
                _replace_content(live)
            except sqlite3.Error as exc:
                raise RestoreError(
                    str(source_path),
                    f"copying into {db.path} failed: {_restore_cause(exc)}",
                    hint=f"{unchanged} (rolled back){kept}",
                ) from exc
            if live.execute("PRAGMA main.foreign_key_check").fetchone() is not None:
                raise RestoreError(
                    str(source_path),
                    "the restored content violates a foreign key (PRAGMA foreign_key_check)",
                    hint=f"{unchanged} (rolled back){kept}",
                )
            # The migrations the backup lacks, in the same transaction: no connection
            # of a running server ever sees the restored data under the old schema.
            try:
                applied = _migrations.apply_in_transaction(
                    live,
                    _migrations.discover(db.migrations_dir),
                    allow_missing=db.allow_missing_migrations,
                    allow_out_of_order=db.allow_out_of_order_migrations,
                )
            except MigrationError as exc:
                raise RestoreError(
                    str(source_path),
                    f"applying the migrations the backup lacks failed: {exc}",
                    hint=f"{unchanged} (rolled back){kept}; fix the migration and restore again",
                ) from exc
            try:
                live.execute("COMMIT")
            except sqlite3.Error as exc:
                full = _is_disk_full(exc)
                raise RestoreError(
                    str(source_path),
                    f"committing the restored content into {db.path} failed: {_restore_cause(exc)}",
                    hint=f"{unchanged} (rolled back){kept}"
                    + ("; free some space on the database's filesystem and retry" if full else ""),
                ) from exc
        except BaseException:
            if live.in_transaction:
                live.execute("ROLLBACK")
            raise
        live.execute(f"DETACH DATABASE {_BK}")
        live.execute("PRAGMA foreign_keys = ON")

        problems = _integrity(live, "full")
        if problems:
            where = f"; the previous database is in {safety.path}" if safety is not None else ""
            raise RestoreError(
                str(source_path),
                f"the restored database failed integrity_check: {'; '.join(problems[:3])}",
                hint=f"restore another backup{where}",
            )
        if db.wal_autocheckpoint:  # 0: Litestream checkpoints, after shipping the WAL
            try:
                live.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # a checkpoint is an optimisation here
                log.debug("checkpoint after restore failed: %s", exc)
    except (sqlite3.Error, OSError) as exc:
        # Anything not mapped above (a failing DETACH, an I/O error): one clean error.
        raise RestoreError(str(source_path), f"restoring into {db.path} failed: {_restore_cause(exc)}") from exc
    finally:
        live.close()

    previous = f"the previous database is in {safety.path}" if safety is not None else "nothing was replaced"
    try:
        # Only no-transaction migrations can be left (see apply_in_transaction).
        applied += db.migrate()
    except MigrationError as exc:
        raise RestoreError(
            str(source_path),
            f"the backup was restored, but applying a no-transaction migration failed: {exc}",
            hint=f"fix the migration and run 'icn-mcp db migrate'; {previous}",
        ) from exc
    conn = db.connection()
    with db.read_transaction():
        latest = _latest_migration(conn)
        rows = count_rows(conn)
    log.info("restored %s from %s (safety backup %s)", db.path, source_path, safety.path if safety else None)
    return _restore_result(
        db.path,
        source_path,
        verification,
        safety.path if safety is not None else None,
        latest,
        applied,
        rows,
        created=False,
        started=started,
    )


def _restore_result(
    database: Path,
    source_path: Path,
    verification: BackupVerification,
    safety_path: str | None,
    latest: str | None,
    applied: list[str],
    rows: dict[str, int | None],
    *,
    created: bool,
    started: float,
) -> RestoreResult:
    return RestoreResult(
        database=str(database),
        backup_path=str(source_path),
        safety_backup_path=safety_path,
        backup_created_at=verification.created_at or _mtime(source_path),
        backup_latest_migration=verification.latest_migration,
        latest_migration=latest,
        migrations_applied=applied,
        row_counts=rows,
        integrity="ok",
        without_manifest=verification.manifest_path is None,
        database_created=created,
        elapsed_s=round(time.perf_counter() - started, 4),
    )


def restore_new_database(
    path: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    *,
    migrations_dir: str | os.PathLike[str] | None = None,
    check: str = DEFAULT_CHECK,
    without_manifest: bool = False,
) -> RestoreResult:
    """Create the database at ``db_path``, which must not exist, from the backup at ``path``.

    The disaster-recovery case: a machine with no database (its directory missing
    or empty). The backup is verified as for :func:`restore_from_backup`, copied to a
    private temporary file beside ``db_path``, migrated, checked and only then
    linked into place. On any failure nothing is left behind: no database file, no
    temporary file, and no directory this call created. There is nothing to keep a
    safety copy of, so the result's ``safety_backup_path`` is None.
    """
    started = time.perf_counter()
    source_path = Path(os.path.abspath(os.fspath(path)))
    target = Path(os.path.abspath(os.fspath(db_path)))
    migrations = Path(migrations_dir) if migrations_dir is not None else _migrations.default_migrations_dir()
    verification = verify_backup(source_path, migrations_dir=migrations, check=check)
    _refuse_unfit(source_path, verification, without_manifest)
    return _restore_new(source_path, target, migrations, verification, started)


def _restore_new(
    source_path: Path,
    target: Path,
    migrations_dir: Path,
    verification: BackupVerification,
    started: float,
    *,
    allow_missing: bool = False,
    allow_out_of_order: bool = False,
) -> RestoreResult:
    from icn_mcp.db.sqlite.database import Database  # it imports this module at its top

    nothing = "nothing was created"
    if target.exists():
        raise RestoreError(str(source_path), f"{target} exists", hint="restore into it with the open database")
    created: list[Path] = []
    tmp: Path | None = None
    try:
        created = make_private_dirs(target.parent)
        # Named like a backup's temp file (this process, its start time), so the next
        # restore here removes it if this one is killed.
        remove_orphan_temp_files(target.parent)
        fd, tmp = _make_temp(target.parent)
        os.close(fd)  # 0600: SQLite writes into it, and its -wal/-shm inherit that
        source = sqlite3.connect(_source_uri(source_path), uri=True, isolation_level=None)
        try:
            dest = sqlite3.connect(tmp, isolation_level=None)
            try:
                source.backup(dest, pages=-1)
                if dest.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise RestoreError(
                        str(source_path),
                        "the backup has rows violating a foreign key (PRAGMA foreign_key_check)",
                        hint=nothing,
                    )
            finally:
                dest.close()
        finally:
            source.close()
        with Database(
            tmp,
            migrations_dir=migrations_dir,
            migrate=False,
            allow_missing_migrations=allow_missing,
            allow_out_of_order_migrations=allow_out_of_order,
        ) as new:
            try:
                applied = new.migrate()
            except MigrationError as exc:
                raise RestoreError(
                    str(source_path),
                    f"applying the migrations the backup lacks failed: {exc}",
                    hint=f"{nothing}; fix the migration and restore again",
                ) from exc
            conn = new.connection()
            problems = _integrity(conn, "full")
            if problems:
                raise RestoreError(
                    str(source_path),
                    f"the restored database failed integrity_check: {'; '.join(problems[:3])}",
                    hint=nothing,
                )
            latest = _latest_migration(conn)
            rows = count_rows(conn)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # The last connection closed: SQLite removed the -wal and -shm.
        leftovers = [s for s in ("-wal", "-shm", "-journal") if Path(f"{tmp}{s}").exists()]
        if leftovers:
            raise RestoreError(
                str(source_path), f"the new database kept {', '.join(leftovers)} files open", hint=nothing
            )
        _fsync_path(tmp)
        try:
            os.link(tmp, target)  # never over a database that appeared meanwhile
        except FileExistsError:
            raise RestoreError(
                str(source_path),
                f"{target} appeared while the restore ran (another restore or a server?)",
                hint="it was left untouched; restore into it with 'icn-mcp db restore' again",
            ) from None
        os.unlink(tmp)
        tmp = None
        _fsync_path(target.parent, directory=True)
    except BaseException as exc:
        for leftover in [tmp] + [Path(f"{tmp}{s}") for s in ("-wal", "-shm", "-journal")] if tmp else []:
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
            except OSError as cleanup_exc:
                log.error("could not remove %s after a failed restore: %s", leftover, cleanup_exc)
        for directory in reversed(created):
            try:
                directory.rmdir()
            except OSError as cleanup_exc:
                log.error("could not remove directory %s after a failed restore: %s", directory, cleanup_exc)
        if isinstance(exc, RestoreError) or not isinstance(exc, (OSError, sqlite3.Error, IcnMcpError)):
            raise
        hint = nothing + ("; free some space and retry" if _is_disk_full(exc) else "")
        raise RestoreError(
            str(source_path), f"creating {target} from it failed: {_restore_cause(exc)}", hint=hint
        ) from exc
    log.info("created %s from %s (there was no database)", target, source_path)
    return _restore_result(
        target, source_path, verification, None, latest, applied, rows, created=True, started=started
    )


def _mtime(path: Path) -> str:
    return format_ts(datetime.fromtimestamp(path.stat().st_mtime, tz=UTC))
