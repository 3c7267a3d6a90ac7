"""Settings from the environment: defaults, overrides, and one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from icn_mcp.config import Settings
from icn_mcp.errors import ConfigError


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({})
    assert s.db_dir == Path("./var")
    assert s.db_path == Path("./var/icn-mcp.sqlite")
    assert s.migrations_dir is None
    assert (s.busy_timeout_ms, s.synchronous, s.temp_store) == (30000, "NORMAL", "MEMORY")
    assert (s.cache_size_kib, s.journal_size_limit) == (8192, 64 * 1024 * 1024)
    assert s.health_check_interval_s == 30.0


def test_db_path_defaults_inside_db_dir_and_can_be_set_alone() -> None:
    assert Settings.from_env({"MCP_DB_DIR": "/srv/hq"}).db_path == Path("/srv/hq/icn-mcp.sqlite")
    s = Settings.from_env({"MCP_DB_DIR": "/srv/hq", "MCP_DB_PATH": "/data/x.sqlite"})
    assert s.db_path == Path("/data/x.sqlite") and s.db_dir == Path("/srv/hq")


def test_values_are_parsed() -> None:
    s = Settings.from_env({
        "MCP_DB_BUSY_TIMEOUT_MS": " 500 ", "MCP_DB_SYNCHRONOUS": "full",
        "MCP_MIGRATIONS_ALLOW_MISSING": "yes", "MCP_DB_HEALTH_CHECK_INTERVAL_S": "2.5",
        "MCP_MIGRATIONS_DIR": "/m",
    })
    assert s.busy_timeout_ms == 500 and s.synchronous == "FULL"
    assert s.allow_missing_migrations is True and s.health_check_interval_s == 2.5
    assert s.migrations_dir == Path("/m")
    assert s.database_options()["busy_timeout_ms"] == 500


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("MCP_DB_BUSY_TIMEOUT_MS", "soon", "an integer >= 0"),
        ("MCP_DB_BUSY_TIMEOUT_MS", "-5", "an integer >= 0"),
        ("MCP_DB_SYNCHRONOUS", "MAYBE", "one of OFF, NORMAL, FULL, EXTRA"),
        ("MCP_DB_HEALTH_CHECK_INTERVAL_S", "nan", "a finite number >= 0"),
        ("MCP_MIGRATIONS_ALLOW_MISSING", "perhaps", "one of 1/0"),
        ("MCP_DB_PATH", "  ", "a non-empty filesystem path"),
        ("MCP_DB_URL", "mysql://x", "postgresql://"),
    ],
)
def test_malformed_values_name_variable_value_and_what_is_allowed(name: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert name in message and repr(value) in message and allowed in message
    assert "\n" not in message
    assert info.value.variable == name and info.value.value == value


def test_a_malformed_database_url_is_refused_without_echoing_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MCP_DB_URL": "mysql://app:S3cretPassw0rd@db/hq"})
    assert "S3cretPassw0rd" not in str(info.value) and "app:" not in str(info.value)
    assert "MCP_DB_URL" in str(info.value) and "***@" in str(info.value)
    assert "S3cret" not in repr(Settings.from_env({"MCP_DB_URL": "postgresql://a:S3cret@h/db"}))


def test_an_unreachable_postgres_url_fails_cleanly_and_never_falls_back_to_sqlite(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    env = {
        "MCP_DB_DIR": str(tmp_path / "var"),
        "MCP_DB_URL": "postgresql://app:pw@127.0.0.1:1/hq",  # nothing listens on port 1
        "MCP_DB_CONNECT_TIMEOUT_S": "1",
    }
    for args in (("db", "migrate"), ("db", "status")):
        result = run_cli(*args, env=env)
        assert result.returncode == 1, (args, result.stderr)
        assert "is unavailable" in result.stderr and "pw@" not in result.stderr
        assert [line.split(":")[0] for line in result.stderr.splitlines()] == ["error", "hint"]
    served = run_cli("serve", "--port", "0", env=env)
    assert served.returncode == 2 and "runs on SQLite only" in served.stderr
    assert "pw@" not in served.stderr
    assert not (tmp_path / "var").exists()  # nothing was written anywhere
