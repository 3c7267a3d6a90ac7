"""Backup files and results, the same on every backend.

The contents differ (a SQLite file, a ``pg_dump`` custom-format archive); what this
module holds does not: how backups are named (``icn-mcp-<UTC time><suffix>``, safety
copies ``icn-mcp-pre-restore-...``), the JSON manifest beside each one
(``<backup>.json``), where backups go by default, the temporary files they are built
in, and the results that create, verify and restore return. :mod:`icn_mcp.db.sqlite.backup`
and :mod:`icn_mcp.db.postgres.backup` both import it; it imports neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from icn_mcp.errors import BackupError

log = logging.getLogger("icn_mcp.db.backup")

__all__ = [
    "BackupResult",
    "BackupVerification",
    "RestoreResult",
    "backup_dir_for",
    "manifest_path",
    "check_keep",
    "backup_target",
    "free_name",
    "publish_file",
    "publish_backup",
    "hold_in_use",
    "prune_backup_files",
    "BACKUP_DIR_NAME",
    "BACKUP_PREFIX",
    "SAFETY_BACKUP_PREFIX",
    "MANIFEST_SUFFIX",
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_VERSION",
    "NAME_TIME_FORMAT",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "FILE_MODE",
]

#: Where backups go by default: this folder beside the database file (SQLite) or in
#: ``MCP_DB_DIR`` (PostgreSQL).
BACKUP_DIR_NAME = "backups"
BACKUP_PREFIX = "icn-mcp-"
#: Safety copies made by restore; never pruned, because their name differs.
SAFETY_BACKUP_PREFIX = "icn-mcp-pre-restore-"
MANIFEST_SUFFIX = ".json"
MANIFEST_FORMAT = "icn-mcp-backup"
MANIFEST_FORMAT_VERSION = 1
#: The UTC time in a backup's name: sorts in creation order.
NAME_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
TEMP_PREFIX = ".icn-mcp-backup-"
TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o600


# -- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    """A published backup: where it is and what it holds."""

    path: str
    manifest_path: str
    size_bytes: int
    sha256: str
    created_at: str
    source_path: str
    latest_migration: str | None
    row_counts: dict[str, int | None]
    check: str
    #: Seconds spent in each phase: copy, check, hash, sync (and total).
    timings_s: dict[str, float] = field(default_factory=dict)
    #: Older backups removed by ``keep``.
    pruned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BackupVerification:
    """What a backend's ``verify_backup`` found; ``ok`` is True only when ``problems`` is empty.

    ``unknown_migrations`` are applied in the backup but have no file here (the
    backup comes from a newer schema); ``changed_migrations`` have a different
    checksum than their file. ``manifest_ok`` is None when there is no manifest.
    """

    path: str
    ok: bool
    problems: list[str]
    size_bytes: int | None = None
    header_ok: bool = False
    page_size: int | None = None
    journal_mode: str | None = None
    integrity: str | None = None
    migrations_ok: bool | None = None
    latest_migration: str | None = None
    applied_migrations: list[str] = field(default_factory=list)
    unknown_migrations: list[str] = field(default_factory=list)
    changed_migrations: list[str] = field(default_factory=list)
    manifest_path: str | None = None
    manifest_ok: bool | None = None
    sha256: str | None = None
    created_at: str | None = None
    row_counts: dict[str, int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did: from where, the safety copy, and what the database holds now."""

    database: str
    backup_path: str
    #: None when there was nothing to keep (no database, or an empty file).
    safety_backup_path: str | None
    backup_created_at: str | None
    #: The backup's own latest migration, before the missing ones were applied.
    backup_latest_migration: str | None
    #: The database's latest migration now, after applying ``migrations_applied``.
    latest_migration: str | None
    migrations_applied: list[str]
    row_counts: dict[str, int | None]
    integrity: str
    #: True when the backup had no manifest and was restored on purpose without it.
    without_manifest: bool
    #: True when the database did not exist and was created from the backup.
    database_created: bool
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- paths ----------------------------------------------------------------------------


