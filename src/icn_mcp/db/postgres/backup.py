"""Backups of a PostgreSQL database: pg_dump, a manifest, verify, restore.

Create: one ``REPEATABLE READ`` transaction exports its snapshot
(``pg_export_snapshot()``); ``pg_dump --format=custom --snapshot=...`` dumps exactly
that snapshot into a temporary file in the target directory while the same
transaction counts the rows, so the manifest's row counts describe the dump. The
file is fsynced, hashed, linked into place (never over an existing file), mode 0600,
followed by its manifest (``<backup>.json``: SHA-256, size, server version, latest
migration, row counts) and an fsync of the directory. Any failure removes what this
call wrote.

Verify: the manifest's SHA-256 and size, ``pg_restore --list`` (a truncated or
foreign file fails here), then a real restore into a scratch database that verify
creates and drops, comparing row counts with the manifest and migration checksums
with this code's files.

Restore: verify first; into an empty database directly (the disaster-recovery path);
into a non-empty one only after a safety dump (``icn-mcp-pre-restore-<time>.pgdump``).
The replacement runs in ONE transaction (``psql --single-transaction`` over
``pg_restore``'s script, after dropping the current tables), so other connections see
the old content or the new, never a mix. Missing migrations are applied afterwards.

The password in the URL never appears on a command line: the tools get it through
``PGPASSWORD`` in their environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icn_mcp.db import backup_files as _files
from icn_mcp.db.backup_files import (
    BACKUP_PREFIX,
    FILE_MODE,
    MANIFEST_FORMAT,
    MANIFEST_FORMAT_VERSION,
    SAFETY_BACKUP_PREFIX,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    BackupResult,
    BackupVerification,
    RestoreResult,
    manifest_path,
)
from icn_mcp.db.files import make_private_dirs
from icn_mcp.db.postgres import driver
from icn_mcp.db.timestamps import format_ts, utc_now
from icn_mcp.errors import BackupError, RestoreError

if TYPE_CHECKING:
    from icn_mcp.db.postgres.database import PostgresDatabase

__all__ = [
    "create_backup",
    "verify_backup",
    "restore_from_backup",
    "list_backups",
    "BACKUP_SUFFIX",
]

log = logging.getLogger("icn_mcp.db.backup")

BACKUP_SUFFIX = ".pgdump"
BACKUP_NAME = re.compile(r"^icn-mcp-[0-9]{8}T[0-9]{6}\.[0-9]{6}Z\.pgdump$")
#: How long one pg_dump / pg_restore / psql run may take.
TOOL_TIMEOUT_S = 6 * 3600


# -- the client tools ---------------------------------------------------------------


def _tool_env(db: PostgresDatabase) -> tuple[str, dict[str, str]]:
    """A conninfo without password for argv, and an environment carrying it."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    # pg_dump, pg_restore and psql notice a dead peer as the pool does (a dump into a
    # cut link fails in seconds instead of hanging); the URL's own settings win.
    params = {**driver.DEAD_PEER_SETTINGS, **{k: v for k, v in conninfo_to_dict(db.url).items() if v is not None}}
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items()}), env


def _with_dbname(conninfo: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(conninfo, dbname=dbname)


def _major(version_text: str) -> int | None:
    match = re.search(r"\(PostgreSQL\)\s+([0-9]+)", version_text)
    return int(match.group(1)) if match else None


def _check_tool(tool: str, server_major: int, error: type[BackupError]) -> None:
    """The tool exists and is at least as new as the server (pg_dump refuses older)."""
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60).stdout
    except FileNotFoundError:
        raise error(
            tool,
            f"{tool} is not installed (PostgreSQL {server_major} client tools are needed)",
            hint=f"install postgresql-client-{server_major} (Debian/Ubuntu) or your platform's equivalent",
        ) from None
    major = _major(out)
    if major is None or major < server_major:
        raise error(
            tool,
            f"{out.strip() or tool} cannot handle PostgreSQL {server_major} "
            f"(the client tools must be version {server_major} or newer)",
            hint=f"install postgresql-client-{server_major} and put it first on PATH",
        )


