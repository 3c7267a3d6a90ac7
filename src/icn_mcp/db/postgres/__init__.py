"""The PostgreSQL backend of :mod:`icn_mcp.db`: one database many hosts share.

Needs the ``postgres`` extra (``pip install 'icn-mcp[postgres]'``: psycopg 3 and
psycopg_pool), imported only when ``MCP_DB_URL`` selects this backend.
"""

from icn_mcp.db.postgres.database import PostgresDatabase

__all__ = ["PostgresDatabase"]
