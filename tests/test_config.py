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
    s = Settings.from_env(
        {
            "MCP_DB_BUSY_TIMEOUT_MS": " 500 ",
            "MCP_DB_SYNCHRONOUS": "full",
            "MCP_MIGRATIONS_ALLOW_MISSING": "yes",
            "MCP_DB_HEALTH_CHECK_INTERVAL_S": "2.5",
            "MCP_MIGRATIONS_DIR": "/m",
        }
    )
    assert s.busy_timeout_ms == 500 and s.synchronous == "FULL"
    assert s.allow_missing_migrations is True and s.health_check_interval_s == 2.5
    assert s.migrations_dir == Path("/m")
    assert s.database_options()["busy_timeout_ms"] == 500


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("MCP_DB_BUSY_TIMEOUT_MS", "soon", "an integer from 0 to 86400000"),
        ("MCP_DB_BUSY_TIMEOUT_MS", "-5", "an integer from 0 to 86400000"),
        ("MCP_DB_SYNCHRONOUS", "MAYBE", "one of OFF, NORMAL, FULL, EXTRA"),
        ("MCP_DB_HEALTH_CHECK_INTERVAL_S", "nan", "a number from 0 to 86400"),
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
    assert served.returncode == 1 and "is unavailable" in served.stderr
    assert "pw@" not in served.stderr
    assert not (tmp_path / "var").exists()  # nothing was written anywhere


# -- item 15: every setting is range-checked when it is read -----------------------------

import dataclasses  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402

from hypothesis import HealthCheck, example, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from icn_mcp.config import SETTINGS, SettingSpec  # noqa: E402

NUMERIC = [spec for spec in SETTINGS if spec.minimum is not None]
OTHER = [spec for spec in SETTINGS if spec.minimum is None]
README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_settings_field_comes_from_a_declared_variable() -> None:
    """A new Settings field without an entry in SETTINGS (and so without a range) fails here."""
    declared = {spec.field for spec in SETTINGS}
    fields = {f.name for f in dataclasses.fields(Settings)} - {"extra", "db_url"}
    assert fields == declared
    assert len({spec.variable for spec in SETTINGS}) == len(SETTINGS)


def test_every_numeric_setting_has_a_finite_range_and_its_default_inside() -> None:
    defaults = Settings()
    for spec in NUMERIC:
        assert spec.maximum is not None and math.isfinite(spec.maximum), spec.variable
        assert spec.minimum <= getattr(defaults, spec.field) <= spec.maximum, spec.variable


