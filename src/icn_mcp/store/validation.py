"""Input checks of the store. Each collects every bad field before raising one
:class:`~icn_mcp.errors.ValidationError`, so a client learns all its mistakes at once."""

from __future__ import annotations

import json
import math
import re
from typing import Iterable

from icn_mcp.errors import ValidationError

__all__ = [
    "NAME_PATTERN",
    "VERSION_PATTERN",
    "TITLE_MAX",
    "DESCRIPTION_MAX",
    "CREATED_BY_MAX",
    "IDEMPOTENCY_KEY_MAX",
    "PRIORITY_MIN",
    "PRIORITY_MAX",
    "MAX_ATTEMPTS_MAX",
    "DEPENDS_ON_MAX",
    "NOTES_MAX",
    "LEASE_MAX_S",
    "ARTIFACT_KIND_PATTERN",
    "ARTIFACT_PATH_MAX",
    "ARTIFACT_META_MAX",
    "LIST_LIMIT_MAX",
    "ID_MAX",
    "ID_ALLOWED",
    "ATTEMPT_MAX",
    "Problems",
    "parse_id",
    "format_id",
    "parse_decimal",
]

#: An agent name: a letter or digit, then up to 63 letters, digits, ``.``, ``_``, ``-``.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: An agent version such as ``1.2.0`` or ``2024.05+build-7``.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
TITLE_MAX = 200
DESCRIPTION_MAX = 20_000
CREATED_BY_MAX = 128
IDEMPOTENCY_KEY_MAX = 200
PRIORITY_MIN = -1000
PRIORITY_MAX = 1000
MAX_ATTEMPTS_MAX = 100
DEPENDS_ON_MAX = 1000
NOTES_MAX = 20_000
#: The longest lease a claim may ask for (7 days).
LEASE_MAX_S = 7 * 24 * 60 * 60.0
ARTIFACT_KIND_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
ARTIFACT_PATH_MAX = 4096
#: Serialised size of an artifact's ``meta``, in characters.
ARTIFACT_META_MAX = 64 * 1024
LIST_LIMIT_MAX = 1000
#: The largest id: ids are SQLite INTEGER PRIMARY KEYs (and PostgreSQL bigints),
#: signed 64-bit.
ID_MAX = 2**63 - 1
#: The largest attempt number a report may name.
ATTEMPT_MAX = 2**62
#: What an id on the wire may be (the message of every refused id).
ID_ALLOWED = (
    f'an id: a string of ASCII digits such as "42" (no sign, spaces or leading zeros), '
    f"from 1 to {ID_MAX}; a JSON integer is accepted but deprecated"
)
# [0-9], not \d: \d also matches other scripts' digits (U+0661, Arabic-Indic one, ...).
_ID_TEXT = re.compile(r"[1-9][0-9]{0,18}")
_DECIMAL_TEXT = re.compile(r"0|[1-9][0-9]{0,18}")


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is not a priority)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 and ch not in "\t\n\r" for ch in text)


