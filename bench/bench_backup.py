"""Backup methods against a plain ``cp`` while a writer process commits (issue 3).

Builds (or reuses, with --path) a database of about --size-mb MB, starts a writer
process that commits one small transaction about every millisecond, and in the same
run times, one after another:

- ``cp``: a plain copy of the file (the physical floor; not a consistent backup),
- ``cp+fsync``: the same plus fsync of the copy (the floor for a durable copy),
- ``backup API``: ``Connection.backup(pages=-1)`` from a dedicated connection,
- ``VACUUM INTO``,
- ``create_backup (quick)`` and ``create_backup (full, keep=1)``: ours, with
  quick_check or integrity_check, hashing, fsync and rename (the second one also
  prunes the first),

each with its ratio to ``cp`` and the writer's longest stall (the longest gap between
two of its commits that overlaps the method's run), then times get_database_info.

    .venv/bin/python bench/bench_backup.py --size-mb 1024
    .venv/bin/python bench/bench_backup.py --path /tmp/icn-bench/bench.sqlite  # reuse
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from icn_mcp.db import Database
from icn_mcp.db.sqlite.backup import _remove_file
from icn_mcp.db.sqlite.info import count_rows

ROW_BYTES = 1000
BATCH_ROWS = 20_000
WRITER_INTERVAL_S = 0.001
IDLE_S = 3.0
STALL_MS = 50

WRITER = r"""
import json, os, sqlite3, sys, time
db, ready, stop, out, interval = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
conn = sqlite3.connect(db, isolation_level=None, timeout=30)
conn.execute("PRAGMA busy_timeout = 30000")
conn.execute("PRAGMA synchronous = NORMAL")
conn.execute("PRAGMA journal_size_limit = 67108864")
times = []
open(ready, "w").close()
while not os.path.exists(stop):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO ticks (at) VALUES (?)", (time.monotonic(),))
    conn.execute("COMMIT")
    times.append(time.monotonic())
    time.sleep(interval)
