"""The one timestamp format icn-mcp stores: UTC ISO-8601 with microseconds and ``Z``.

``2026-11-24T01:05:28.123456Z``: fixed width, so text comparison in SQL orders
timestamps correctly (``expires_at <= ?``) and every row reads the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["utc_now", "format_ts", "parse_ts"]

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_ts(moment: datetime, *, plus_s: float = 0.0) -> str:
    """``moment`` (+ ``plus_s`` seconds) in the stored format."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    if plus_s:
        moment = moment + timedelta(seconds=plus_s)
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    # isoformat, not strftime: faster on the claim path, and zero-pads every year.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_ts(text: str) -> datetime:
    """A stored timestamp back to an aware datetime."""
    return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)
