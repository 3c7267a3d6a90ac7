"""The SQLite backend of :mod:`icn_mcp.db`: the embedded default."""
