"""The ``icn-mcp`` command.

Each command reads the settings, opens the database, makes one library call and
prints the result. Library errors become one or two lines on stderr (the error and a
hint) with exit status 1; bad usage and bad settings exit with 2. ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from icn_mcp import __version__
from icn_mcp.config import MAX_BACKUP_KEEP, Settings, parse_host
from icn_mcp.db import BaseDatabase, Database, MigrationPlan, open_database
from icn_mcp.db.files import make_private_dirs
from icn_mcp.db.sqlite import migrations as _migrations
from icn_mcp.db.sqlite.database import check_database_file
from icn_mcp.errors import ConfigError, IcnMcpError

EXIT_FAILED = 1
EXIT_USAGE = 2


def _fail(message: str, hint: str | None = None, *, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns library errors into clean messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except ConfigError as exc:
            if _debug(ctx):
                raise
            _fail(str(exc), exc.hint, code=EXIT_USAGE)
        except IcnMcpError as exc:
            if _debug(ctx):
                raise
            _fail(str(exc), exc.hint)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # The reader went away (`icn-mcp db info | head`): not our error to report.
            # Point stdout at /dev/null so the flush at exit cannot fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(EXIT_FAILED)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            if _debug(ctx):
                raise
            _fail(
                f"unexpected {type(exc).__name__}: {exc}",
                "run again with --debug for the traceback, and report it",
            )


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug"))


class _DatabaseFile(click.Path):
    """A database FILE path: ``x/`` names a directory, so it is refused (a missing
    ``x/`` would otherwise become a database file named ``x``)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        raw = os.fspath(value) if isinstance(value, (str, os.PathLike)) else value
        if isinstance(raw, str) and raw.endswith((os.sep, os.sep + ".")):
            self.fail(f"{raw!r} ends with '/', so it names a directory: give the database file", param, ctx)
        return super().convert(value, param, ctx)


#: ``--db`` of the command groups that open the database.
_db_option = click.option(
    "--db",
    "db_path",
    type=_DatabaseFile(),
    help="Database file (default: MCP_DB_PATH, else $MCP_DB_DIR/icn-mcp.sqlite).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="icn-mcp")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show informational logs on stderr.")
def main(debug: bool, verbose: bool) -> None:
    """icn-mcp: the durable core of an MCP agent HQ.

    Settings come from MCP_* environment variables (see README.md).
    """
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.CRITICAL
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # psycopg sets its own logger to WARNING on import; follow ours (its DEBUG is a flood).
    logging.getLogger("psycopg").setLevel(max(level, logging.INFO))


@main.group(cls=_Group)
@_db_option
@click.option(
    "--migrations-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of NNNN_description.sql files (default: MCP_MIGRATIONS_DIR, "
    "else the migrations shipped with icn-mcp).",
)
@click.pass_context
def db(ctx: click.Context, db_path: Path | None, migrations_dir: Path | None) -> None:
    """Migrate, inspect and verify the database."""
    settings = Settings.from_env()
    if settings.db_url is not None and db_path is not None:
        raise ConfigError("--db", str(db_path), "no --db: MCP_DB_URL selects PostgreSQL")
    options = settings.database_options()
    if migrations_dir is not None:
        options["migrations_dir"] = migrations_dir
    ctx.obj = {
        "path": db_path or settings.db_path,
        "options": options,
        "settings": settings,
        # PostgreSQL (MCP_DB_URL) instead of the SQLite file at "path".
        "postgres": settings.db_url is not None,
    }


def _open(ctx: click.Context, *, migrate: bool) -> BaseDatabase:
    settings: Settings = ctx.obj["settings"]
    if ctx.obj["postgres"]:
        custom = ctx.obj["options"]["migrations_dir"]
        overrides = {} if custom is None else {"migrations_dir": Path(custom) / "postgres"}
        return open_database(settings, migrate=migrate, **overrides)
    return Database(ctx.obj["path"], migrate=migrate, **ctx.obj["options"])


def _inspect_file(ctx: click.Context) -> Database:
    """The SQLite file opened read-only (never created, converted or written)."""
    return Database(ctx.obj["path"], migrate=False, read_only=True, **ctx.obj["options"])


def _inspect(ctx: click.Context) -> BaseDatabase:
    """The database opened read-only: inspection never creates, converts or writes it.

    (PostgreSQL: opened without migrating; inspection only reads.)
    """
    if ctx.obj["postgres"]:
        return _open(ctx, migrate=False)
    return _inspect_file(ctx)


def _name(ctx: click.Context) -> str:
    """The database for messages: the SQLite path as given, or the URL without password."""
    if ctx.obj["postgres"]:
        from icn_mcp.config import redact_url

        return redact_url(ctx.obj["settings"].db_url)
    return str(ctx.obj["path"])


