"""Tests of icn_mcp.store (a package, so its conftest does not shadow tests/conftest.py)."""
