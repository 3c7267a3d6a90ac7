"""The ``icn-mcp`` command.

Each command reads the settings, opens the database, makes one library call and
prints the result. Library errors become one or two lines on stderr (the error and a
hint) with exit status 1; bad usage and bad settings exit with 2. ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import logging
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


if __name__ == "__main__":
    main()