def _current_plan(ctx: click.Context) -> tuple[MigrationPlan, bool]:
    """The plan, without creating the database when it does not exist yet."""
    path: Path = ctx.obj["path"]
    if not ctx.obj["postgres"] and not path.exists():
        migrations_dir = ctx.obj["options"]["migrations_dir"] or _migrations.default_migrations_dir()
        empty = sqlite3.connect(":memory:")
        try:
            return _migrations.plan(empty, _migrations.discover(migrations_dir)), False
        finally:
            empty.close()
    with _inspect(ctx) as database:
        return database.migration_plan(), True


def _rehearse(ctx: click.Context) -> list[_migrations.DryRunResult]:
    """Dry-run the pending migrations on a private scratch copy of the database.

    The copy is SQLite's private temporary database (in memory, spilling to an
    unlinked temporary file when large), made from a read-only connection: a dry run
    creates no directory and no file, takes no write lock and changes nothing, even
    when the database does not exist yet (then the copy is empty).
    """
    path: Path = ctx.obj["path"]
    migrations_dir = ctx.obj["options"]["migrations_dir"] or _migrations.default_migrations_dir()
    files = _migrations.discover(migrations_dir)
    scratch = sqlite3.connect("", isolation_level=None)
    try:
        if path.exists():
            with _inspect_file(ctx) as database:
                database.connection().backup(scratch)
        else:
            click.echo(f"database {path} does not exist yet; 'db migrate' would create it")
        return _migrations.dry_run(scratch, files)
    finally:
        scratch.close()


@db.command()
@click.option(
    "--dry-run",
    is_flag=True,
    help="Rehearse pending migrations on a scratch copy and report; creates and changes nothing.",
)
@click.pass_context
def migrate(ctx: click.Context, dry_run: bool) -> None:
    """Apply pending migrations (each file in one transaction)."""
    if dry_run:
        results = _rehearse(ctx)
        if not results:
            click.echo("nothing to apply: the database is up to date")
            return
        for result in results:
            if result.ok:
                click.echo(f"would apply {result.version} ({result.statements} statements)")
            elif result.skipped:
                click.echo(f"not rehearsed {result.version}: {result.error}")
            else:
                click.echo(f"would FAIL  {result.version}: {result.error}")
        if not all(r.ok for r in results):
            sys.exit(EXIT_FAILED)
        return
    with _open(ctx, migrate=False) as database:
        applied = database.migrate()
        total = len(database.migration_history())
    if applied:
        for version in applied:
            click.echo(f"applied {version}")
    click.echo(f"database {_name(ctx)} is up to date ({total} migrations applied)")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """List applied, pending, changed, missing and failed migrations."""
    current, exists = _current_plan(ctx)
    path = _name(ctx) if ctx.obj["postgres"] else str(Path(ctx.obj["path"]).absolute())
    if as_json:
        data = {"database": path, "exists": exists, **current.to_dict()}
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"database: {path}" + ("" if exists else " (does not exist yet)"))
    if not current.items:
        click.echo("no migrations")
    width = max([len(i.version) for i in current.items] + [7])
    click.echo(f"{'VERSION':<{width}}  {'STATE':<8}  {'APPLIED AT':<27}  MS")
    for item in current.items:
        ms = "" if item.execution_ms is None else f"{item.execution_ms:g}"
        click.echo(f"{item.version:<{width}}  {item.state:<8}  {item.applied_at or '':<27}  {ms}")
        if item.state == "changed":
            click.echo(f"{'':<{width}}    stored {item.stored_checksum}, file {item.file_checksum}")
        if item.failed_at is not None:
            edited = "" if item.state == "failed" else " (the file changed since)"
            click.echo(f"{'':<{width}}    failed at {item.failed_at}{edited}: {item.error}")
    counts: dict[str, int] = current.to_dict()["counts"]  # type: ignore[assignment]
    click.echo(", ".join(f"{n} {state}" for state, n in counts.items()))
    for version in current.out_of_order:
        click.echo(f"warning: {version} is new but sorts before the latest applied migration")
    for item in current.failed_since_applied:
        click.echo(f"warning: {item.version} failed and has not been applied since ('db verify' fails)")