class Problems:
    """Collects ``field -> what is allowed`` and raises them together."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def add(self, name: str, why: str) -> None:
        self.fields.setdefault(name, why)

    def raise_if_any(self) -> None:
        if self.fields:
            raise ValidationError(self.fields)

    def pattern(self, name: str, value: object, pattern: re.Pattern[str], allowed: str) -> None:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            self.add(name, allowed)

    def text(
        self,
        name: str,
        value: object,
        *,
        max_len: int,
        min_len: int = 0,
        optional: bool = True,
        single_line: bool = False,
    ) -> None:
        """A string of ``min_len``..``max_len`` characters without control characters
        (newlines and tabs allowed unless ``single_line``); None when ``optional``."""
        if value is None:
            if not optional:
                self.add(name, "required")
            return
        what = (
            f"a string of {min_len}-{max_len} characters" if min_len else (f"a string of at most {max_len} characters")
        )
        if not isinstance(value, str):
            self.add(name, what)
        elif not (min_len <= len(value) <= max_len):
            self.add(name, f"{what} (got {len(value)})")
        elif min_len and not value.strip():
            self.add(name, f"{what}, not only spaces")
        elif _has_control(value) or (single_line and any(ch in value for ch in "\t\n\r")):
            self.add(name, f"{what} without control characters")

    def integer(self, name: str, value: object, *, minimum: int, maximum: int) -> None:
        if not is_int(value) or not (minimum <= value <= maximum):  # type: ignore[operator]
            self.add(name, f"an integer from {minimum} to {maximum}")


def parse_id(value: object, name: str = "id") -> int:
    """An id from the wire: the canonical decimal string (``"42"``) or, deprecated, a
    JSON integer; ValidationError naming ``name`` otherwise.

    The one place ids are read from clients (HTTP bodies and query strings, MCP
    arguments). Strict: ASCII digits only, no sign, whitespace, underscores, leading
    zeros, other scripts' digits, floats (``1.0``) or booleans, within 1..ID_MAX.
    """
    if is_int(value):
        number = value
    elif isinstance(value, str) and _ID_TEXT.fullmatch(value):
        number = int(value)
    else:
        raise ValidationError({name: ID_ALLOWED})
    if not 1 <= number <= ID_MAX:  # type: ignore[operator]
        raise ValidationError({name: ID_ALLOWED})
    return number  # type: ignore[return-value]


def format_id(number: int) -> str:
    """An id as it goes on the wire: plain decimal text (``42`` -> ``"42"``)."""
    return str(number)


def parse_decimal(value: str, name: str, *, minimum: int, maximum: int) -> int:
    """A non-negative integer written in ASCII digits (a query parameter such as
    ``limit``), within ``minimum..maximum``; ValidationError naming ``name``."""
    allowed = f"an integer from {minimum} to {maximum} in ASCII digits"
    if not isinstance(value, str) or not _DECIMAL_TEXT.fullmatch(value):
        raise ValidationError({name: allowed})
    number = int(value)
    if not minimum <= number <= maximum:
        raise ValidationError({name: allowed})
    return number


def task_id(value: object, name: str = "task_id") -> int:
    """``value`` as a task id, or ValidationError."""
    if not is_int(value) or value < 1:  # type: ignore[operator]
        raise ValidationError({name: "a positive integer task id"})
    return value  # type: ignore[return-value]


def lease_seconds(value: object) -> float:
    """A lease length in seconds: a finite number above 0, at most :data:`LEASE_MAX_S`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not (0 < value <= LEASE_MAX_S)
    ):
        raise ValidationError({"lease_s": f"a number of seconds above 0 and at most {LEASE_MAX_S:g}"})
    return float(value)


def wait_seconds(value: object, maximum: float) -> float:
    """How long a claim may wait for work: a finite number from 0 to ``maximum``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not (0 <= value <= maximum)
    ):
        raise ValidationError({"wait_s": f"a number of seconds from 0 to {maximum:g}"})
    return float(value)


def dependency_ids(problems: Problems, value: object) -> list[int]:
    """The distinct dependency ids in the order given; problems noted, not raised."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        problems.add("depends_on", "a list of task ids")
        return []
    ids = list(value)
    if len(ids) > DEPENDS_ON_MAX:
        problems.add("depends_on", f"at most {DEPENDS_ON_MAX} task ids (got {len(ids)})")
        return []
    bad = [repr(item) for item in ids if not is_int(item) or item < 1]
    if bad:
        problems.add("depends_on", "positive integer task ids, not " + ", ".join(bad[:10]))
        return []
    return list(dict.fromkeys(ids))


def artifact_meta(problems: Problems, value: object) -> str | None:
    """``meta`` as JSON text (None stays None); problems noted, not raised."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add("meta", "a JSON object (dict) or null")
        return None
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        problems.add("meta", f"JSON-serialisable data ({exc})")
        return None
    if len(text) > ARTIFACT_META_MAX:
        problems.add("meta", f"at most {ARTIFACT_META_MAX} characters as JSON (got {len(text)})")
        return None
    return text
