"""A real PostgreSQL for the tests: fresh databases on the server MCP_TEST_DATABASE_URL names.

Each test that needs one gets a database of its own (``icn_mcp_test_<random>``),
created on the server of ``MCP_TEST_DATABASE_URL`` and dropped afterwards. Without
that variable the PostgreSQL tests are skipped with a visible reason; with
``CI=true`` a skipped PostgreSQL test fails the run (tests/conftest.py).
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

ENV = "MCP_TEST_DATABASE_URL"
SKIP_REASON = f"PostgreSQL tests need {ENV}=postgresql://... (a server where databases may be created); .ci/run sets it"


def admin_url() -> str | None:
    return os.environ.get(ENV) or None


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def create_database(admin: str) -> str:
    """A new, empty database on ``admin``'s server; its URL."""
    import psycopg

    name = f"icn_mcp_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(admin, name)


def drop_database(admin: str, url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_backends(admin: str, url: str) -> int:
    """pg_terminate_backend every connection to ``url``'s database; how many."""
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def latest_migration() -> str:
    """The version and name of the newest PostgreSQL migration shipped (``0008_...``)."""
    from icn_mcp.db.postgres.migrations import migrations_dir_for
    from icn_mcp.db.sqlite.migrations import default_migrations_dir

    return sorted(path.stem for path in migrations_dir_for(default_migrations_dir()).glob("*.sql"))[-1]