def _run(
    args: list[str],
    env: dict[str, str],
    what: str,
    error: type[BackupError] | type[RestoreError],
    target: str,
    stdin: Any = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, stdin=stdin)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise error(target, f"{what} failed: {detail[0] if detail else f'exit status {result.returncode}'}")
    return result


# -- helpers ------------------------------------------------------------------------


def _server_major(conn: Any) -> int:
    return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000


def _row_counts(conn: Any) -> dict[str, int | None]:
    from psycopg import sql

    names = [
        r[0]
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
        ).fetchall()
    ]
    return {
        name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()[0]
        for name in names
    }


def _latest_migration(conn: Any) -> str | None:
    if not conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]:
        return None
    return conn.execute("SELECT max(version) FROM schema_migrations WHERE success = 1").fetchone()[0]


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_backups(directory: str | os.PathLike[str]) -> list[Path]:
    """PostgreSQL backups in ``directory`` named like ours, oldest first."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(directory) / n for n in sorted(names) if BACKUP_NAME.match(n)]


# -- create -------------------------------------------------------------------------


def create_backup(
    db: PostgresDatabase,
    path: str | os.PathLike[str] | None = None,
    *,
    backup_dir: str | os.PathLike[str] | None = None,
    keep: int | None = None,
    prefix: str = BACKUP_PREFIX,
    **_ignored: Any,
) -> BackupResult:
    """Dump ``db`` (custom format) to ``path`` or ``<backup_dir>/icn-mcp-<time>.pgdump``.

    ``keep``: afterwards delete all but the newest ``keep`` backups there (0/None: all).
    Raises :class:`BackupError`; then nothing is left under the final name.
    """
    keep = _files.check_keep(keep, path or backup_dir)
    started = time.perf_counter()
    moment = utc_now()
    # PATH/ or an existing directory: a name of ours in it (the next free one if a
    # backup of the same microsecond has it); a file name: that, never renamed.
    final, name_moment = _files.backup_target(
        path, Path(backup_dir) if backup_dir is not None else None, prefix, BACKUP_SUFFIX, moment
    )
    make_private_dirs(final.parent)
    conninfo, env = _tool_env(db)
    # Held open (and flock()ed, shared) until this call returns: once published, a
    # concurrent pruner (another process's keep=N backup) sees it in use and leaves it.
    hold_fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=final.parent)
    tmp = Path(tmp_name)
    _files.hold_in_use(hold_fd, tmp)
    os.chmod(tmp, FILE_MODE)
    published = False
    manifest_tmp: Path | None = None
    try:
        try:
            with db.connection() as conn:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
                    server_major = _server_major(conn)
                    _check_tool("pg_dump", server_major, BackupError)
                    version = conn.execute("SHOW server_version").fetchone()[0]
                    counts = _row_counts(conn)
                    latest = _latest_migration(conn)
                    if latest is None:
                        raise BackupError(
                            str(final), "the database has no migration history", hint="run 'icn-mcp db migrate' first"
                        )
                    _run(
                        [
                            "pg_dump",
                            "--format=custom",
                            f"--snapshot={snapshot}",
                            "--no-owner",
                            f"--file={tmp}",
                            f"--dbname={conninfo}",
                        ],
                        env,
                        "pg_dump",
                        BackupError,
                        str(final),
                    )
                finally:
                    conn.execute("ROLLBACK")
            _fsync(tmp)
            sha256, size = _sha256(tmp)
            final = _files.publish_backup(tmp, final, prefix, BACKUP_SUFFIX, name_moment)
            published = True
            manifest = {
                "format": MANIFEST_FORMAT,
                "format_version": MANIFEST_FORMAT_VERSION,
                "backend": "postgresql",
                "file": final.name,
                "sha256": sha256,
                "size_bytes": size,
                "created_at": format_ts(moment),
                "source": db.target,
                "server_version": version,
                "latest_migration": latest,
                "row_counts": counts,
            }
            # A temporary name of its own (never derived from the final name: another
            # backup to the same name must not be able to remove it), linked into place.
            mfd, mtmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=final.parent)
            manifest_tmp = Path(mtmp_name)
            os.chmod(manifest_tmp, FILE_MODE)
            with os.fdopen(mfd, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _files.publish_file(manifest_tmp, manifest_path(final), final)
            _fsync(final.parent, directory=True)
        except BaseException:
            # Only what this call created: its temporary files, and its backup once published.
            for leftover in [tmp] + ([manifest_tmp] if manifest_tmp else []) + ([final] if published else []):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass
            raise
        # A backup never deletes a newer one, nor one still being published; pruners
        # take turns (icn_mcp.db.backup_files.prune_backup_files).
        pruned = _files.prune_backup_files(final.parent, keep, listing=list_backups, protect=final) if keep else []
    finally:
        os.close(hold_fd)
    return BackupResult(
        path=str(final),
        manifest_path=str(manifest_path(final)),
        size_bytes=size,
        sha256=sha256,
        created_at=format_ts(moment),
        source_path=db.target,
        latest_migration=latest,
        row_counts=counts,
        check="pg_dump",
        timings_s={"total": round(time.perf_counter() - started, 3)},
        pruned=pruned,
    )


# -- verify -------------------------------------------------------------------------


def verify_backup(db: PostgresDatabase, path: str | os.PathLike[str], **_ignored: Any) -> BackupVerification:
    """Check ``path`` by listing it and restoring it into a scratch database; never raises for a bad file."""
    path = Path(os.path.abspath(os.fspath(path)))
    problems: list[str] = []
    found: dict[str, Any] = {}

    def result() -> BackupVerification:
        return BackupVerification(path=str(path), ok=not problems, problems=problems, **found)

    if not path.is_file():
        problems.append("the file does not exist")
        return result()
    sha256, size = _sha256(path)
    found.update(size_bytes=size, sha256=sha256)
    manifest: dict[str, Any] | None = None
    mpath = manifest_path(path)
    if mpath.exists():
        found["manifest_path"] = str(mpath)
        try:
            manifest = json.loads(mpath.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"the manifest {mpath} is unreadable: {exc}")
        else:
            found["created_at"] = manifest.get("created_at")
            if manifest.get("sha256") != sha256 or manifest.get("size_bytes") != size:
                problems.append(f"SHA-256 or size differs from the manifest ({mpath})")
            found["manifest_ok"] = not problems
    conninfo, env = _tool_env(db)
    with db.connection() as conn:
        server_major = _server_major(conn)
    _check_tool("pg_restore", server_major, BackupError)
    listing = subprocess.run(
        ["pg_restore", "--list", str(path)], env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )
    found["header_ok"] = listing.returncode == 0
    if listing.returncode != 0:
        detail = listing.stderr.strip().splitlines()
        problems.append(f"pg_restore --list failed: {detail[0] if detail else listing.returncode}")
        return result()
    if problems:
        return result()
    scratch = f"icn_mcp_verify_{uuid.uuid4().hex[:12]}"
    with db.connection() as conn:
        conn.execute(f'CREATE DATABASE "{scratch}"')
    try:
        restore = subprocess.run(
            [
                "pg_restore",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                f"--dbname={_with_dbname(conninfo, scratch)}",
                str(path),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
        )
        if restore.returncode != 0:
            detail = restore.stderr.strip().splitlines()
            problems.append(f"restoring into a scratch database failed: {detail[0] if detail else restore.returncode}")
            found["integrity"] = "restore failed"
            return result()
        found["integrity"] = "ok"
        import psycopg

        from icn_mcp.db.postgres import migrations as _pg_migrations

        with psycopg.connect(_with_dbname(conninfo, scratch), autocommit=True, password=env.get("PGPASSWORD")) as sconn:
            counts = _row_counts(sconn)
            history = _pg_migrations.read_history(sconn)
        files = {m.version: m.checksum for m in db.migration_files()}
        found["row_counts"] = counts
        found["applied_migrations"] = list(history)
        found["latest_migration"] = max(history) if history else None
        found["unknown_migrations"] = [v for v in history if v not in files]
        found["changed_migrations"] = [v for v, m in history.items() if v in files and files[v] != m.checksum]
        found["migrations_ok"] = not found["unknown_migrations"] and not found["changed_migrations"]
        if not history:
            problems.append("the backup has no migration history")
        if found["unknown_migrations"]:
            problems.append(f"migrations unknown to this version: {', '.join(found['unknown_migrations'])}")
        if found["changed_migrations"]:
            problems.append(f"migrations whose checksum differs: {', '.join(found['changed_migrations'])}")
        if manifest is not None and manifest.get("row_counts") != counts:
            problems.append("row counts differ from the manifest")
    finally:
        with db.connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    return result()


# -- restore ------------------------------------------------------------------------


def restore_from_backup(
    db: PostgresDatabase,
    path: str | os.PathLike[str],
    *,
    backup_dir: str | os.PathLike[str] | None = None,
    without_manifest: bool = False,
    **_ignored: Any,
) -> RestoreResult:
    """Verify ``path``, keep a safety dump of a non-empty database, restore in one transaction.

    A dump whose manifest is missing is refused, as on SQLite, unless ``without_manifest``.
    """
    started = time.perf_counter()
    path = Path(os.path.abspath(os.fspath(path)))
    verification = verify_backup(db, path)
    if not verification.ok:
        raise RestoreError(str(path), f"the backup failed verification: {verification.problems[0]}")
    if verification.manifest_path is None and not without_manifest:
        raise RestoreError(
            str(path),
            f"its manifest {manifest_path(path)} is missing: the dump's SHA-256 cannot be checked",
            hint="restore it on purpose with --without-manifest, or use a backup that has its manifest",
        )
    with db.connection() as conn:
        tables = [
            r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
        ]
        # Functions the migrations made (migration 0007's trigger function): the dump
        # creates them again.
        functions = [
            r[0]
            for r in conn.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc p "
                "WHERE p.pronamespace = current_schema()::regnamespace AND p.prokind = 'f' "
                "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')"
            ).fetchall()
        ]
        nonempty = any(n for n in _row_counts(conn).values())
    safety: str | None = None
    if tables and nonempty:
        safety = create_backup(db, None, backup_dir=backup_dir, prefix=SAFETY_BACKUP_PREFIX).path
    conninfo, env = _tool_env(db)
    from psycopg import sql

    drops = "".join(
        sql.SQL("DROP TABLE IF EXISTS {} CASCADE;\n").format(sql.Identifier(t)).as_string(None) for t in tables
    ) + "".join(f"DROP FUNCTION IF EXISTS {signature} CASCADE;\n" for signature in functions)
    script = _run(
        ["pg_restore", "--no-owner", "--no-privileges", "--file=-", str(path)],
        env,
        "pg_restore",
        RestoreError,
        str(path),
    ).stdout
    with tempfile.TemporaryFile("w+", encoding="utf-8") as f:
        f.write(drops)
        f.write(script)
        f.seek(0)
        _run(
            ["psql", "--no-psqlrc", "--quiet", "--single-transaction", "-v", "ON_ERROR_STOP=1", f"--dbname={conninfo}"],
            env,
            "restoring (psql)",
            RestoreError,
            str(path),
            stdin=f,
        )
    applied = db.migrate()
    with db.connection() as conn:
        counts = _row_counts(conn)
        latest = _latest_migration(conn)
    return RestoreResult(
        database=db.target,
        backup_path=str(path),
        safety_backup_path=safety,  # None: the database held no data
        backup_created_at=verification.created_at,
        backup_latest_migration=verification.latest_migration,
        latest_migration=latest,
        migrations_applied=applied,
        row_counts=counts,
        integrity="ok",
        without_manifest=verification.manifest_path is None,
        database_created=False,
        elapsed_s=round(time.perf_counter() - started, 3),
    )
