"""Small pieces of the server without a process: limits, settings, the document, errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from icn_mcp.cli import main
from icn_mcp.config import Settings
from icn_mcp.errors import (
    BackupError,
    BusyError,
    CommitUnknown,
    ConfigError,
    Conflict,
    DatabaseUnavailable,
    NotFound,
    StorageFull,
    Unauthorized,
    ValidationError,
)
from icn_mcp.server.dashboard import DASHBOARD_PATHS
from icn_mcp.server.errors import to_api_error
from icn_mcp.server.http import API_ROUTES
from icn_mcp.server.middleware import bearer_from_header
from icn_mcp.server.openapi import document
from icn_mcp.server.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_bursts_then_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock)  # one per second, bursts of 60
    assert all(limiter.acquire("a") == 0.0 for _ in range(60))
    wait = limiter.acquire("a")
    assert wait == pytest.approx(1.0)
    assert RateLimiter.retry_after(wait) == 1
    assert limiter.acquire("b") == 0.0, "keys are independent"
    clock.now += 1.0
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0.0


def test_rate_limiter_zero_disables() -> None:
    limiter = RateLimiter(0)
    assert not limiter.enabled
    assert all(limiter.acquire("a") == 0.0 for _ in range(10_000))


def test_server_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "MCP_HOST": "0.0.0.0",
            "MCP_PORT": "9000",
            "MCP_MAX_BODY_BYTES": "2048",
            "MCP_RATE_LIMIT_IP_PER_MIN": "0",
            "MCP_STDIO_AGENT_NAME": "desk",
            "MCP_LOG_LEVEL": "debug",
            "MCP_HEALTH_CACHE_S": "0.25",
        }
    )
    assert (settings.host, settings.port, settings.max_body_bytes) == ("0.0.0.0", 9000, 2048)
    assert settings.rate_limit_ip_per_min == 0 and settings.stdio_agent_name == "desk"
    assert settings.log_level == "DEBUG" and settings.health_cache_s == 0.25
    defaults = Settings.from_env({})
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8787)
    assert defaults.health_cache_s == 2.0
    assert Settings.from_env({"MCP_HEALTH_CACHE_S": "0"}).health_cache_s == 0.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MCP_PORT", "70000"),
        ("MCP_PORT", "http"),
        ("MCP_HOST", "a b"),
        ("MCP_MAX_BODY_BYTES", "10"),
        ("MCP_RATE_LIMIT_TOKEN_PER_MIN", "-1"),
        ("MCP_LOG_LEVEL", "LOUD"),
        ("MCP_STDIO_AGENT_KIND", " "),
        ("MCP_SHUTDOWN_TIMEOUT_S", "nan"),
        ("MCP_HEALTH_CACHE_S", "-1"),
        ("MCP_HEALTH_CACHE_S", "nan"),
        ("MCP_HEALTH_CACHE_S", "soon"),
    ],
)
def test_bad_server_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert raised.value.variable == name


def test_bearer_header_parsing() -> None:
    assert bearer_from_header(None) == (True, None)
    assert bearer_from_header("Bearer abc") == (True, "abc")
    assert bearer_from_header("bearer  abc ") == (True, "abc")
    for bad in ("", "Bearer", "Basic abc", "Bearer a b", "abc"):
        assert bearer_from_header(bad) == (False, None), bad


def test_error_mapping() -> None:
    assert to_api_error(ValidationError({"title": "too long"})).body() == {
        "ok": False,
        "error": "validation_error",
        "fields": {"title": "too long"},
    }
    assert to_api_error(NotFound("task", 7)).status == 404
    conflict = to_api_error(Conflict("stale", task_id=3, attempt=2))
    assert (conflict.status, conflict.body()["attempt"]) == (409, 2)
    assert to_api_error(Unauthorized("expired")).headers["WWW-Authenticate"].startswith("Bearer")
    busy = to_api_error(BusyError(9, RuntimeError("locked")))
    assert (busy.status, busy.headers["Retry-After"]) == (503, "1")
    unreachable = to_api_error(DatabaseUnavailable("postgresql://***@db/hq", "no connection within 2 s"))
    assert (unreachable.status, unreachable.code, unreachable.headers["Retry-After"]) == (503, "unavailable", "1")
    unknown = to_api_error(CommitUnknown("postgresql://***@db/hq", "server closed the connection"))
    assert (unknown.status, unknown.code) == (503, "commit_unknown")
    assert "may or may not" in unknown.body()["reason"] and "postgresql" not in unknown.body()["reason"]
    crash = to_api_error(RuntimeError("/secret/path line 3"))
    assert crash.body() == {"ok": False, "error": "internal_error"}, "nothing internal leaks"


def test_full_disk_and_failed_backups_map_to_their_own_codes(caplog: pytest.LogCaptureFixture) -> None:
    full = to_api_error(StorageFull("/db.sqlite", "database or disk is full", since="2026-01-01T00:00:00.000000Z"))
    assert (full.status, full.body(), full.headers) == (
        507,
        {"ok": False, "error": "storage_full", "retry_after_s": 10},
        {"Retry-After": "10"},
    )
    space = to_api_error(
        BackupError("/b/x.sqlite", "not enough free space in /b: about 9 bytes needed, 0 free", hint="free some space")
    )
    assert (space.status, space.code, space.body()["hint"]) == (507, "storage_full", "free some space")
    assert "not enough free space" in space.body()["reason"]
    other = to_api_error(BackupError("/b/x.sqlite", "integrity_check: page 3 is never used"))
    assert (other.status, other.code) == (500, "backup_failed") and "integrity_check" in other.body()["reason"]
    # None of these is a crash: no ERROR line, no traceback in the log.
    assert [r for r in caplog.records if r.levelno >= 40 or r.exc_info] == []


def test_document_describes_every_api_route() -> None:
    doc = document("http://127.0.0.1:1")
    described = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    served = {(method, path) for method, path, _ in API_ROUTES if path != "/openapi.json"}
    # The dashboard's JSON too (its page and assets are not API).
    served |= {("GET", path) for path in DASHBOARD_PATHS if path.startswith("/api/")}
    assert described == served
    assert doc["servers"] == [{"url": "http://127.0.0.1:1"}]
    for name in ("RegisterRequest", "CreateTaskRequest", "RunRequest", "ClaimRequest"):
        assert name in doc["components"]["schemas"]


def test_serve_has_help() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "--stdio" in result.output and "--port" in result.output
