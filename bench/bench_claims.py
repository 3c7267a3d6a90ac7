"""Claims per second of Store.claim_next_task against a raw sqlite3 baseline, and claim
latency with 1,000 versus 1,000,000 tasks in the table (issue 4).

Throughput: for 1, 2, 4 and 8 processes, a fresh database with ``--tasks`` open tasks
(built by one bulk INSERT, identical for both sides) is drained by processes that
claim until nothing is left: once through ``Store.claim_next_task``, once through the
raw baseline, a bare ``UPDATE tasks ... WHERE id = (SELECT ... LIMIT 1) RETURNING``
under ``BEGIN IMMEDIATE`` on a plain sqlite3 connection with the same pragmas, the
same schema and the same index. Each pair runs ``--repeat`` times, interleaved; the
median of each side is printed with the ratio store / raw (target >= 0.8), and the
CPU time per claim summed over the processes (less sensitive to other load).

Latency: one process claims ``--latency-claims`` tasks one by one from tables of
1,000 and ``--big`` tasks (all open) and prints the median and p90 per claim and the
ratio big / small (target <= 1.5).

Usage: .venv/bin/python bench/bench_claims.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from icn_mcp.db import Database
from icn_mcp.db.timestamps import format_ts, utc_now
from icn_mcp.store import Store

CTX = multiprocessing.get_context("fork")
LEASE_S = 300.0

RAW_CLAIM = """
    UPDATE tasks SET status = 'claimed', claimed_by = ?, attempt = attempt + 1,
        lease_expires_at = ?, lease_s = ?, updated_at = ?
    WHERE id = (
        SELECT id FROM tasks INDEXED BY tasks_claim_order
        WHERE status = 'open' AND blocking_deps = 0
        ORDER BY priority DESC, created_at, id LIMIT 1
    )
    RETURNING id, attempt, lease_expires_at
"""

# n open tasks with five priorities and increasing creation times, in one statement.
BULK_INSERT = """
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
    INSERT INTO tasks (title, status, priority, created_at, updated_at, blocking_deps)
    SELECT 'task ' || i, 'open', i % 5,
           strftime('%Y-%m-%dT%H:%M:%S', 1767225600 + i / 1000, 'unixepoch')
               || printf('.%06dZ', (i % 1000) * 1000),
           '2026-01-01T00:00:00.000000Z', 0
    FROM n
