"""``serve --stdio`` as a desktop client drives it, with raw JSON-RPC lines on a real
subprocess (issue 9 item 23): a client that sends its requests and closes stdin at
once still gets every response, and every task it created exists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mcp.types import LATEST_PROTOCOL_VERSION

from icn_mcp.db import Database
from tests.server.serverproc import server_env

REQUESTS = 40


def _line(message: dict) -> bytes:
    return (json.dumps(message) + "\n").encode()


def test_requests_sent_right_before_eof_all_get_their_responses(tmp_path: Path) -> None:
    env = server_env(tmp_path / "var", MCP_STDIO_AGENT_NAME="desk", MCP_STDIO_AGENT_KIND="ops")
    payload = _line({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": LATEST_PROTOCOL_VERSION, "capabilities": {},
                   "clientInfo": {"name": "eof-test", "version": "1"}},
    })
    payload += _line({"jsonrpc": "2.0", "method": "notifications/initialized"})
    for n in range(1, REQUESTS + 1):
        payload += _line({
            "jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": "create_task", "arguments": {"title": f"task {n}", "idempotency_key": f"k{n}"}},
        })
    # All requests, then EOF at once: communicate() closes stdin right after writing.
    proc = subprocess.Popen(
        [sys.executable, "-m", "icn_mcp", "serve", "--stdio"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(payload, timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]

    responses = {}
    for raw in out.decode().splitlines():
        message = json.loads(raw)
        responses[message["id"]] = message
    assert sorted(responses) == list(range(REQUESTS + 1)), f"missing: {set(range(REQUESTS + 1)) - set(responses)}"
    created = [responses[n]["result"]["structuredContent"] for n in range(1, REQUESTS + 1)]
    assert all(not responses[n]["result"].get("isError") for n in range(1, REQUESTS + 1)), created[:3]
    assert sorted(task["title"] for task in created) == sorted(f"task {n}" for n in range(1, REQUESTS + 1))

    with Database(tmp_path / "var" / "icn-mcp.sqlite") as db:
        titles = [row[0] for row in db.connection().execute("SELECT title FROM tasks ORDER BY id")]
    assert sorted(titles) == sorted(f"task {n}" for n in range(1, REQUESTS + 1))