@db.command()
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Check migration checksums and the database's integrity (exit 1 on any problem)."""
    path: Path = ctx.obj["path"]
    if ctx.obj["postgres"]:
        with _open(ctx, migrate=False) as database:
            current = database.verify_migrations()
        click.echo(
            f"ok: {len(current.applied)} migrations applied with matching checksums, {len(current.pending)} pending"
        )
        return
    if not path.exists():
        _fail(f"database {path} does not exist", "run 'icn-mcp db migrate' to create it")
    with _inspect_file(ctx) as database:
        current = database.verify_migrations()
        result = database.connection().execute("PRAGMA quick_check").fetchall()
    problems = [row[0] for row in result if row[0] != "ok"]
    if problems:
        _fail(f"database {path} failed quick_check: {problems[0]}", "restore it from a verified backup")
    pending = len(current.pending)
    click.echo(
        f"ok: {len(current.applied)} migrations applied with matching checksums, {pending} pending; quick_check ok"
    )


# -- backup, restore and diagnostics (db/backup.py, db/info.py) ---------------------

#: Progress appears only for backups that take longer than this (on a terminal).
PROGRESS_DELAY_S = 0.5


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _backup_settings(ctx: click.Context) -> tuple[Path, int, str]:
    """Backup directory, keep and check from MCP_BACKUP_*.

    Without MCP_BACKUP_DIR: ``backups/`` beside the database, however its path was
    given (MCP_DB_DIR, MCP_DB_PATH or --db), never relative to the current directory.
    """
    from icn_mcp.db.backup_files import backup_dir_for

    settings = Settings.from_env()
    directory = settings.backup_dir if settings.backup_dir is not None else backup_dir_for(ctx.obj["path"])
    return directory, settings.backup_keep, settings.backup_check.lower()


def _confirm(question: str, refusal: str, verb: str) -> None:
    """Ask on a terminal; elsewhere refuse with exit status 2 (``--yes`` skips this)."""
    if not _is_terminal(sys.stdin):
        _fail(
            f"{refusal} without confirmation: stdin is not a terminal",
            f"pass --yes to {verb} non-interactively",
            code=EXIT_USAGE,
        )
    if not click.confirm(question):
        _fail(f"{verb} cancelled; nothing was changed")


def _backup_file_argument(path: Path) -> None:
    """The same answer from every command taking a backup PATH (README's exit codes):
    a directory is bad usage (2), a missing file a failed operation (1)."""
    if path.is_dir():
        _fail(
            f"{path} is a directory, not a backup file",
            "give the path of a backup file (icn-mcp-<UTC time>.sqlite)",
            code=EXIT_USAGE,
        )
    if not path.exists():
        _fail(f"backup {path} does not exist", "check the path; 'icn-mcp db info' shows the last backup")


def _require_database(ctx: click.Context) -> None:
    if ctx.obj["postgres"]:
        return  # the server says whether it exists when we connect
    path = Path(ctx.obj["path"])
    if not path.exists():
        _fail(f"database {path} does not exist", "check --db / MCP_DB_PATH, or run 'icn-mcp db migrate' to create it")


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def _printable(name: str) -> str:
    """A table name as typed, or JSON-quoted when it holds control characters."""
    return name if name.isprintable() else json.dumps(name)


class _ProgressLine:
    """One self-overwriting line on stderr: ``copy 512.0/1024.0 MiB (50%)``."""

    def __init__(self) -> None:
        import threading
        import time

        self._clock = time.monotonic
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._width = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self._clock() - self._started < PROGRESS_DELAY_S:
            return
        if phase in ("copy", "hash"):
            percent = done * 100 // total if total else 100
            text = f"{phase} {done / 2**20:.1f}/{total / 2**20:.1f} MiB ({percent}%)"
        else:
            text = {"check": "checking integrity", "sync": "syncing to disk"}.get(phase, phase)
            text += " done" if done >= total else "..."
        with self._lock:
            click.echo("\r" + text.ljust(self._width), nl=False, err=True)
            self._width = max(self._width, len(text))

    def finish(self) -> None:
        with self._lock:
            if self._width:
                click.echo("\r" + " " * self._width + "\r", nl=False, err=True)


@db.command()
# A str, not a Path: Path("DIR/") drops the slash that says DIR is a directory.
@click.argument("path", required=False, type=click.Path())
@click.option(
    "--keep",
    type=click.IntRange(min=0, max=MAX_BACKUP_KEEP),
    default=None,
    help="After success, delete all but the newest N icn-mcp-*.sqlite backups in the "
    "directory (default: MCP_BACKUP_KEEP; 0 keeps all).",
)
@click.pass_context
def backup(ctx: click.Context, path: str | None, keep: int | None) -> None:
    """Write a verified snapshot of the database; safe while the server runs.

    PATH is the file to write (it must not exist) or a directory (an existing one,
    or any PATH ending in '/', created 0700); by default $MCP_BACKUP_DIR (else
    backups/ beside the database)/icn-mcp-<UTC time>.sqlite. Prints the path and
    size; exit status 1 on failure, with nothing left behind.
    """
    _require_database(ctx)
    # Backing up only reads the database: a 0-byte or foreign file is reported as it
    # is, not turned into an empty database by the read-write open below.
    if not ctx.obj["postgres"]:
        check_database_file(Path(ctx.obj["path"]))
    directory, default_keep, check = _backup_settings(ctx)
    progress = _ProgressLine() if _is_terminal(sys.stderr) else None
    with _open(ctx, migrate=False) as database:
        try:
            result = database.create_backup(
                path,
                backup_dir=directory,
                keep=default_keep if keep is None else keep,
                check=check,
                progress=progress,
            )
        finally:
            if progress is not None:
                progress.finish()
    click.echo(f"backed up to {result.path} ({_human(result.size_bytes)}, {result.size_bytes} bytes)")
    for old in result.pruned:
        click.echo(f"pruned {old}")


