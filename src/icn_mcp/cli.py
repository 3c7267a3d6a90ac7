"""The ``icn-mcp`` command.

Each command reads the settings, opens the database, makes one library call and
prints the result. Library errors become one or two lines on stderr (the error and a
hint) with exit status 1; bad usage and bad settings exit with 2. ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from icn_mcp import __version__
from icn_mcp.config import Settings
from icn_mcp.db import Database, MigrationPlan
from icn_mcp.db import migrations as _migrations
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


@main.group(cls=_Group)
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Database file (default: MCP_DB_PATH, else $MCP_DB_DIR/icn-mcp.sqlite).",
)
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
    options = settings.database_options()
    if migrations_dir is not None:
        options["migrations_dir"] = migrations_dir
    ctx.obj = {"path": db_path or settings.db_path, "options": options}


def _open(ctx: click.Context, *, migrate: bool) -> Database:
    return Database(ctx.obj["path"], migrate=migrate, **ctx.obj["options"])


def _current_plan(ctx: click.Context) -> tuple[MigrationPlan, bool]:
    """The plan, without creating the database when it does not exist yet."""
    path: Path = ctx.obj["path"]
    if not path.exists():
        migrations_dir = ctx.obj["options"]["migrations_dir"] or _migrations.default_migrations_dir()
        empty = sqlite3.connect(":memory:")
        try:
            return _migrations.plan(empty, _migrations.discover(migrations_dir)), False
        finally:
            empty.close()
    with _open(ctx, migrate=False) as database:
        return database.migration_plan(), True


@db.command()
@click.option("--dry-run", is_flag=True, help="Apply pending migrations in a transaction and roll back.")
@click.pass_context
def migrate(ctx: click.Context, dry_run: bool) -> None:
    """Apply pending migrations (each file in one transaction)."""
    if dry_run:
        with _open(ctx, migrate=False) as database:
            results = database.dry_run_migrations()
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
    click.echo(f"database {ctx.obj['path']} is up to date ({total} migrations applied)")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """List applied, pending, changed, missing and failed migrations."""
    current, exists = _current_plan(ctx)
    path = str(Path(ctx.obj["path"]).absolute())
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
        if item.state == "failed" and item.error:
            click.echo(f"{'':<{width}}    last error: {item.error}")
    counts = current.to_dict()["counts"]
    click.echo(", ".join(f"{n} {state}" for state, n in counts.items()))  # type: ignore[union-attr]
    for version in current.out_of_order:
        click.echo(f"warning: {version} is new but sorts before the latest applied migration")


@db.command()
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Check migration checksums and the database's integrity (exit 1 on any problem)."""
    path: Path = ctx.obj["path"]
    if not path.exists():
        _fail(f"database {path} does not exist", "run 'icn-mcp db migrate' to create it")
    with _open(ctx, migrate=False) as database:
        current = database.verify_migrations()
        result = database.connection().execute("PRAGMA quick_check").fetchall()
    problems = [row[0] for row in result if row[0] != "ok"]
    if problems:
        _fail(f"database {path} failed quick_check: {problems[0]}", "restore it from a verified backup")
    pending = len(current.pending)
    click.echo(
        f"ok: {len(current.applied)} migrations applied with matching checksums, "
        f"{pending} pending; quick_check ok"
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

    Without MCP_BACKUP_DIR: ``$MCP_DB_DIR/backups``, or ``backups/`` beside the
    database given with ``--db``.
    """
    from icn_mcp.db.backup import BACKUP_DIR_NAME

    settings = Settings.from_env()
    db_path = Path(ctx.obj["path"])
    if settings.backup_dir is not None:
        directory = settings.backup_dir
    elif db_path != settings.db_path:
        directory = db_path.parent / BACKUP_DIR_NAME
    else:
        directory = settings.db_dir / BACKUP_DIR_NAME
    return directory, settings.backup_keep, settings.backup_check.lower()


def _require_database(ctx: click.Context) -> None:
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
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=None,
    help="After success, delete all but the newest N icn-mcp-*.sqlite backups in the "
    "directory (default: MCP_BACKUP_KEEP; 0 keeps all).",
)
@click.pass_context
def backup(ctx: click.Context, path: Path | None, keep: int | None) -> None:
    """Write a verified snapshot of the database; safe while the server runs.

    PATH is the file to write (it must not exist) or a directory; by default
    $MCP_BACKUP_DIR (else $MCP_DB_DIR/backups)/icn-mcp-<UTC time>.sqlite. Prints the
    path and size; exit status 1 on failure, with nothing left behind.
    """
    _require_database(ctx)
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
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed when not on a terminal).")
@click.pass_context
def restore(ctx: click.Context, path: Path, yes: bool) -> None:
    """Replace the database's content with the backup at PATH.

    The backup is verified first; the current database is saved as a safety backup
    beside the others; other processes may keep the database open. Asks for
    confirmation on a terminal; elsewhere refuses (exit status 2) unless --yes.
    """
    target = Path(ctx.obj["path"]).absolute()
    if not yes:
        if not _is_terminal(sys.stdin):
            _fail(
                f"not restoring {target} without confirmation: stdin is not a terminal",
                "pass --yes to restore non-interactively",
                code=EXIT_USAGE,
            )
        if not click.confirm(
            f"Replace the contents of {target} with {path}? (a safety backup is made first)"
        ):
            _fail("restore cancelled; nothing was changed")
    directory, _, check = _backup_settings(ctx)
    with _open(ctx, migrate=False) as database:
        result = database.restore_from_backup(path, backup_dir=directory, check=check)
    click.echo(f"restored {result.database} from {result.backup_path}")
    click.echo(f"backup taken at {result.backup_created_at or 'unknown'}; latest migration {result.latest_migration}")
    for version in result.migrations_applied:
        click.echo(f"applied {version}")
    rows = ", ".join(f"{_printable(n)} {c}" for n, c in result.row_counts.items() if c is not None)
    click.echo(f"rows: {rows}")
    click.echo(f"integrity_check {result.integrity}; the previous database is saved in {result.safety_backup_path}")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print the same data as JSON.")
@click.pass_context
def info(ctx: click.Context, as_json: bool) -> None:
    """Show size, tables with row counts and sizes, indexes, migrations, last backup."""
    _require_database(ctx)
    directory, _, _ = _backup_settings(ctx)
    with _open(ctx, migrate=False) as database:
        data = database.get_database_info(backup_dir=directory)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    health = data["health"]
    click.echo(f"database   {data['path']}")
    click.echo(
        f"size       {_human(data['size_bytes'])} + WAL {_human(data['wal_size_bytes'])}; "
        f"{data['page_count']} pages of {data['page_size']} bytes, {data['freelist_count']} free"
    )
    click.echo(f"journal    {data['journal_mode']}; SQLite {data['sqlite_version']}")
    click.echo(
        f"health     {'ok' if health['ok'] else 'FAILING: ' + str(health['error'])} "
        f"({health['latency_ms']} ms probe)"
    )
    last = data["last_backup"]
    click.echo(
        f"backup     {last['path']} ({last['created_at']}, {_human(last['size_bytes'])})"
        if last
        else f"backup     none in {directory}"
    )
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
            click.echo(f"{_printable(index['name']):<{width}}  {_human(index['size_bytes']):>12}  {_printable(index['table'])}")
    click.echo("")
    vwidth = max([len(m["version"]) for m in data["migrations"]] + [9])
    click.echo(f"{'MIGRATION':<{vwidth}}  {'APPLIED AT':<27}  {'MS':>9}  CHECKSUM")
    for m in data["migrations"]:
        ms = "" if m["execution_ms"] is None else f"{m['execution_ms']:g}"
        click.echo(f"{m['version']:<{vwidth}}  {m['applied_at']:<27}  {ms:>9}  {m['checksum'][:16]}")
    for failure in data["failed_migrations"]:
        click.echo(f"failed     {failure['version']} at {failure['failed_at']}: {failure['error']}")
    click.echo(f"(gathered in {data['elapsed_ms']:.0f} ms)")


@db.command("verify-backup")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def verify_backup_command(ctx: click.Context, path: Path, as_json: bool) -> None:
    """Check a backup: header, integrity_check, migrations, manifest (exit 1 if bad)."""
    from icn_mcp.db.backup import verify_backup

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
        else "no manifest beside it"
    )
    click.echo(f"ok: {result.path} ({_human(result.size_bytes)})")
    click.echo(
        f"integrity_check ok; {len(result.applied_migrations)} migrations up to "
        f"{result.latest_migration}, checksums match; {manifest}"
    )
    if result.created_at:
        click.echo(f"created at {result.created_at}")


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
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = dataclasses.replace(settings, **overrides)
    configure_logging(logging.DEBUG if _debug(ctx) else settings.log_level)
    if stdio:
        serve_stdio(settings)
        return
    try:
        serve_http(settings, announce=lambda url: click.echo(f"serving {url} (MCP at {url}/mcp)"), workers=workers)
    except OSError as exc:
        _fail(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
            "choose another port (--port or MCP_PORT) or stop the process using it",
        )


if __name__ == "__main__":
    main()
