"""Property tests: checksum normalisation, statement splitting, names and ordering."""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from icn_mcp.db.sqlite.migrations import checksum, discover, split_statements

lines = st.lists(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30), max_size=8
)


@given(lines, st.sampled_from(["\n", "\r\n", "\r"]), st.booleans())
def test_checksum_ignores_line_endings_and_bom(parts: list[str], newline: str, bom: bool) -> None:
    lf = "\n".join(parts).encode("utf-8")
    other = ("\ufeff" if bom else "").encode("utf-8") + newline.join(parts).encode("utf-8")
    assert checksum(other) == checksum(lf) == hashlib.sha256(lf).hexdigest()


@given(lines, lines)
def test_checksum_sees_any_real_change(a: list[str], b: list[str]) -> None:
    text_a, text_b = "\n".join(a), "\n".join(b)
    if text_a.lstrip("\ufeff") != text_b.lstrip("\ufeff"):
        assert checksum(text_a.encode()) != checksum(text_b.encode())


identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
literals = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@given(st.lists(st.tuples(identifiers, literals, st.booleans()), min_size=1, max_size=6))
@settings(max_examples=60)
def test_split_statements_round_trips_through_sqlite(rows: list[tuple[str, str, bool]]) -> None:
    """Statements with quotes, semicolons and comments in them split where SQLite would."""
    parts = []
    for name, literal, comment in rows:
        quoted = literal.replace("'", "''")
        prefix = f"-- note; {name}\n" if comment else ""
        parts.append(f"{prefix}INSERT INTO t (name, v) VALUES ('{name}', '{quoted};');")
    text = "CREATE TABLE t (name TEXT, v TEXT);\n" + "\n".join(parts) + "\n-- trailing; comment\n"
    statements = split_statements(text)
    assert len(statements) == len(rows) + 1
    conn = sqlite3.connect(":memory:")
    for st_ in statements:
        conn.execute(st_.sql)
    assert [tuple(r) for r in conn.execute("SELECT name, v FROM t")] == [
        (name, literal + ";") for name, literal, _ in rows
    ]
    # Line numbers point at the first token of each statement.
    text_lines = text.split("\n")
    for st_ in statements:
        assert text_lines[st_.line - 1].lstrip().startswith(("CREATE", "INSERT"))


def test_trigger_bodies_are_one_statement() -> None:
    text = (
        "CREATE TABLE a (x);\nCREATE TRIGGER trg AFTER INSERT ON a BEGIN\n"
        "  UPDATE a SET x = x + 1;\n  SELECT 1;\nEND;\nSELECT 2;\n"
    )
    assert [s.line for s in split_statements(text)] == [1, 2, 6]


def test_an_unterminated_statement_is_an_error() -> None:
    try:
        split_statements("SELECT 1;\nSELECT 2\n")
    except ValueError as exc:
        assert "line 2" in str(exc)
    else:
        raise AssertionError("accepted an incomplete statement")


@given(
    st.lists(
        st.tuples(st.integers(0, 9999), st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)),
        min_size=1,
        max_size=12,
        unique_by=lambda t: t[0],
    )
)
@settings(max_examples=40)
def test_discover_orders_numerically_for_padded_names(entries: list[tuple[int, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for number, desc in entries:
            (Path(tmp) / f"{number:04d}_{desc}.sql").write_text("SELECT 1;\n")
        found = [m.version for m in discover(tmp)]
    assert found == [f"{n:04d}_{d}" for n, d in sorted(entries)]