@db.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed when not on a terminal).")
@click.option(
    "--without-manifest",
    is_flag=True,
    help="Restore a backup whose manifest (PATH.json) is missing, on purpose; refused otherwise.",
)
@click.option(
    "--from-replica",
    "from_replica",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[URL]",
    help="Restore from the Litestream replica at URL (default: MCP_REPLICA_URL) instead of a backup file.",
)
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="With --from-replica: the moment to restore, RFC 3339 such as 2026-12-01T21:00:00Z "
    "(default: the latest replicated state).",
)
@click.pass_context
def restore(
    ctx: click.Context,
    path: Path | None,
    yes: bool,
    without_manifest: bool = False,
    from_replica: str | None = None,
    at: str | None = None,
) -> None:
    """Replace the database's content with the backup at PATH (or a replica's state).

    The backup is verified first (and refused without its manifest unless
    --without-manifest); the current database is saved as a safety backup beside the
    others; other processes may keep the database open. When there is no database
    yet (a new machine), it is created from the backup. Asks for confirmation on a
    terminal; elsewhere refuses (exit status 2) unless --yes.

    With --from-replica [URL] [--at TIME], Litestream restores the replica's state
    into a private temporary file, which is then restored exactly like a backup file.
    """
    from icn_mcp.db.sqlite.backup import restore_new_database

    if from_replica is not None or at is not None:
        _restore_from_replica(ctx, path, from_replica, at, yes)
        return
    if path is None:
        _fail(
            "missing PATH: the backup file to restore",
            "or restore from a replica: --from-replica [URL]",
            code=EXIT_USAGE,
        )
    _backup_file_argument(path)
    target = Path(ctx.obj["path"]).absolute()
    # SQLite with no database file: a new machine, the database is created from the backup.
    fresh = not ctx.obj["postgres"] and not target.exists()
    if not yes:
        _confirm(
            f"Replace the contents of {_name(ctx) if ctx.obj['postgres'] else target} with {path}? "
            "(a safety backup is made first)"
            if not fresh
            else f"Create {target} from {path}?",
            f"not restoring {target}",
            "restore",
        )
    directory, _, check = _backup_settings(ctx)
    if fresh:
        # A machine without a database: opening one would create an empty file (and
        # directories) that a failed restore would leave behind.
        result = restore_new_database(
            path,
            target,
            migrations_dir=ctx.obj["options"]["migrations_dir"],
            check=check,
            without_manifest=without_manifest,
        )
    else:
        with _open(ctx, migrate=False) as database:
            result = database.restore_from_backup(
                path, backup_dir=directory, check=check, without_manifest=without_manifest
            )
    click.echo(f"restored {result.database} from {result.backup_path}")
    if result.without_manifest:
        click.echo("restored WITHOUT its manifest: the file's SHA-256, size and row counts were not checked")
    click.echo(
        f"backup taken at {result.backup_created_at or 'unknown'}; "
        f"its latest migration {result.backup_latest_migration}"
    )
    for version in result.migrations_applied:
        click.echo(f"applied {version}")
    click.echo(f"database now at {result.latest_migration}")
    rows = ", ".join(f"{_printable(n)} {c}" for n, c in result.row_counts.items() if c is not None)
    click.echo(f"rows: {rows}")
    if result.database_created:
        click.echo(f"integrity_check {result.integrity}; the database did not exist: no safety backup was needed")
    elif result.safety_backup_path is None:
        click.echo(f"check {result.integrity}; the database held no data, so no safety copy was needed")
    else:
        click.echo(f"integrity_check {result.integrity}; the previous database is saved in {result.safety_backup_path}")
    click.echo("tokens are as the backup had them: 'icn-mcp agent revoke-tokens --all' revokes every one")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print the same data as JSON.")
