"""icn-mcp: the durable core of an MCP agent HQ."""

__version__ = "0.1.0"