def test_the_readme_env_table_names_every_setting_with_its_range() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `MCP_")]
    for spec in SETTINGS:
        row = next((r for r in rows if f"`{spec.variable}`" in r), None)
        assert row is not None, f"README's env table lacks {spec.variable}"
        if spec.minimum is not None:
            # the allowed range, as the error message says it, appears in the row
            low, high = (
                (f"{spec.minimum:g}", f"{spec.maximum:g}")
                if not spec.integer
                else (str(int(spec.minimum)), str(int(spec.maximum)))
            )
            numbers = set(re.findall(r"-?\d+(?:\.\d+)?", row.replace(",", "").replace("_", "")))
            assert low in numbers and high in numbers, (spec.variable, low, high, row)


def _raw(value: float, integer: bool) -> str:
    return str(int(value)) if integer else repr(float(value))


@st.composite
def _out_of_range(draw: st.DrawFn) -> tuple[SettingSpec, str]:
    spec = draw(st.sampled_from(NUMERIC))
    assert spec.minimum is not None and spec.maximum is not None
    if spec.integer:
        below = st.integers(max_value=int(spec.minimum) - 1)
        above = st.integers(min_value=int(spec.maximum) + 1)
        value = draw(st.one_of(below, above, st.integers(min_value=10**18, max_value=10**40)))
        return spec, str(value)
    below = st.floats(max_value=spec.minimum, exclude_max=True, allow_nan=False)
    above = st.floats(min_value=spec.maximum, exclude_min=True)
    special = st.sampled_from(["nan", "inf", "-inf", "1e400"])
    value = draw(st.one_of(below.map(repr), above.map(repr), special))
    return spec, value


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_out_of_range())
@example((next(s for s in SETTINGS if s.variable == "MCP_TOKEN_TTL_S"), "300000000000"))
@example((next(s for s in SETTINGS if s.variable == "MCP_DB_BUSY_TIMEOUT_MS"), "2147483648"))
@example((next(s for s in SETTINGS if s.variable == "MCP_LEASE_S"), "700000"))
def test_out_of_range_values_name_the_variable_the_value_and_the_range(case: tuple[SettingSpec, str]) -> None:
    spec, raw = case
    with pytest.raises(ConfigError) as info:
        Settings.from_env({spec.variable: raw})
    assert info.value.variable == spec.variable and info.value.value == raw
    message = str(info.value)
    assert "\n" not in message and spec.allowed in message, message


@st.composite
def _in_range(draw: st.DrawFn) -> tuple[SettingSpec, str, float]:
    spec = draw(st.sampled_from(NUMERIC))
    assert spec.minimum is not None and spec.maximum is not None
    if spec.integer:
        value = draw(
            st.one_of(
                st.integers(int(spec.minimum), int(spec.maximum)),
                st.sampled_from([int(spec.minimum), int(spec.maximum)]),
            )
        )
        return spec, f" {value} ", value
    value = draw(st.one_of(st.floats(spec.minimum, spec.maximum), st.sampled_from([spec.minimum, spec.maximum])))
    return spec, repr(value), value


@hsettings(max_examples=300, deadline=None)
@given(_in_range())
def test_in_range_values_are_accepted_as_given(case: tuple[SettingSpec, str, float]) -> None:
    spec, raw, value = case
    assert getattr(Settings.from_env({spec.variable: raw}), spec.field) == value


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from(OTHER), st.text(max_size=40))
def test_any_text_for_the_other_settings_is_accepted_or_refused_by_name(spec: SettingSpec, raw: str) -> None:
    try:
        Settings.from_env({spec.variable: raw})
    except ConfigError as exc:
        assert exc.variable == spec.variable and "\n" not in str(exc)


def test_every_out_of_range_setting_exits_2_with_one_line_naming_it(tmp_path: Path) -> None:
    """What a user sees: the command stops at once, exit 2, naming variable, value, range."""
    from tests.helpers import run_cli

    for spec in NUMERIC:
        raw = _raw(spec.maximum + 1, spec.integer)  # type: ignore[operator]
        env = {"MCP_DB_DIR": str(tmp_path / "var"), spec.variable: raw}
        result = run_cli("db", "status", env=env)
        assert result.returncode == 2, (spec.variable, result.stderr)
        assert result.stderr.splitlines() == [f"error: {spec.variable}={raw!r} is not valid: expected {spec.allowed}"]
    assert not (tmp_path / "var").exists()


def test_the_largest_database_settings_work(tmp_path: Path) -> None:
    """Each maximum is one SQLite really holds (it read back as 0 beyond 2**31 - 1)."""
    from icn_mcp.db import Database

    env = {
        spec.variable: _raw(spec.maximum, spec.integer)
        for spec in NUMERIC  # type: ignore[arg-type]
        if spec.field in Settings().database_options()
    }
    assert {"MCP_DB_BUSY_TIMEOUT_MS", "MCP_DB_CACHE_SIZE_KIB", "MCP_DB_JOURNAL_SIZE_LIMIT"} <= set(env)
    options = Settings.from_env(env).database_options()
    with Database(tmp_path / "max.sqlite", **options) as db:
        assert db.read_pragmas(db.connection()) == db.expected_pragmas()


def test_the_longest_token_lifetime_grace_and_lease_work(tmp_path: Path) -> None:
    """MCP_TOKEN_TTL_S=300000000000 made every registration a 500 (OverflowError)."""
    from icn_mcp.db import Database
    from icn_mcp.store import Store

    longest = {
        name: _raw(spec.maximum, True)
        for spec in NUMERIC  # type: ignore[arg-type]
        for name in [spec.variable]
        if name in ("MCP_TOKEN_TTL_S", "MCP_REFRESH_GRACE_S", "MCP_LEASE_S")
    }
    settings = Settings.from_env(longest)
    with Database(tmp_path / "hq.sqlite") as db:
        store = Store.from_settings(db, settings)
        first = store.register_agent("a1", "ops")
        refreshed = store.refresh_token(first.token)
        assert refreshed.token != first.token
        task = store.create_task("t")
        claim = store.claim_next_task(first.id)
        assert claim is not None and claim.task_id == task.id


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"token_ttl_s": 300_000_000_000}, "token_ttl_s=300000000000"),
        ({"refresh_grace_s": 10**12}, "refresh_grace_s=1000000000000"),
        ({"default_lease_s": 700_000}, "default_lease_s=700000"),
    ],
)
def test_the_store_refuses_durations_a_timestamp_cannot_hold(tmp_path: Path, kwargs: dict, message: str) -> None:
    from icn_mcp.db import Database
    from icn_mcp.store import Store

    with Database(tmp_path / "hq.sqlite") as db:
        with pytest.raises(ConfigError, match=message):
            Store(db, **kwargs)


def test_stdio_agent_settings_are_checked_like_a_registration() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MCP_STDIO_AGENT_KIND": "wizard"})
    assert info.value.variable == "MCP_STDIO_AGENT_KIND" and "planner" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MCP_STDIO_AGENT_NAME": "my agent"})
    assert info.value.variable == "MCP_STDIO_AGENT_NAME"
    assert (
        Settings.from_env({"MCP_AGENT_KINDS": "wizard", "MCP_STDIO_AGENT_KIND": "wizard"}).stdio_agent_kind == "wizard"
    )


def test_the_lease_setting_allows_exactly_what_a_claim_may_ask_for() -> None:
    """MCP_LEASE_S=700000 was accepted, then refused by the store naming 'default_lease_s'."""
    from icn_mcp.config import MAX_LEASE_S
    from icn_mcp.store.validation import LEASE_MAX_S

    assert MAX_LEASE_S == LEASE_MAX_S