@click.pass_context
def info(ctx: click.Context, as_json: bool) -> None:
    """Show size, tables with row counts and sizes, indexes, migrations, last backup."""
    _require_database(ctx)
    directory, _, _ = _backup_settings(ctx)
    with _inspect(ctx) as database:
        data = database.get_database_info(backup_dir=directory)
    data["replication"] = _replication_info(ctx)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    health = data["health"]
    click.echo(f"database   {data['path']}")
    if ctx.obj["postgres"]:
        pool = data["pool"]
        click.echo(f"size       {_human(data['size_bytes'])}; PostgreSQL {data['server_version']}")
        click.echo(
            f"pool       {pool['open_connections']} open, {pool['pool_available']} idle, "
            f"max {pool['pool_max']}; {pool['reconnects']} reconnects"
        )
        data = {**data, "size_method": "dbstat"}  # sizes are exact on PostgreSQL
    else:
        _print_sqlite_summary(data)
    click.echo(
        f"health     {'ok' if health['ok'] else 'FAILING: ' + str(health['error'])} ({health['latency_ms']} ms probe)"
    )
    last = data["last_backup"]
    click.echo(
        f"backup     {last['path']} ({last['created_at']}, {_human(last['size_bytes'])})"
        if last
        else f"backup     none in {directory}"
    )
    if data["replication"]["enabled"]:
        click.echo(f"replica    {_replica_line(data['replication'])}")
    sizes = "" if data["size_method"] == "dbstat" else " (estimated)"
    names = [_printable(t["name"]) for t in data["tables"]] + [_printable(i["name"]) for i in data["indexes"]]
    width = max([len(n) for n in names] + [9])
    click.echo("")
    click.echo(f"{'TABLE':<{width}}  {'ROWS':>12}  SIZE{sizes}")
    for table in data["tables"]:
        rows = "-" if table["row_count"] is None else str(table["row_count"])
        click.echo(f"{_printable(table['name']):<{width}}  {rows:>12}  {_human(table['size_bytes'])}")
    if data["indexes"]:
        click.echo("")
        click.echo(f"{'INDEX':<{width}}  {'SIZE':>12}  TABLE")
        for index in data["indexes"]:
            click.echo(
                f"{_printable(index['name']):<{width}}  {_human(index['size_bytes']):>12}  {_printable(index['table'])}"
            )
    click.echo("")
    vwidth = max([len(m["version"]) for m in data["migrations"]] + [9])
    click.echo(f"{'MIGRATION':<{vwidth}}  {'APPLIED AT':<27}  {'MS':>9}  CHECKSUM")
    for m in data["migrations"]:
        ms = "" if m["execution_ms"] is None else f"{m['execution_ms']:g}"
        click.echo(f"{m['version']:<{vwidth}}  {m['applied_at']:<27}  {ms:>9}  {m['checksum'][:16]}")
    applied = {m["version"] for m in data["migrations"]}
    for failure in data["failed_migrations"]:
        # A failure is history once its version is applied; 'db verify' fails until then.
        since = " (applied since)" if failure["version"] in applied else " (not applied since)"
        click.echo(f"failed     {failure['version']} at {failure['failed_at']}{since}: {failure['error']}")
    for temp in data.get("backup_temp_files", []):
        state = {
            "orphan": "orphaned (its backup was killed): the next backup removes it",
            "in_progress": "a backup in progress",
        }.get(temp["state"], "owner unknown (an older icn-mcp or another host): remove it by hand if no backup runs")
        click.echo(f"temp file  {temp['path']} ({_human(temp['size_bytes'])}): {state}")
    click.echo(f"(gathered in {data['elapsed_ms']:.0f} ms)")


def _print_sqlite_summary(data: dict[str, Any]) -> None:
    click.echo(
        f"size       {_human(data['size_bytes'])} + WAL {_human(data['wal_size_bytes'])}; "
        f"{data['page_count']} pages of {data['page_size']} bytes, {data['freelist_count']} free"
    )
    click.echo(f"journal    {data['journal_mode']}; SQLite {data['sqlite_version']}")


@db.command("verify-backup")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def verify_backup_command(ctx: click.Context, path: Path, as_json: bool) -> None:
    """Check a backup: header, integrity_check, migrations, manifest (exit 1 if bad)."""
    from icn_mcp.db.sqlite.backup import verify_backup

    _backup_file_argument(path)
    if ctx.obj["postgres"]:  # a scratch database on the server does the checking
        with _open(ctx, migrate=False) as database:
            result = database.verify_backup(path)
    else:
        migrations_dir = ctx.obj["options"]["migrations_dir"] or _migrations.default_migrations_dir()
        result = verify_backup(path, migrations_dir=migrations_dir)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        if not result.ok:
            sys.exit(EXIT_FAILED)
        return
    if not result.ok:
        for problem in result.problems[1:]:
            click.echo(f"problem: {problem}", err=True)
        _fail(f"{result.path} is not a valid backup: {result.problems[0]}", "do not restore it; use another backup")
    manifest = (
        "manifest SHA-256, size and row counts match"
        if result.manifest_ok
        else f"NO manifest beside it ({path}.json): 'db restore' refuses it without --without-manifest"
    )
    click.echo(f"ok: {result.path} ({_human(result.size_bytes)})")
    click.echo(
        f"integrity_check ok; {len(result.applied_migrations)} migrations up to "
        f"{result.latest_migration}, checksums match; {manifest}"
    )
    if result.created_at:
        click.echo(f"created at {result.created_at}")


