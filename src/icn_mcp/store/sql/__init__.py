"""The store's SQL, one module per backend, chosen from ``db.backend``.

:mod:`.common` holds the statements both engines run as written (``?`` and
``:name`` placeholders); :mod:`.sqlite` and :mod:`.postgres` each provide a
:class:`~icn_mcp.store.sql.common.Queries` object with the backend's own statements
(claims, lease expiry, dependency lists) and how it reads the clock, opens reads and
runs writes. The store calls only that object: no dialect branches in the store.
"""

from __future__ import annotations

from typing import Any

from icn_mcp.store.sql.common import Queries

__all__ = ["Queries", "queries_for"]


def queries_for(db: Any) -> Queries:
    """The query object of ``db``'s backend (``db.backend``: sqlite or postgresql)."""
    backend = getattr(db, "backend", "sqlite")
    if backend == "postgresql":
        from icn_mcp.store.sql.postgres import PostgresQueries

        return PostgresQueries()
    from icn_mcp.store.sql.sqlite import SqliteQueries

    return SqliteQueries()
