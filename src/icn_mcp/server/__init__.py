"""The agent HQ server: HTTP worker API, MCP tools (streamable HTTP and stdio), health, metrics.

::

    from icn_mcp.config import Settings
    from icn_mcp.server import create_app, serve_http

    app = create_app(Settings.from_env())     # an ASGI app, for any ASGI server
    serve_http(Settings.from_env())           # or: icn-mcp serve
"""

from icn_mcp.server.http import create_app
from icn_mcp.server.run import serve_http, serve_stdio

__all__ = ["create_app", "serve_http", "serve_stdio"]