json.dump(times, open(out, "w"))
"""


def build(path: Path, size_mb: int) -> None:
    """A database of about ``size_mb`` MB: one wide table with an index, and ticks."""
    print(f"building {path} (~{size_mb} MB) ...", flush=True)
    started = time.perf_counter()
    with Database(path) as db:
        conn = db.connection()
        conn.execute("CREATE TABLE IF NOT EXISTS payload (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, body BLOB)")
        conn.execute("CREATE INDEX IF NOT EXISTS payload_created_at ON payload (created_at)")
        conn.execute("CREATE TABLE IF NOT EXISTS ticks (id INTEGER PRIMARY KEY, at REAL)")
        target = size_mb * 1024 * 1024
        while os.path.getsize(path) + os.path.getsize(f"{path}-wal") < target:
            with db.write_transaction() as wconn:
                wconn.execute(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                    "INSERT INTO payload (created_at, body) "
                    "SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now') || printf('%08d', x), randomblob(?) FROM c",
                    (BATCH_ROWS, ROW_BYTES),
                )
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"built in {time.perf_counter() - started:.1f} s: {os.path.getsize(path) / 2**20:.0f} MiB", flush=True)


def max_gap_ms(times: list[float], start: float, end: float) -> float:
    """Longest interval between consecutive commits that overlaps [start, end]."""
    worst = 0.0
    for before, after in zip(times, times[1:], strict=False):
        if after >= start and before <= end:
            worst = max(worst, after - before)
    return worst * 1000


def commits_in(times: list[float], start: float, end: float) -> int:
    return sum(1 for t in times if start <= t <= end)


def gaps_over(times: list[float], start: float, end: float, limit_ms: float) -> int:
    return sum(
        1
        for before, after in zip(times, times[1:], strict=False)
        if after >= start and before <= end and (after - before) * 1000 > limit_ms
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the database to build (default 1024)")
    parser.add_argument("--path", type=Path, help="use (or build once and keep) this database")
    parser.add_argument("--workdir", type=Path, help="where copies go (default: a temporary directory)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="icn-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = (args.path or workdir / "bench.sqlite").absolute()
    if not path.exists():
        build(path, args.size_mb)
    db = Database(path)
    conn = db.connection()
    conn.execute("CREATE TABLE IF NOT EXISTS ticks (id INTEGER PRIMARY KEY, at REAL)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(path)
    print(
        f"database {path}: {size / 2**20:.0f} MiB, SQLite {sqlite3.sqlite_version}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs",
        flush=True,
    )

    ready, stop, out = workdir / "writer.ready", workdir / "writer.stop", workdir / "writer.json"
    for f in (ready, stop, out):
        f.unlink(missing_ok=True)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(ready), str(stop), str(out), str(WRITER_INTERVAL_S)]
    )
    while not ready.exists():
        time.sleep(0.01)
    time.sleep(0.5)  # a baseline period of commits

    def run_cp() -> None:
        subprocess.run(["cp", str(path), str(workdir / "cp.sqlite")], check=True)

    def run_cp_fsync() -> None:
        run_cp()
        fd = os.open(workdir / "cp.sqlite", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def run_backup_api() -> None:
        src = sqlite3.connect(path, timeout=30)
        dst = sqlite3.connect(workdir / "api.sqlite", isolation_level=None)
        dst.execute("PRAGMA journal_mode = OFF")
        dst.execute("PRAGMA synchronous = OFF")
        src.backup(dst, pages=-1)
        dst.close()
        src.close()

    def run_vacuum_into() -> None:
        src = sqlite3.connect(path, timeout=30)
        src.execute("VACUUM INTO ?", (str(workdir / "vacuum.sqlite"),))
        src.close()

    created: list[str] = []

    def run_ours(check: str, keep: int = 0):
        def run() -> None:
            result = db.create_backup(backup_dir=workdir / "backups", check=check, keep=keep)
            created.append(result.path)
            print(f"    phases: {json.dumps(result.timings_s)}; pruned {len(result.pruned)}", flush=True)

        return run

    methods = [
        # Nothing at all: the stalls the machine itself causes (other processes' I/O).
        ("idle (no backup)", lambda: time.sleep(IDLE_S), []),
        ("cp", run_cp, ["cp.sqlite"]),
        ("cp+fsync", run_cp_fsync, ["cp.sqlite"]),
        ("backup API pages=-1", run_backup_api, ["api.sqlite"]),
        ("VACUUM INTO", run_vacuum_into, ["vacuum.sqlite"]),
        ("create_backup (quick)", run_ours("quick"), []),
        # keep=1: its run includes pruning the 1 GB backup made just before.
        ("create_backup (full, keep=1)", run_ours("full", keep=1), []),
    ]
    windows: list[tuple[str, float, float]] = []
    for name, run, leftovers in methods:
        print(f"  {name} ...", flush=True)
        start = time.monotonic()
        run()
        end = time.monotonic()
        windows.append((name, start, end))
        for leftover in leftovers:
            if (workdir / leftover).exists():
                _remove_file(workdir / leftover)
        time.sleep(0.3)

    info_start = time.monotonic()
    data = db.get_database_info(backup_dir=workdir / "backups")
    info_end = time.monotonic()
    windows.append(("get_database_info", info_start, info_end))
    count_start = time.perf_counter()
    with db.read_transaction() as rconn:
        count_rows(rconn)
    count_s = time.perf_counter() - count_start
    dbstat_start = time.perf_counter()
    conn.execute("SELECT name, pgsize FROM dbstat WHERE aggregate = 1").fetchall()
    dbstat_s = time.perf_counter() - dbstat_start

    stop.touch()
    writer.wait(timeout=60)
    for made in created:
        for leftover in (Path(made), Path(made + ".json")):
            if leftover.exists():
                _remove_file(leftover)
    times = json.loads(out.read_text())
    cp_s = next(end - start for name, start, end in windows if name == "cp")
    print()
    print(f"| method | seconds | x cp | writer's longest stall (ms) | stalls > {STALL_MS} ms | commits during |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, start, end in windows:
        seconds = end - start
        print(
            f"| {name} | {seconds:.2f} | {seconds / cp_s:.2f} | {max_gap_ms(times, start, end):.1f} "
            f"| {gaps_over(times, start, end, STALL_MS)} | {commits_in(times, start, end)} |"
        )
    print()
    print(f"{len(times)} commits in all")
    print(
        f"get_database_info: {data['elapsed_ms']:.0f} ms ({len(data['tables'])} tables, "
        f"{sum(t['row_count'] or 0 for t in data['tables'])} rows); of which row counts "
        f"{count_s * 1000:.0f} ms, dbstat sizes {dbstat_s * 1000:.0f} ms"
    )
    db.close()
    if args.path is None and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
