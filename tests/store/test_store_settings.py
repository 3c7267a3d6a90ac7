"""The store's settings (MCP_AGENT_KINDS, MCP_TOKEN_TTL_S, ...), its public names and
its errors."""

from __future__ import annotations

import pytest

import icn_mcp.errors as errors
import icn_mcp.store as store_package
from icn_mcp.config import Settings
from icn_mcp.db import Database
from icn_mcp.errors import ConfigError, Conflict, IcnMcpError, StoreError, ValidationError
from icn_mcp.store import Store

from .store_helpers import FakeClock

SECRET = "s3cret-token-value-0123456789"


def test_store_settings_default_and_parse_from_the_environment() -> None:
    default = Settings.from_env({})
    assert default.agent_kinds == ("planner", "architect", "reviewer", "ops")
    assert (default.token_ttl_s, default.refresh_grace_s, default.lease_s) == (86400, 604800, 300)
    assert default.admin_token is None and default.maintainer_tokens == ()

    settings = Settings.from_env(
        {
            "MCP_AGENT_KINDS": "builder, ops,builder",
            "MCP_TOKEN_TTL_S": "60",
            "MCP_REFRESH_GRACE_S": "0",
            "MCP_LEASE_S": "30",
            "MCP_ADMIN_TOKEN": SECRET,
            "MCP_MAINTAINER_TOKENS": f"{SECRET}-1, {SECRET}-2,",
        }
    )
    assert settings.agent_kinds == ("builder", "ops")
    assert (settings.token_ttl_s, settings.refresh_grace_s, settings.lease_s) == (60, 0, 30)
    assert settings.maintainer_tokens == (f"{SECRET}-1", f"{SECRET}-2")
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    "name, value",
    [
        ("MCP_AGENT_KINDS", ""),
        ("MCP_AGENT_KINDS", "Planner"),
        ("MCP_AGENT_KINDS", "ops,,"),
        ("MCP_TOKEN_TTL_S", "0"),
        ("MCP_REFRESH_GRACE_S", "-1"),
        ("MCP_LEASE_S", "soon"),
        ("MCP_ADMIN_TOKEN", "short"),
        ("MCP_MAINTAINER_TOKENS", f"{SECRET},tiny"),
    ],
)
def test_malformed_store_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        Settings.from_env({name: value})
    if name.endswith(("_ADMIN_TOKEN", "_TOKENS")):
        assert value not in str(info.value)  # secrets are never echoed


def test_store_from_settings(tmp_path, monkeypatch) -> None:
    settings = Settings.from_env(
        {"MCP_AGENT_KINDS": "builder", "MCP_TOKEN_TTL_S": "60", "MCP_LEASE_S": "30", "MCP_ADMIN_TOKEN": SECRET}
    )
    clock = FakeClock()
    with Database(tmp_path / "hq.sqlite") as db:
        store = Store.from_settings(db, settings, clock=clock)
        assert store.agent_kinds == ("builder",)
        assert store.maintainer_role(SECRET) == "admin"
        agent = store.register_agent("a", "builder")
        store.create_task("t")
        claim = store.claim_next_task(agent.id)
        assert claim is not None
        assert claim.lease_expires_at == clock().strftime("%Y-%m-%dT%H:%M:30.%fZ")
        clock.advance(60)
        with pytest.raises(errors.Unauthorized, match="expired"):
            store.authenticate(agent.token)


@pytest.mark.parametrize(
    "options",
    [
        {"agent_kinds": []},
        {"agent_kinds": "ops"},
        {"token_ttl_s": 0},
        {"refresh_grace_s": -1},
        {"default_lease_s": 0},
        {"admin_token": "short"},
        {"maintainer_tokens": SECRET},
    ],
)
def test_store_constructor_validates_its_arguments(tmp_path, options) -> None:
    with Database(tmp_path / "hq.sqlite") as db:
        with pytest.raises(ConfigError):
            Store(db, **options)


def test_public_names_are_exactly_the_exported_ones() -> None:
    assert sorted(store_package.__all__) == sorted(
        name
        for name in vars(store_package)
        if not name.startswith("_")
        and name not in {"models", "store", "agents", "tasks", "validation", "dashboard", "sql"}
    )
    for name in ("StoreError", "ValidationError", "NotFound", "Unauthorized", "Forbidden", "Conflict"):
        assert name in errors.__all__
        cls = getattr(errors, name)
        assert issubclass(cls, StoreError) and issubclass(cls, IcnMcpError)
        assert name in (errors.__doc__ or "")


def test_store_errors_carry_their_data() -> None:
    error = ValidationError({"title": "1-200 characters", "priority": "an integer"})
    assert error.fields["title"] == "1-200 characters"
    assert str(error) == "invalid input: title: 1-200 characters; priority: an integer"
    conflict = Conflict("stale", task_id=3, attempt=2)
    assert conflict.data == {"task_id": 3, "attempt": 2} and conflict.reason == "stale"
    not_found = errors.NotFound("task", 7)
    assert (not_found.kind, not_found.id, str(not_found)) == ("task", 7, "task 7 not found")