# -- agents (store/agents.py) ------------------------------------------------------


@main.group(cls=_Group)
@_db_option
@click.pass_context
def agent(ctx: click.Context, db_path: Path | None) -> None:
    """Operator commands for agents and their tokens; they need no token (run where the database is)."""
    settings = Settings.from_env()
    if settings.db_url is not None and db_path is not None:
        raise ConfigError("--db", str(db_path), "no --db: MCP_DB_URL selects PostgreSQL")
    ctx.obj = {"path": db_path or settings.db_path, "settings": settings, "postgres": settings.db_url is not None}


def _agent_database(ctx: click.Context, *, must_exist: bool) -> BaseDatabase:
    """The store's database for an agent command: PostgreSQL (MCP_DB_URL), or the SQLite
    file (``must_exist``: never create it)."""
    settings: Settings = ctx.obj["settings"]
    if ctx.obj["postgres"]:
        return open_database(settings)
    path = Path(ctx.obj["path"])
    if must_exist and not path.exists():
        _fail(f"database {path} does not exist", "check --db / MCP_DB_PATH")
    return Database(path, **settings.database_options())


@agent.command("revoke-tokens")
@click.option("--all", "all_tokens", is_flag=True, help="Revoke every agent token (required).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed when not on a terminal).")
@click.pass_context
def revoke_tokens(ctx: click.Context, all_tokens: bool, yes: bool) -> None:
    """Revoke every agent token, e.g. after 'db restore' brought old tokens back.

    Agents then get 401 and cannot refresh: each registers again, or a maintainer
    issues it a token. Tasks, runs and agents' rows are kept.
    """
    from icn_mcp.store import Store

    if not all_tokens:
        _fail("revoke-tokens needs --all (revoking every agent token is the only mode)", code=EXIT_USAGE)
    name = _name(ctx)
    if not ctx.obj["postgres"] and not Path(ctx.obj["path"]).exists():
        _fail(f"database {name} does not exist", "check --db / MCP_DB_PATH")
    if not yes:
        _confirm(
            f"Revoke every agent token in {name}? Agents must register again.",
            f"not revoking the tokens in {name}",
            "revoke",
        )
    settings: Settings = ctx.obj["settings"]
    with _agent_database(ctx, must_exist=True) as database:
        revoked = Store.from_settings(database, settings).revoke_all_tokens()
    click.echo(f"revoked {revoked} agent token(s) in {name}; agents must register again")


@agent.command("register")
@click.argument("name")
@click.option("--kind", required=True, help="The agent's kind: one of MCP_AGENT_KINDS.")
@click.option("--version", "agent_version", default=None, help="The agent's version, if it has one.")
@click.option("--json", "as_json", is_flag=True, help="Print id, token and token_expires_at as JSON.")
@click.pass_context
def agent_register(ctx: click.Context, name: str, kind: str, agent_version: str | None, as_json: bool) -> None:
    """Register agent NAME and print its id and token (shown this once).

    Over HTTP, only the very first agent registers without a token; after that a
    registration needs an agent or maintainer token. This command, run where the
    database file is, needs neither: the way back in when every token has lapsed.
    Creates and migrates the database if needed.
    """
    from icn_mcp.errors import ValidationError
    from icn_mcp.store import Store

    settings: Settings = ctx.obj["settings"]
    with _agent_database(ctx, must_exist=False) as database:
        try:
            registered = Store.from_settings(database, settings).register_agent(
                name, kind, agent_version, operator=True
            )
        except ValidationError as exc:
            _fail(str(exc), "see 'icn-mcp agent register --help'; kinds come from MCP_AGENT_KINDS", code=EXIT_USAGE)
    if as_json:
        click.echo(
            json.dumps(
                {"id": registered.id, "token": registered.token, "token_expires_at": registered.token_expires_at}
            )
        )
    else:
        click.echo(f"id {registered.id}")
        click.echo(f"token {registered.token}")
        click.echo(f"token_expires_at {registered.token_expires_at}")
    click.echo("the token is shown only this once; only its hash is stored", err=True)


# -- replication (db/replica.py, issue 12) -------------------------------------------


