"""The stored timestamp format: fixed width, UTC, ordered as text, round-trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icn_mcp.db.timestamps import format_ts, parse_ts

moments = st.datetimes(
    min_value=datetime(1, 1, 1),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)


@given(moments, moments)
def test_fixed_width_round_trip_and_text_order_is_time_order(a: datetime, b: datetime) -> None:
    fa, fb = format_ts(a), format_ts(b)
    assert len(fa) == len(fb) == len("2026-11-24T01:05:28.123456Z") and fa.endswith("Z")
    assert parse_ts(fa) == a and parse_ts(fb) == b
    assert (fa < fb) == (a < b)


def test_plus_seconds_and_naive_datetimes_refused() -> None:
    base = datetime(2026, 11, 24, 1, 0, 0, tzinfo=UTC)
    assert format_ts(base, plus_s=1.5) == "2026-11-24T01:00:01.500000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_ts(datetime(2026, 1, 1))
