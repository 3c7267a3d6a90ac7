"""ASGI middleware of the server, outermost first.

- :class:`ObserveMiddleware`: one structured log line and the request metrics for
  every request, and the last line of defence: an exception that escapes everything
  else becomes a bare ``500 internal_error`` (the traceback goes to the log only).
- :class:`RateLimitMiddleware`: 429 with Retry-After past the per-IP or per-token limit.
- :class:`BodyLimitMiddleware`: reads the body first: 413 for a body larger than the
  limit, whether announced by Content-Length or only found while reading; a client
  that leaves mid-body is noted (499) and the application never runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icn_mcp.server.errors import ApiError, to_api_error
from icn_mcp.server.metrics import ServerMetrics
from icn_mcp.server.ratelimit import RateLimiter

__all__ = [
    "ObserveMiddleware",
    "RateLimitMiddleware",
    "BodyLimitMiddleware",
    "RequestInfo",
    "request_info",
    "CLIENT_CLOSED_REQUEST",
    "json_response_messages",
    "bearer_from_header",
]

access_log = logging.getLogger("icn_mcp.server.access")
log = logging.getLogger("icn_mcp.server")

#: Routes that are never rate limited: probes and scrapes must always get through.
UNLIMITED_PATHS = frozenset({"/healthz", "/healthz/db", "/metrics"})
#: Methods that label the request metrics as themselves; any other is ``OTHER``, so a
#: client inventing methods cannot grow the metrics (or their cached children).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SCOPE_KEY = "icn_mcp.request"


#: The status noted for a request whose client went away before any answer (the
#: nginx convention): a client error, never counted as a 500.
CLIENT_CLOSED_REQUEST = 499


class RequestInfo:
    """Per-request facts filled in by inner layers for the log line and metrics."""

    __slots__ = ("agent_id", "route", "client_closed")

    def __init__(self) -> None:
        self.agent_id: str | None = None
        self.route: str | None = None
        #: The client went away before the answer: status 499, not 500.
        self.client_closed = False


def request_info(scope: Scope) -> RequestInfo:
    """The :class:`RequestInfo` of this request (a fresh one outside the middleware)."""
    info = scope.get(_SCOPE_KEY)
    if info is None:
        info = scope[_SCOPE_KEY] = RequestInfo()
    return info


def bearer_from_header(value: str | None) -> tuple[bool, str | None]:
    """``(well_formed, token)`` from an Authorization header value.

    No header: ``(True, None)``. ``Bearer <token>``: ``(True, token)``. Anything else
    (another scheme, an empty token, spaces in it): ``(False, None)``.
    """
    if value is None:
        return True, None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return False, None
    return True, token


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def json_response_messages(error: ApiError) -> list[Message]:
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    return [
        {"type": "http.response.start", "status": error.status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


async def _send_error(send: Send, error: ApiError) -> None:
    for message in json_response_messages(error):
        await send(message)


class ObserveMiddleware:
    """Log line, metrics and the catch-all 500 for every HTTP request."""

    def __init__(self, app: ASGIApp, *, metrics: ServerMetrics, known_routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known_routes = known_routes

    def _route(self, path: str) -> str:
        # A fixed set of labels: a fuzzer's random paths must not grow the metrics.
        if path in self.known_routes:
            return path
        if path == "/mcp" or path.startswith("/mcp/"):
            return "/mcp"
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info = request_info(scope)
        status = 500
        response_started = False

        async def send_observed(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception as exc:  # noqa: BLE001 - no request may take the server down
            error = to_api_error(exc)
            if not response_started:
                status = error.status
                try:
                    await _send_error(send, error)
                except OSError:  # the client went away
                    pass
        finally:
            if not response_started and info.client_closed:
                status = CLIENT_CLOSED_REQUEST
            self._observe(scope, info, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, info: RequestInfo, status: int, elapsed: float) -> None:
        route = info.route or self._route(scope.get("path", ""))
        method = scope.get("method", "")
        self.metrics.requests.labels(route, method if method in KNOWN_METHODS else "OTHER", str(status)).inc()
        self.metrics.request_seconds.labels(route).observe(elapsed)
        agent_id = info.agent_id or _mcp_client_id(scope)
        client = scope.get("client")
        record: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "agent_id": agent_id,
            "duration_ms": round(elapsed * 1000, 3),
            "client": client[0] if client else None,
        }
        # Only the route and status, never headers or query strings: tokens stay out.
        access_log.info("request", extra={"fields": record})


def _mcp_client_id(scope: Scope) -> str | None:
    """The agent the SDK's bearer middleware authenticated on /mcp, if any."""
    user = scope.get("user")
    token = getattr(user, "access_token", None)
    return getattr(token, "client_id", None)


class RateLimitMiddleware:
    """429 when a client address or a bearer token exceeds its requests per minute."""

    def __init__(self, app: ASGIApp, *, per_ip: RateLimiter, per_token: RateLimiter) -> None:
        self.app = app
        self.per_ip = per_ip
        self.per_token = per_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        wait = 0.0
        if self.per_ip.enabled:
            client = scope.get("client")
            wait = self.per_ip.acquire("ip:" + (client[0] if client else "unknown"))
        if not wait and self.per_token.enabled:
            ok, token = bearer_from_header(_header(scope, b"authorization"))
            if ok and token:
                # Keyed by a hash: the limiter never holds a usable token.
                key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:32]
                wait = self.per_token.acquire("token:" + key)
        if wait:
            retry_after = RateLimiter.retry_after(wait)
            await _send_error(
                send,
                ApiError(429, "rate_limited", {"retry_after_s": retry_after}, {"Retry-After": str(retry_after)}),
            )
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Reads every request body before the application runs.

    - A body over ``max_bytes``, announced by Content-Length or found while reading a
      chunked one, gets 413 ``payload_too_large`` and the application never runs.
    - A client that goes away mid-body (an aborted upload) gets nothing, since nobody
      is listening: the request is noted as ``client_closed`` (499 in the access line
      and the metrics) and the application never runs. Before, the application (ours
      or the MCP SDK's) met a ClientDisconnect in ``request.body()`` and logged it as
      an ERROR with a traceback, counted as a 500: a client without a token could
      flood the log (issue 9 item 13).
    - Otherwise the application receives the whole body in one message, then the
      real ``receive`` (which reports a later disconnect).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> ApiError:
        return ApiError(413, "payload_too_large", {"max_bytes": self.max_bytes})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                announced = int(length)
            except ValueError:
                await _send_error(
                    send, ApiError(400, "validation_error", {"fields": {"content-length": "must be an integer"}})
                )
                return
            if announced > self.max_bytes:
                await _send_error(send, self._too_large())
                return
            if announced <= 0:
                await self.app(scope, receive, send)  # no body to read
                return
        elif _header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body to read
            return

        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                request_info(scope).client_closed = True
                return
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await _send_error(send, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        body: bytes | None = b"".join(chunks)

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message: Message = {"type": "http.request", "body": body, "more_body": False}
                body = None
                return message
            return await receive()

        await self.app(scope, replay, send)
