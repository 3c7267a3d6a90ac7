"""``serve --stdio`` as a desktop client drives it, with raw JSON-RPC lines on a real
subprocess (issue 9 item 23): a client that sends its requests and closes stdin at
once still gets every response, and every task it created exists."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from mcp.types import LATEST_PROTOCOL_VERSION

from icn_mcp.db import Database
from tests.server.serverproc import server_env

REQUESTS = 40


def _line(message: dict) -> bytes:
    return (json.dumps(message) + "\n").encode()


def _handshake(client_name: str) -> bytes:
    """MCP's initialize request and initialized notification, as a client sends them."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": LATEST_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": client_name, "version": "1"},
        },
    }
    return _line(initialize) + _line({"jsonrpc": "2.0", "method": "notifications/initialized"})


def _start_stdio(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``icn-mcp serve --stdio`` as a desktop client starts it: all three pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", "icn_mcp", "serve", "--stdio"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _serve_stdio_until_eof(env: dict[str, str], payload: bytes) -> tuple[bytes, bytes]:
    """``serve --stdio`` given ``payload`` then EOF (communicate() closes stdin right
    after writing); its stdout and stderr, once it exited cleanly."""
    proc = _start_stdio(env)
    out, err = proc.communicate(payload, timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out, err


def test_requests_sent_right_before_eof_all_get_their_responses(tmp_path: Path) -> None:
    env = server_env(tmp_path / "var", MCP_STDIO_AGENT_NAME="desk", MCP_STDIO_AGENT_KIND="ops")
    payload = _handshake("eof-test")
    for n in range(1, REQUESTS + 1):
        payload += _line(
            {
                "jsonrpc": "2.0",
                "id": n,
                "method": "tools/call",
                "params": {"name": "create_task", "arguments": {"title": f"task {n}", "idempotency_key": f"k{n}"}},
            }
        )
    # All requests, then EOF at once: communicate() closes stdin right after writing.
    out, err = _serve_stdio_until_eof(env, payload)

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


def test_sigterm_answers_the_requests_in_flight_before_exiting(tmp_path: Path) -> None:
    """The sibling on a signal: SIGTERM stops reading, but every request already being
    served is answered before the process exits, so no task exists whose response
    was lost. (The client closes stdin after the signal: with stdin left open the
    process would wait for it, up to the shutdown deadline; see docs/server.md.)"""
    # A shutdown deadline far above what 40 small writes need, however loaded the
    # machine: the test is about which requests are answered, not about the deadline
    # (the process ends as soon as they are, and the client has closed stdin).
    env = server_env(
        tmp_path / "var", MCP_STDIO_AGENT_NAME="desk", MCP_STDIO_AGENT_KIND="ops", MCP_SHUTDOWN_TIMEOUT_S="60"
    )
    proc = _start_stdio(env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(
            _line(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": LATEST_PROTOCOL_VERSION,
                        "capabilities": {},
                        "clientInfo": {"name": "sigterm-test", "version": "1"},
                    },
                }
            )
            + _line({"jsonrpc": "2.0", "method": "notifications/initialized"})
        )
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 0
        proc.stdin.write(
            b"".join(
                _line(
                    {
                        "jsonrpc": "2.0",
                        "id": n,
                        "method": "tools/call",
                        "params": {"name": "create_task", "arguments": {"title": f"task {n}"}},
                    }
                )
                for n in range(1, REQUESTS + 1)
            )
        )
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())["id"]  # requests are being served
        assert first >= 1
        proc.send_signal(signal.SIGTERM)
        # Read the rest through the same buffered file as readline() above:
        # communicate() reads the pipe itself, past whatever answers readline() had
        # already buffered (which is how this test once "lost" answers 2 and 3).
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()))  # type: ignore[union-attr]
        drain.start()
        proc.stdin.close()
        out = proc.stdout.read()
        proc.wait(120)
        drain.join(120)
        err = errors[0] if errors else b""
    finally:
        if proc.poll() is None:
            proc.kill()
    answered = {json.loads(raw)["id"] for raw in out.decode().splitlines()} | {first}
    with Database(tmp_path / "var" / "icn-mcp.sqlite") as db:
        created = {int(row[0].split()[1]) for row in db.connection().execute("SELECT title FROM tasks")}
    assert created - answered == set(), f"created but never answered: {sorted(created - answered)}"
    assert b"Traceback" not in err


def test_end_of_input_ends_waiting_claims_with_no_available_tasks(tmp_path: Path) -> None:
    """A waiting claim (issue 11) over stdio is answered no_available_tasks when the
    client closes stdin, as SIGTERM answers it over HTTP; before, it ran into the
    shutdown timeout and came back as a JSON-RPC error "Connection closed"."""
    env = server_env(
        tmp_path / "var", MCP_STDIO_AGENT_NAME="desk", MCP_STDIO_AGENT_KIND="ops", MCP_SHUTDOWN_TIMEOUT_S="3"
    )
    payload = _handshake("wait-test")
    payload += _line(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "claim_task", "arguments": {"wait_s": 50}},
        }
    )
    out, err = _serve_stdio_until_eof(env, payload)
    answers = {m.get("id"): m for m in map(json.loads, out.decode().splitlines()) if "id" in m}
    assert answers[1]["result"]["structuredContent"] == {"error": "no_available_tasks"}, answers[1]