def backup_dir_for(db_path: str | os.PathLike[str]) -> Path:
    """``backups/`` beside the database file ``db_path``.

    The default whatever set the path (MCP_DB_DIR, MCP_DB_PATH or ``--db``): never
    a directory relative to the current one, which changes with where a command runs.
    """
    return Path(os.path.abspath(os.fspath(db_path))).parent / BACKUP_DIR_NAME


def manifest_path(backup: str | os.PathLike[str]) -> Path:
    """The manifest beside ``backup``: its name plus ``.json``."""
    backup = Path(backup)
    return backup.with_name(backup.name + MANIFEST_SUFFIX)


# -- naming and publishing ----------------------------------------------------------

#: Timestamped names a backup tries before giving up (each taken by another backup
#: between its choice and its publication: never more than a few in practice).
_PUBLISH_TRIES = 100


def free_name(directory: Path, prefix: str, suffix: str, moment: datetime) -> tuple[Path, datetime]:
    """A backup name in ``directory`` not yet taken, and the time in it: ``moment``,
    moved on by microseconds if need be.

    Two backups in the same second (even the same microsecond) get distinct names
    that still sort in creation order. Free now, the name can still be taken before
    the backup is published (another backup that started in the same microsecond):
    :func:`publish_backup` then takes the next one.
    """
    while True:
        candidate = directory / f"{prefix}{moment.strftime(NAME_TIME_FORMAT)}{suffix}"
        if not candidate.exists() and not manifest_path(candidate).exists():
            return candidate, moment
        moment += timedelta(microseconds=1)


def check_keep(keep: int | None, where: str | os.PathLike[str] | None) -> int:
    """``keep`` as an integer >= 0 (None: 0, keep all); BackupError naming ``where`` else."""
    keep = keep or 0
    if keep < 0:
        raise BackupError(str(where or "-"), f"keep={keep!r} is not valid: expected an integer >= 0")
    return keep


def backup_target(
    path: str | os.PathLike[str] | None, directory: Path | None, prefix: str, suffix: str, moment: datetime
) -> tuple[Path, datetime | None]:
    """Where a backup goes, and the time in its name when the name is ours to choose
    (None: the caller named the file, which is then never renamed).

    ``path`` an existing directory, or ending in ``/`` (a directory to be created,
    never a file named like it): a timestamped name in it. ``path`` a file name: that
    name, refused if it or its manifest exists. No ``path``: a timestamped name in
    ``directory`` (the caller's default; neither: BackupError).
    """
    if path is None:
        if directory is None:
            raise BackupError(
                "-", "no PATH and no backup directory given", hint="give a file or directory, or set MCP_BACKUP_DIR"
            )
        return free_name(Path(os.path.abspath(directory)), prefix, suffix, moment)
    raw = os.fspath(path)
    target = Path(os.path.abspath(raw))
    if target.is_dir():
        return free_name(target, prefix, suffix, moment)
    if raw.endswith((os.sep, os.sep + ".")) or (os.altsep and raw.endswith(os.altsep)):
        if target.exists():
            raise BackupError(str(target), "is not a directory, but PATH ends with a slash")
        return free_name(target, prefix, suffix, moment)
    if target.exists() or manifest_path(target).exists():
        raise BackupError(
            str(target),
            "the file (or its manifest) already exists",
            hint="choose a new path, give a directory, or omit PATH for a timestamped name",
        )
    return target, None


def publish_file(tmp: Path, target: Path, final: Path) -> None:
    """Give ``tmp`` the name ``target``, never replacing a file that is there.

    A file can appear at a name checked free (another backup to the same PATH, a
    user's copy). ``os.replace`` would overwrite it silently; ``os.link`` fails with
    EEXIST instead: BackupError naming ``final``. Then the temporary name is removed;
    the caller fsyncs the directory.
    """
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise BackupError(
            str(final),
            f"{target} appeared while the backup was being written (another backup to the same path?); "
            "it was left untouched",
            hint="choose a new path, give a directory, or omit PATH for a timestamped name",
        ) from None
    try:
        os.unlink(tmp)
    except OSError as exc:
        # Published all the same: the temporary name is only a second name of the same
        # file now (on SQLite the next backup's orphan sweep removes that name).
        log.warning("could not remove the temporary name %s of %s: %s", tmp, target, exc)


