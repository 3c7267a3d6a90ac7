"""Client errors at the socket level against a real server (issue 9 item 13): a
chunked body over the size limit, and uploads aborted mid-body (the client closes its
socket). They are the client's doing: at most one log line each (the access line),
never an ERROR or a traceback, and never a 500 in /metrics, so that a client without
a token cannot flood the log. Raw sockets, because HTTP clients do not misbehave."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.server.serverproc import ServerProcess

MAX_BODY = 4096
ROUTES = ("/api/agent/register", "/api/task/create", "/api/task/run", "/mcp")


def _connect(server: ServerProcess) -> socket.socket:
    url = urlsplit(server.url)
    return socket.create_connection((url.hostname, url.port), timeout=30)


def _head(server: ServerProcess, path: str, extra: str, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\n{auth}{extra}\r\n"
    ).encode()


def _read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or goes quiet."""
    data = b""
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    break
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def _chunked_over_the_limit(server: ServerProcess, path: str, token: str | None) -> bytes:
    with _connect(server) as sock:
        sock.sendall(_head(server, path, "Transfer-Encoding: chunked\r\n", token))
        chunk = b"x" * 1000
        try:
            for _ in range(MAX_BODY // len(chunk) + 3):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the end: allowed
        return _read_response(sock)


def _aborted_mid_body(server: ServerProcess, path: str, token: str | None, chunked: bool) -> None:
    with _connect(server) as sock:
        if chunked:
            sock.sendall(_head(server, path, "Transfer-Encoding: chunked\r\n", token) + b"100\r\n" + b"{" * 50)
        else:
            sock.sendall(_head(server, path, "Content-Length: 3000\r\n", token) + b'{"title": "' + b"y" * 500)
        time.sleep(0.2)  # the server is reading the body...
    # ... and the client is gone (closed without sending the rest).


def _records_of(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"level": "RAW", "msg": line})
    return records


@pytest.fixture
def limited(server_factory: type[ServerProcess], tmp_path) -> ServerProcess:
    return server_factory(tmp_path / "var", MCP_MAX_BODY_BYTES=str(MAX_BODY)).start()


def test_oversized_chunked_bodies_and_aborted_uploads_are_quiet_client_errors(limited: ServerProcess) -> None:
    server = limited
    with server.client() as client:
        agent = client.post("/api/agent/register", json={"name": "owner", "kind": "planner"}).json()
    # Access lines are written by a background thread (server/logs.py): wait for the
    # registration's, so that it does not land among the lines of the phase below.
    for _ in range(200):
        if any('"route":"/api/agent/register"' in line for line in server.stderr_lines):
            break
        time.sleep(0.05)
    before = len(server.stderr_lines)
    # With a token (the body is read), and without one where the body is read first.
    cases = [(path, agent["token"]) for path in ROUTES] + [("/api/agent/register", None)]
    for path, token in cases:
        answer = _chunked_over_the_limit(server, path, token)
        assert answer.startswith(b"HTTP/1.1 413 "), (path, answer[:300])
        assert b'"payload_too_large"' in answer, (path, answer)
        _aborted_mid_body(server, path, token, chunked=False)
        _aborted_mid_body(server, path, token, chunked=True)
    time.sleep(0.5)  # let the server notice the last disconnects

    with server.client() as client:
        client.get("/healthz")  # its access line closes the misbehaving phase in the log
        for _ in range(100):
            if any('"route":"/healthz"' in line for line in server.stderr_lines[before:]):
                break
            time.sleep(0.05)
        during = _records_of(server.stderr_lines[before:])
        # Still serving, and nothing of the above counts as a server error.
        assert client.get("/healthz").json() == {"ok": True}
        metrics = client.get("/metrics").text
    statuses = re.findall(r'icn_mcp_http_requests_total\{[^}]*status="(\d+)"\} (\S+)', metrics)
    assert [s for s, _ in statuses if s.startswith("5")] == [], metrics
    assert sum(float(n) for s, n in statuses if s == "413") == len(cases)
    assert server.stop() in (0, -15)

    records = _records_of(server.stderr_lines)
    loud = [r for r in records if r.get("level") in ("ERROR", "CRITICAL", "RAW") or "exc" in r]
    assert loud == [], loud[:3]
    # One line per misbehaving request, its access line: 413 or 499 (client closed).
    access = [r for r in during if r.get("logger") == "icn_mcp.server.access"]
    assert sorted(r["status"] for r in access if r["route"] != "/healthz") == sorted(
        [413] * len(cases) + [499] * 2 * len(cases)
    ), access
    assert [r for r in during if r.get("logger") != "icn_mcp.server.access"] == []
    assert agent["token"] not in "".join(server.stderr_lines)
