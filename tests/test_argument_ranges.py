"""Library arguments out of range are clean errors naming the argument (issue 9 item 15's siblings).

The MCP_* settings are range-checked in config (tests/test_config.py); the same values
passed straight to the library failed later with internals: an advisory lock with a
ttl of 1e12 s raised OverflowError from the timestamp code, a NaN wait never reached
its deadline (waiting forever on a held lock), a string ttl raised TypeError, and
Database(busy_timeout_ms=2**31) failed with "PRAGMA busy_timeout ... is 0 after
setting it".
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from icn_mcp.config import MAX_BACKUP_KEEP
from icn_mcp.db import Database
from icn_mcp.errors import DatabaseError
from tests.helpers import run_cli


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"busy_timeout_ms": 2**31}, "busy_timeout_ms=2147483648 is not valid: expected an integer from 0 to"),
        ({"cache_size_kib": 2**40}, "cache_size_kib=1099511627776 is not valid"),
        ({"journal_size_limit": 2**63}, "journal_size_limit=9223372036854775808 is not valid"),
        ({"retries": 10**6}, "retries=1000000 is not valid"),
        ({"health_check_interval_s": "30"}, "health_check_interval_s='30' is not valid"),
        ({"health_check_interval_s": math.nan}, "health_check_interval_s=nan is not valid"),
        ({"retry_max_delay_s": math.inf}, "retry_max_delay_s=inf is not valid"),
    ],
)
def test_database_arguments_out_of_range_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(DatabaseError) as info:
        Database(tmp_path / "x.sqlite", **kwargs)
    assert message in str(info.value)
    assert not (tmp_path / "x.sqlite").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ttl_s": 1e12}, "ttl_s=1000000000000.0 is not valid"),
        ({"ttl_s": math.nan}, "ttl_s=nan is not valid"),
        ({"ttl_s": "5"}, "ttl_s='5' is not valid"),
        ({"ttl_s": 5, "wait_s": math.nan}, "wait_s=nan is not valid"),
        ({"ttl_s": 5, "wait_s": math.inf}, "wait_s=inf is not valid"),
    ],
)
def test_advisory_lock_arguments_out_of_range_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    with Database(tmp_path / "x.sqlite") as db:
        with pytest.raises(DatabaseError, match="advisory lock " + message.replace("(", r"\(")):
            db.advisory_lock("job", **kwargs)
        with db.advisory_lock("job", ttl_s=5) as lease:
            with pytest.raises(DatabaseError, match="ttl_s=10000000000000.0 is not valid"):
                lease.renew(1e13)


def test_backup_keep_has_the_same_range_as_the_setting(tmp_path: Path) -> None:
    env = {"MCP_DB_DIR": str(tmp_path / "var")}
    assert run_cli("db", "migrate", env=env).returncode == 0
    result = run_cli("db", "backup", "--keep", str(MAX_BACKUP_KEEP + 1), env=env)
    assert result.returncode == 2 and f"0<=x<={MAX_BACKUP_KEEP}" in result.stderr, result.stderr
    assert not (tmp_path / "var" / "backups").exists()
