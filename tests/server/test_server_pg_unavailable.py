"""A server whose PostgreSQL cannot be reached says so: 503 ``unavailable`` with
Retry-After, as for a database busy beyond its retries (docs/server.md, Errors), and
serves again once the database is back (issue 10).

The database is made unreachable without touching the network: it stops accepting
connections (``ALTER DATABASE ... ALLOW_CONNECTIONS false``, which binds superusers too)
and every connection to it is terminated. The many-hosts test file has the same with a
real network partition (tests/server/test_many_hosts_pg.py).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import pg
from tests.server.serverproc import ServerProcess, bearer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _allow_connections(url: str, allow: bool) -> None:
    import psycopg

    admin = pg.admin_url()
    assert admin is not None
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allow else "false"}')
    if not allow:
        pg.terminate_backends(admin, url)


def test_a_database_that_refuses_connections_answers_503_unavailable_not_500(
    pg_url: str, server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(
        tmp_path / "var",
        MCP_DB_URL=pg_url,
        MCP_DB_POOL_TIMEOUT_S="1",
        MCP_DB_CONNECT_TIMEOUT_S="1",
        MCP_DB_RETRIES="1",
    ).start()
    with server.client() as client:
        token = client.post("/api/agent/register", json={"name": "agent", "kind": "ops"}).json()["token"]
        created = client.post("/api/task/create", json={"title": "task"}, headers=bearer(token))
        assert created.status_code == 200, created.text

        _allow_connections(pg_url, False)
        try:
            answers = {
                "claim": client.post("/api/task/claim", json={}, headers=bearer(token)),
                "create": client.post("/api/task/create", json={"title": "t"}, headers=bearer(token)),
                "list": client.get("/api/task/list"),
            }
        finally:
            _allow_connections(pg_url, True)
        refused = {
            name: (r.status_code, r.json().get("error"), r.headers.get("Retry-After")) for name, r in answers.items()
        }
        assert all(status == 503 and error == "unavailable" and retry for status, error, retry in refused.values()), (
            refused
        )

        claim = client.post("/api/task/claim", json={}, headers=bearer(token))
        assert claim.status_code == 200 and "task_id" in claim.json(), claim.text