"""


def build(path: Path, tasks: int) -> str:
    """A migrated database with one agent and ``tasks`` open tasks; the agent id."""
    with Database(path) as db:
        agent = Store(db).register_agent("bench", "ops")
        with db.write_transaction() as conn:
            conn.execute(BULK_INSERT, (tasks,))
    return agent.id


def store_claimer(path: str, agent_id: str, barrier, results) -> None:
    with Database(path) as db:
        store = Store(db, default_lease_s=LEASE_S)
        barrier.wait()
        started, cpu = time.monotonic(), time.process_time()
        count = 0
        while store.claim_next_task(agent_id) is not None:
            count += 1
        results.put((count, started, time.monotonic(), time.process_time() - cpu))


def raw_claimer(path: str, agent_id: str, barrier, results) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    for pragma in (
        "journal_mode = WAL",
        "synchronous = NORMAL",
        "foreign_keys = ON",
        "temp_store = MEMORY",
        "cache_size = -8192",
        "busy_timeout = 30000",
    ):
        conn.execute(f"PRAGMA {pragma}")
    barrier.wait()
    started, cpu = time.monotonic(), time.process_time()
    count = 0
    while True:
        moment = utc_now()
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            RAW_CLAIM, (agent_id, format_ts(moment, plus_s=LEASE_S), LEASE_S, format_ts(moment))
        ).fetchall()
        conn.execute("COMMIT")
        if not row:
            break
        count += 1
    results.put((count, started, time.monotonic(), time.process_time() - cpu))
    conn.close()


def throughput(kind: str, workdir: Path, procs: int, tasks: int) -> tuple[float, float]:
    """Claims per second (wall clock) and CPU seconds per claim of one drain."""
    path = workdir / f"{kind}-{procs}.sqlite"
    agent_id = build(path, tasks)
    barrier = CTX.Barrier(procs)
    results = CTX.Queue()
    target = store_claimer if kind == "store" else raw_claimer
    workers = [CTX.Process(target=target, args=(str(path), agent_id, barrier, results)) for _ in range(procs)]
    for worker in workers:
        worker.start()
    outcome = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            sys.exit(f"a {kind} claimer failed (exit {worker.exitcode})")
    claimed = sum(count for count, _, _, _ in outcome)
    if claimed != tasks:
        sys.exit(f"{kind}: {claimed} claims for {tasks} tasks")
    elapsed = max(r[2] for r in outcome) - min(r[1] for r in outcome)
    cpu = sum(r[3] for r in outcome)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return claimed / elapsed, cpu / claimed


def latency(workdir: Path, tasks: int, claims: int) -> tuple[float, float, float]:
    """Median and p90 seconds per claim from a table of ``tasks``, and build time."""
    path = workdir / f"latency-{tasks}.sqlite"
    started = time.perf_counter()
    agent_id = build(path, tasks)
    built = time.perf_counter() - started
    samples = []
    with Database(path) as db:
        store = Store(db, default_lease_s=LEASE_S)
        for _ in range(50):  # warm the cache and the connection
            store.claim_next_task(agent_id)
        for _ in range(claims):
            t0 = time.perf_counter()
            store.claim_next_task(agent_id)
            samples.append(time.perf_counter() - t0)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9)], built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--procs", default="1,2,4,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--latency-claims", type=int, default=500)
    parser.add_argument("--verbose", action="store_true", help="print every run")
    parser.add_argument("--no-latency", action="store_true", help="throughput only")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.repeat, args.big, args.latency_claims = 1000, 1, 20_000, 200

    workdir = Path(tempfile.mkdtemp(prefix="bench-claims-"))
    try:
        print(
            f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
            f"{os.cpu_count()} cpus; {args.tasks} open tasks, median of {args.repeat}"
        )
        print(
            f"{'procs':>5} {'store claims/s':>15} {'raw claims/s':>13} {'store/raw':>9}"
            f" {'store cpu µs':>12} {'raw cpu µs':>10}"
        )
        for procs in [int(p) for p in args.procs.split(",")]:
            store_runs, raw_runs = [], []
            for _ in range(args.repeat):
                raw_runs.append(throughput("raw", workdir, procs, args.tasks))
                store_runs.append(throughput("store", workdir, procs, args.tasks))
            if args.verbose:
                print(
                    "      raw:",
                    " ".join(f"{r:,.0f}" for r, _ in raw_runs),
                    " store:",
                    " ".join(f"{r:,.0f}" for r, _ in store_runs),
                )
            store_rate = statistics.median(r for r, _ in store_runs)
            raw_rate = statistics.median(r for r, _ in raw_runs)
            store_cpu = statistics.median(c for _, c in store_runs)
            raw_cpu = statistics.median(c for _, c in raw_runs)
            print(
                f"{procs:>5} {store_rate:>15,.0f} {raw_rate:>13,.0f} {store_rate / raw_rate:>9.2f}"
                f" {store_cpu * 1e6:>12.0f} {raw_cpu * 1e6:>10.0f}"
            )

        if args.no_latency:
            return
        print(f"\nclaim latency, {args.latency_claims} claims, one process")
        print(f"{'tasks':>9} {'median µs':>10} {'p90 µs':>8} {'build s':>8}")
        small = latency(workdir, 1000, min(args.latency_claims, 900))
        big = latency(workdir, args.big, args.latency_claims)
        for size, (median, p90, built) in ((1000, small), (args.big, big)):
            print(f"{size:>9,} {median * 1e6:>10.1f} {p90 * 1e6:>8.1f} {built:>8.1f}")
        print(f"latency ratio {args.big:,} / 1,000 tasks: {big[0] / small[0]:.2f} (median)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