def publish_backup(tmp: Path, final: Path, prefix: str, suffix: str, name_moment: datetime | None) -> Path:
    """Publish the backup file ``tmp`` as ``final``; the name it got.

    ``name_moment`` set: ``final`` is a timestamped name the backup chose, and if
    another backup published it meanwhile (one started in the same microsecond, in
    another process), the next free name is taken instead of failing. A name the
    caller gave (``name_moment`` None) is never changed: that is an error.
    """
    for _ in range(_PUBLISH_TRIES - 1):
        try:
            publish_file(tmp, final, final)
            return final
        except BackupError:
            if name_moment is None:
                raise
            final, name_moment = free_name(final.parent, prefix, suffix, name_moment + timedelta(microseconds=1))
    publish_file(tmp, final, final)
    return final


# -- pruning ------------------------------------------------------------------------


def hold_in_use(fd: int, path: Path) -> None:
    """Mark the backup being built in ``fd`` as in use until ``fd`` is closed.

    A shared flock on the file's inode, taken from before the backup is published
    until its maker returns: :func:`prune_backup_files` (any process's) skips it meanwhile.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError as exc:  # a filesystem without flock: pruning is then unprotected
        log.debug("cannot flock %s: %s", path, exc)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on the directory itself: one pruner at a time, in any process.

    On the directory, not on a lock file, so nothing is ever left in a user's
    directory. Where directories cannot be locked the pruning runs unlocked (the
    per-file locks still protect backups being published).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            log.debug("cannot lock %s for pruning: %s", directory, exc)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_unless_in_use(path: Path, remove: Callable[[Path], None]) -> bool:
    """Remove the backup ``path`` unless its maker still holds it (:func:`hold_in_use`).

    Pruning takes the lock exclusively, without waiting, and skips the file when it
    cannot. False when skipped.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("not pruning %s: the process that made it has not finished", path)
            return False
        remove(path)
        return True
    finally:
        os.close(fd)


def prune_backup_files(
    directory: str | os.PathLike[str],
    keep: int,
    *,
    listing: Callable[[Path], list[Path]],
    protect: str | os.PathLike[str] | None = None,
    remove: Callable[[Path], None] = os.unlink,
) -> list[str]:
    """Delete all but the newest ``keep`` backups in ``directory``; the paths removed.

    ``listing(directory)`` gives the backend's backups there, oldest first (only
    files named like ours, so nothing else in the directory is ever touched), and
    ``protect`` (the backup just made) is never removed, nor any backup whose name
    sorts after it: a backup never deletes a newer one (another process's, or one
    named in the future by a clock set back). A backup another process is still
    publishing is skipped. Pruners take turns (a lock on the directory), so however
    many run at once at least ``keep`` backups remain. Each removed backup's
    manifest goes with it.
    """
    if keep < 1:
        raise BackupError(str(directory), f"keep={keep!r} is not valid: expected an integer >= 1")
    directory = Path(directory)
    removed: list[str] = []
    with _directory_lock(directory):
        backups = listing(directory)
        protected = os.path.abspath(protect) if protect is not None else None
        others = [p for p in backups if os.path.abspath(p) != protected]
        own_listed = len(others) < len(backups)
        # The protected backup counts as one of the ``keep``, wherever its name sorts.
        slots = keep - own_listed
        keepers = set(others[len(others) - slots :]) if slots > 0 else set()
        limit = Path(protected).name if own_listed and protected is not None else None
        doomed = [p for p in others if p not in keepers and (limit is None or p.name < limit)]
        for path in doomed:
            try:
                if not _remove_unless_in_use(path, remove):
                    continue
            except OSError as exc:
                log.warning("could not prune backup %s: %s", path, exc.strerror)
                continue
            try:
                os.unlink(manifest_path(path))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove manifest of pruned backup %s: %s", path, exc.strerror)
            removed.append(str(path))
            log.info("pruned backup %s", path)
    return removed