def _replica_url(explicit: str | None = None) -> str:
    """The replica URL: ``explicit``, else MCP_REPLICA_URL; exit 2 when neither is usable."""
    from icn_mcp.db.replica import check_replica_url, redact

    url = explicit or Settings.from_env().replica_url
    if not url:
        _fail(
            "no replica: MCP_REPLICA_URL is not set",
            "set MCP_REPLICA_URL (file:///dir, s3://bucket/path, ...) or pass the URL",
            code=EXIT_USAGE,
        )
    try:
        return check_replica_url(url)
    except ValueError as exc:
        _fail(f"{redact(url)!r} is not a valid replica URL: expected {exc}", code=EXIT_USAGE)


def _replication_info(ctx: click.Context) -> dict[str, Any]:
    """``db info``'s ``replication`` object: ``{"enabled": False}`` without MCP_REPLICA_URL."""
    from icn_mcp.db.replica import replica_report

    url = Settings.from_env().replica_url
    if not url or ctx.obj["postgres"]:  # Litestream replicates the SQLite file only
        return {"enabled": False}
    try:
        return {"enabled": True, "error": None, **replica_report(url, ctx.obj["path"])}
    except IcnMcpError as exc:
        return {"enabled": True, "error": str(exc), "url": getattr(exc, "replica", None)}


def _require_sqlite(ctx: click.Context, command: str) -> None:
    if ctx.obj["postgres"]:
        _fail(
            f"'db {command}' is for the SQLite file: Litestream replicates SQLite, not PostgreSQL",
            "unset MCP_DB_URL; for PostgreSQL use its own streaming replication",
            code=EXIT_USAGE,
        )


def _replica_line(report: dict[str, Any]) -> str:
    if report.get("error"):
        return f"{report.get('url')}: UNAVAILABLE: {report['error']}"
    if not report["exists"]:
        return f"{report['url']}: no replicated data yet"
    behind = (
        "unknown"
        if report["behind_txids"] is None
        else f"{report['behind_txids']} transactions, {report['behind_s']:g} s"
    )
    return (
        f"{report['url']}: restorable {report['earliest']} to {report['latest']}, "
        f"{_human(report['size_bytes'])}; behind the database: {behind}"
    )


def _parse_moment(text: str) -> Any:
    from datetime import datetime

    allowed = "an RFC 3339 time with a time zone, such as 2026-12-01T21:00:00Z or 2026-12-01T23:00:00+02:00"
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        _fail(f"--at {text!r} is not valid: expected {allowed}", code=EXIT_USAGE)
    if moment.tzinfo is None or "T" not in text.upper():
        _fail(f"--at {text!r} is not valid: expected {allowed}", code=EXIT_USAGE)
    return moment


