"""Single-row write transactions: icn_mcp's run_in_transaction against raw sqlite3.

Both sides use the same file system, the same pragmas (WAL, synchronous=NORMAL,
busy_timeout 30 s, temp_store MEMORY, foreign keys, 8 MiB cache) and the same
statement; they alternate in rounds within one run so machine noise hits both.
Also times opening a database whose 200 migrations are all applied (the cost every
process pays at start-up).

    .venv/bin/python bench/bench_transactions.py [--ops 20000] [--rounds 5] [--migrations 200]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from icn_mcp.db import Database

INSERT = "INSERT INTO items (payload) VALUES (?)"
CREATE = "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)"


def raw_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in (
        "busy_timeout = 30000",
        "journal_mode = WAL",
        "synchronous = NORMAL",
        "temp_store = MEMORY",
        "foreign_keys = ON",
        "journal_size_limit = 67108864",
        "cache_size = -8192",
    ):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(CREATE)
    return conn


def bench_raw(conn: sqlite3.Connection, ops: int) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT, ("x",))
        conn.execute("COMMIT")
    return ops / (time.perf_counter() - started)


def bench_layer(db: Database, ops: int) -> float:
    def insert(conn: sqlite3.Connection) -> None:
        conn.execute(INSERT, ("x",))

    started = time.perf_counter()
    for _ in range(ops):
        db.run_in_transaction(insert)
    return ops / (time.perf_counter() - started)


def bench_open(tmp: Path, count: int, repeats: int) -> tuple[float, float]:
    migrations = tmp / "migrations"
    migrations.mkdir()
    for n in range(1, count + 1):
        (migrations / f"{n:04d}_table_{n}.sql").write_text(
            f"CREATE TABLE t{n} (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\nCREATE INDEX t{n}_name ON t{n} (name);\n"
        )
    path = tmp / "migrated.sqlite"
    started = time.perf_counter()
    Database(path, migrations_dir=migrations).close()
    first = time.perf_counter() - started
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        Database(path, migrations_dir=migrations).close()
        timings.append(time.perf_counter() - started)
    return first, statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=20_000, help="transactions per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--migrations", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        raw = raw_connection(tmp / "raw.sqlite")
        db = Database(tmp / "layer.sqlite")
        db.run_in_transaction(lambda c: c.execute(CREATE))
        bench_raw(raw, 1000)  # warm up both
        bench_layer(db, 1000)
        raw_rates, layer_rates = [], []
        for _ in range(args.rounds):
            raw_rates.append(bench_raw(raw, args.ops))
            layer_rates.append(bench_layer(db, args.ops))
        raw.close()
        db.close()
        raw_med, layer_med = statistics.median(raw_rates), statistics.median(layer_rates)
        print(f"single-row write transactions, {args.rounds} rounds x {args.ops} ops, median:")
        print(f"  raw sqlite3 BEGIN IMMEDIATE/INSERT/COMMIT : {raw_med:10.0f} ops/s")
        print(f"  icn_mcp run_in_transaction               : {layer_med:10.0f} ops/s")
        print(f"  cost of the layer (raw / layer)          : {raw_med / layer_med:10.2f}x  (target <= 1.30x)")

        first, reopen = bench_open(tmp, args.migrations, repeats=10)
        print(
            f"open with {args.migrations} migrations: first open (applies all) {first * 1000:.1f} ms, "
            f"reopen (all applied, median of 10) {reopen * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
