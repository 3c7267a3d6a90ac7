"""The one id codec (issue 8): ``parse_id`` reads an id from any client, strictly;
``format_id`` writes it. Used by the server's request models and response shapes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icn_mcp.errors import ValidationError
from icn_mcp.store.validation import ID_MAX, format_id, parse_decimal, parse_id

ACCEPTED = [("1", 1), ("42", 42), (str(ID_MAX), ID_MAX), (7, 7), (ID_MAX, ID_MAX)]
REFUSED = [
    "",
    "0",
    "00",
    "01",
    " 1",
    "1 ",
    "\t1",
    "1\n",
    "+1",
    "-1",
    "1_000",
    "1,000",
    "1.0",
    "1e3",
    "0x10",
    "\u0661",
    "\u0967",
    "\uff11",
    "1\u0660",
    "\u00b9",
    str(ID_MAX + 1),
    "9" * 20,
    "9" * 5000,
    0,
    -1,
    ID_MAX + 1,
    1.0,
    1.5,
    True,
    False,
    None,
    [1],
    {"id": 1},
    b"1",
]


@pytest.mark.parametrize(("raw", "number"), ACCEPTED)
def test_parse_id_accepts_the_canonical_string_and_the_deprecated_integer(raw: Any, number: int) -> None:
    assert parse_id(raw) == number
    assert format_id(number) == str(number) and parse_id(format_id(number)) == number


@pytest.mark.parametrize("raw", REFUSED, ids=repr)
def test_parse_id_refuses_everything_else_naming_the_field(raw: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_id(raw, "task_id")
    assert list(info.value.fields) == ["task_id"]
    assert 'ASCII digits such as "42"' in info.value.fields["task_id"]


@given(st.text(max_size=25))
@settings(max_examples=300, deadline=None)
def test_parse_id_accepts_exactly_the_canonical_decimal_strings(text: str) -> None:
    canonical = text.isascii() and text.isdigit() and not text.startswith("0") and 1 <= int(text or 0) <= ID_MAX
    try:
        number = parse_id(text)
    except ValidationError:
        assert not canonical, text
    else:
        assert canonical and format_id(number) == text, text


@pytest.mark.parametrize("raw", ["", " 5", "+5", "5_0", "\u0665", "05", "5.0", "-1", "9" * 30, "1001"], ids=repr)
def test_parse_decimal_refuses_what_int_would_take(raw: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_decimal(raw, "limit", minimum=1, maximum=1000)
    assert info.value.fields == {"limit": "an integer from 1 to 1000 in ASCII digits"}


def test_parse_decimal_reads_plain_digits() -> None:
    assert [parse_decimal(raw, "limit", minimum=0, maximum=1000) for raw in ("0", "7", "1000")] == [0, 7, 1000]
