"""A scratch PostgreSQL database for one benchmark run (shared by the bench scripts).

``MCP_BENCH_DATABASE_URL`` names a server where databases may be created; each run
gets ``icn_mcp_bench_<random>`` there, dropped afterwards (connections and all).
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

ENV = "MCP_BENCH_DATABASE_URL"


def admin_url() -> str:
    """``MCP_BENCH_DATABASE_URL``; exits with a line saying what to set without it."""
    admin = os.environ.get(ENV)
    if not admin:
        raise SystemExit(f"PostgreSQL runs need {ENV}=postgresql://... (a server where databases may be created)")
    return admin


@contextmanager
def scratch_database(admin: str | None = None) -> Iterator[str]:
    """A new, empty database on ``admin``'s server (default :func:`admin_url`): its URL."""
    import psycopg

    admin = admin or admin_url()
    name = f"icn_mcp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin)._replace(path="/" + name))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