def _restore_from_replica(ctx: click.Context, path: Path | None, url: str | None, at: str | None, yes: bool) -> None:
    """``litestream restore`` into a private directory, then the backup-file restore."""
    import shutil
    import tempfile

    from icn_mcp.db.replica import redact, restore_replica

    if path is not None:
        _fail("give either PATH or --from-replica, not both", code=EXIT_USAGE)
    if ctx.obj["postgres"]:
        _fail(
            "--from-replica restores the SQLite file: Litestream replicates SQLite, not PostgreSQL",
            "unset MCP_DB_URL, or restore PostgreSQL from a 'db backup' dump",
            code=EXIT_USAGE,
        )
    url = _replica_url(url or None)
    moment = _parse_moment(at) if at is not None else None
    target = Path(ctx.obj["path"]).absolute()
    what = f"the state of {redact(url)} at {at}" if at else f"the latest state of {redact(url)}"
    if not yes:
        _confirm(
            f"Replace the contents of {target} with {what}? (a safety backup is made first)"
            if target.exists()
            else f"Create {target} from {what}?",
            f"not restoring {target}",
            "restore",
        )
    make_private_dirs(target.parent)
    # Private (0700), beside the database (same file system, room for a copy of it).
    work = Path(tempfile.mkdtemp(prefix=".icn-mcp-replica-restore-", dir=target.parent))
    try:
        fetched = restore_replica(url, work / "replica.sqlite", at=moment)
        # A verified backup with its manifest, so the restore below is exactly the
        # one of a backup file (verify, safety copy, migrations, report).
        with Database(work / "replica.sqlite", migrate=False) as staged:
            staged_backup = staged.create_backup(work / "replica-backup.sqlite", check="none")
        txid = fetched["txid"]
        click.echo(f"fetched {what} (transaction {txid if txid is not None else '?'}) in {fetched['elapsed_s']:g} s")
        ctx.invoke(restore, path=Path(staged_backup.path), yes=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@db.command()
@click.pass_context
def replicate(ctx: click.Context) -> None:
    """Replicate the database to MCP_REPLICA_URL with Litestream until SIGTERM/SIGINT.

    For deployments where several processes share the database file: run this once
    per host instead of each server replicating (a server with MCP_REPLICA_URL set
    stands by while this runs). Logs are JSON lines on stderr.
    """
    import signal
    import threading

    from icn_mcp.db.replica import Replicator, redact
    from icn_mcp.server.logs import configure_logging

    _require_sqlite(ctx, "replicate")
    url = _replica_url()
    settings = Settings.from_env()
    _require_database(ctx)
    # Litestream would retry a file that is not a database forever: refuse it here.
    check_database_file(Path(ctx.obj["path"]))
    configure_logging(logging.DEBUG if _debug(ctx) else settings.log_level)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    replicator = Replicator(
        ctx.obj["path"],
        url,
        sync_interval_s=settings.replica_sync_interval_s,
        retention_s=settings.replica_retention_s,
    ).start()
    click.echo(f"replicating {Path(ctx.obj['path']).absolute()} to {redact(url)} (SIGTERM or Ctrl-C stops)")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        replicator.stop()
    status = replicator.status()
    click.echo(f"stopped: replica at transaction {status['replica_txid']}, {status['restarts']} restarts")


@db.command("replica")
@click.option("--json", "as_json", is_flag=True, help="Print the same data as JSON.")
@click.pass_context
def replica_command(ctx: click.Context, as_json: bool) -> None:
    """Show the replica's restorable window, its size and how far behind the database it is."""
    from icn_mcp.db.replica import replica_report

    _require_sqlite(ctx, "replica")
    url = _replica_url()
    _require_database(ctx)
    check_database_file(Path(ctx.obj["path"]))
    report = replica_report(url, ctx.obj["path"])
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        if not report["exists"]:
            sys.exit(EXIT_FAILED)
        return
    if not report["exists"]:
        _fail(
            f"no replicated data at {report['url']} yet",
            "run 'icn-mcp serve' or 'icn-mcp db replicate' with MCP_REPLICA_URL set",
        )
    click.echo(f"replica    {report['url']}")
    click.echo(f"window     {report['earliest']} to {report['latest']} (restorable with --at)")
    click.echo(
        f"size       {_human(report['size_bytes'])} in {report['files']} LTX files; "
        f"transaction {report['replica_txid']}"
    )
    if report["behind_txids"] is None:
        click.echo(f"behind     unknown (no Litestream state for {report['database']})")
    else:
        click.echo(f"behind     {report['behind_txids']} transactions, {report['behind_s']:g} s of writes")


@main.command()
@click.option("--host", help="Address to listen on (default: MCP_HOST, else 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one (default: MCP_PORT, else 8787).",
)
@click.option("--stdio", is_flag=True, help="Serve MCP over stdin/stdout instead of HTTP.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="HTTP server processes sharing the port, each with its own database connections.",
)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, stdio: bool, workers: int) -> None:
    """Serve the HTTP worker API, MCP at /mcp, /healthz and /metrics.

    With --stdio, serve MCP over stdio for a desktop MCP client, acting for the local
    agent MCP_STDIO_AGENT_NAME. Logs are JSON lines on stderr. SIGTERM or SIGINT
    finishes in-flight requests and closes the database. --workers N serves HTTP
    from N processes; rate limits then apply per process.
    """
    import dataclasses

    if stdio and workers != 1:
        _fail("--workers applies to HTTP only; --stdio serves one client", code=EXIT_USAGE)
    from icn_mcp.server import serve_http, serve_stdio
    from icn_mcp.server.logs import configure_logging

    settings = Settings.from_env()
    if host is not None:
        host = parse_host("--host", host)  # the rule MCP_HOST follows
    overrides: dict[str, Any] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = dataclasses.replace(settings, **overrides)
    configure_logging(logging.DEBUG if _debug(ctx) else settings.log_level)
    if stdio:
        serve_stdio(settings)
        return
    try:
        serve_http(settings, announce=lambda url: click.echo(f"serving {url} (MCP at {url}/mcp)"), workers=workers)
    except OSError as exc:
        where = f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            # The host is wrong for this machine: a bad setting, and nothing about the port.
            _fail(
                where,
                "choose an address of this machine (--host or MCP_HOST), such as "
                "127.0.0.1, 0.0.0.0 or a name that resolves to one",
                code=EXIT_USAGE,
            )
        if exc.errno == errno.EACCES:
            _fail(where, "ports below 1024 need privileges; choose a port from 1024 (--port or MCP_PORT)")
        _fail(where, "choose another port (--port or MCP_PORT) or stop the process using it")


if __name__ == "__main__":
    main()
