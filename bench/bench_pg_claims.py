"""PostgreSQL: the store's claim+complete cycles against raw psycopg and pgqueuer, same run.

Throughput. P processes (``--procs``, default 1,4,8) drain ``--tasks`` open tasks, each
cycle being what an agent does: claim the next task, then report it completed.

- ``store``: ``Store.from_settings(PostgresDatabase(url))`` per process,
  ``claim_next_task(agent)`` then ``report_run(task, agent, "completed", attempt=...)``:
  two transactions, with the store's checks (revoked agent, expired leases, fencing by
  attempt, a run row, dependents released).
- ``raw``: the same tables of the same database, on a plain psycopg connection in
  autocommit: one ``UPDATE tasks ... WHERE id = (SELECT ... ORDER BY priority DESC,
  created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING`` (the claim, with the same
  lease columns), then one statement that completes the task fenced by claimer and
  attempt and records the run. Two statements, two commits, no checks beyond those:
  the least a hand-written SKIP LOCKED queue on this schema does.
- ``pgqueuer`` (when installed: ``.venv/bin/pip install pgqueuer``; a bench-only tool,
  not a dependency of icn-mcp): its own schema in the same scratch database, jobs
  enqueued in one batch (enqueue rate printed), then P processes each running a
  ``QueueManager`` in drain mode with a no-op entrypoint on psycopg's async driver
  (``--pgq-batch``: jobs per dequeue, 10 by default as in pgqueuer; 1 is per-job),
  timed from its first job's start to its last job's end: drain mode's start-up and
  shut-down (seconds of listener and health-check set-up) are not the queue's speed.

Rounds alternate raw/store(/pgqueuer) for each P, on a refilled table, so machine noise
hits every side; every round checks that each task was completed exactly once, at
attempt 1, with one run row. The ratio store/raw is per round and their median.

Latency. One process claims ``--latency-claims`` tasks one by one, timing each
``claim_next_task`` (p50/p99), with 1,000 and then 1,000,000 open tasks in the table
(filled by one ``INSERT ... SELECT generate_series``, then ``VACUUM ANALYZE``); the
claim statement's plan is printed (it must read ``tasks_claim_order``).

Each invocation creates a scratch database on the server of MCP_BENCH_DATABASE_URL
and drops it at the end (bench/pgscratch.py):

    MCP_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1/test \\
        .venv/bin/python bench/bench_pg_claims.py [--tasks 2000] [--procs 1,4,8] [--rounds 3] \\
        [--latency-sizes 1000,1000000] [--latency-claims 1000] [--no-pgqueuer] [--pgq-batch 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

AGENTS = 8  # registered agents; process i claims as agent i % AGENTS

#: The raw claim: the store's claim statement without its checks (revoked agent,
#: expired leases waiting to be requeued).
RAW_CLAIM = """
    UPDATE tasks SET status = 'claimed', claimed_by = %s, attempt = attempt + 1,
        lease_expires_at = now() + make_interval(secs => 300), lease_s = 300, updated_at = now()
    WHERE id = (SELECT id FROM tasks WHERE status = 'open' AND blocking_deps = 0
                ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id, attempt
"""

#: The raw completion: fenced by claimer and attempt, the run recorded, one statement.
RAW_COMPLETE = """
    WITH done AS (
        UPDATE tasks SET status = 'completed', lease_expires_at = NULL, lease_s = NULL, updated_at = now()
        WHERE id = %(id)s AND status = 'claimed' AND claimed_by = %(agent)s AND attempt = %(attempt)s
        RETURNING id, attempt
    )
    INSERT INTO runs (task_id, agent_id, attempt, status, created_at)
    SELECT id, %(agent)s, attempt, 'completed', now() FROM done
"""

FILL = """
    INSERT INTO tasks (title, status, priority, created_at, updated_at, blocking_deps, attempt, max_attempts)
    SELECT 'bench task ' || g, 'open', g %% 3, now() + g * interval '1 microsecond',
           now() + g * interval '1 microsecond', 0, 0, 3
    FROM generate_series(1, %s) AS g
"""


def _open_store(url: str) -> Any:
    from icn_mcp.config import Settings
    from icn_mcp.db.postgres import PostgresDatabase
    from icn_mcp.store import Store

    db = PostgresDatabase(url, migrate=False, pool_min=1, pool_max=2)
    return Store.from_settings(db, Settings.from_env({}))


# -- workers (spawned processes) ------------------------------------------------------


def worker_store(url: str, agent: str, out: Any, start: Any) -> None:
    store = _open_store(url)
    start.wait()
    done = 0
    began = time.perf_counter()
    cpu = time.process_time()
    while (claim := store.claim_next_task(agent)) is not None:
        store.report_run(claim.task_id, agent, "completed", attempt=claim.attempt)
        done += 1
    out.put((done, time.perf_counter() - began, time.process_time() - cpu))
    store.db.close()


def worker_raw(url: str, agent: str, out: Any, start: Any) -> None:
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    start.wait()
    done = 0
    began = time.perf_counter()
    cpu = time.process_time()
    while (row := conn.execute(RAW_CLAIM, (agent,)).fetchone()) is not None:
        cur = conn.execute(RAW_COMPLETE, {"id": row[0], "agent": agent, "attempt": row[1]})
        if cur.rowcount != 1:
            raise SystemExit(f"raw completion of task {row[0]} matched {cur.rowcount} rows")
        done += 1
    out.put((done, time.perf_counter() - began, time.process_time() - cpu))
    conn.close()


def worker_pgqueuer(url: str, agent: str, out: Any, start: Any, batch: int) -> None:
    import asyncio
    from datetime import timedelta

    import psycopg
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    count = 0
    first = last = 0.0

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        qm = QueueManager(Queries.from_psycopg_connection(conn))

        @qm.entrypoint("bench")
        async def noop(job: Job) -> None:
            nonlocal count, first, last
            if not count:
                first = time.monotonic()
            count += 1
            last = time.monotonic()

        start.wait()
        await qm.run(mode=QueueExecutionMode.drain, batch_size=batch, log_aggregation_interval=timedelta(0))
        await conn.close()

    cpu = time.process_time()
    asyncio.run(main())
    # (jobs, first job's start, last job's end, CPU): drain mode's start-up and shut-down
    # (seconds of listener and health-check set-up and tear-down) are not the queue's speed.
    out.put((count, first, last, time.process_time() - cpu))


# -- one round --------------------------------------------------------------------------


def _refill(url: str, tasks: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE runs, artifacts, task_dependencies, tasks")
        conn.execute(FILL, (tasks,))
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE runs")


def _check_exactly_once(url: str, tasks: int, side: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT count(*) FILTER (WHERE status = 'completed' AND attempt = 1),
                      (SELECT count(*) FROM runs),
                      (SELECT count(DISTINCT task_id) FROM runs WHERE status = 'completed')
               FROM tasks"""
        ).fetchone()
    if row != (tasks, tasks, tasks):
        raise SystemExit(f"{side}: completed at attempt 1 / runs / distinct completed runs = {row}, expected {tasks}")


def _spawn(target: Any, url: str, agents: list[str], procs: int, extra: tuple[Any, ...] = ()) -> list[Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(procs + 1)
    workers = [
        ctx.Process(target=target, args=(url, agents[i % len(agents)], out, start, *extra)) for i in range(procs)
    ]
    for w in workers:
        w.start()
    start.wait()  # every worker is connected: the clock starts with the work
    results = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode:
            raise SystemExit(f"a worker exited with {w.exitcode}")
    return results


def run_side(side: str, url: str, agents: list[str], procs: int, tasks: int, pgq_batch: int) -> tuple[float, float]:
    """(cycles per second, CPU µs per cycle in the workers) of one round."""
    if side == "pgqueuer":
        enqueue_rate = _pgq_fill(url, tasks)
        results = _spawn(worker_pgqueuer, url, agents, procs, (pgq_batch,))
        _pgq_check(url, tasks, results)
        _ENQUEUE_RATES.append(enqueue_rate)
    else:
        _refill(url, tasks)
        results = _spawn(worker_store if side == "store" else worker_raw, url, agents, procs)
        if sum(r[0] for r in results) != tasks:
            raise SystemExit(f"{side}: {sum(r[0] for r in results)} cycles for {tasks} tasks")
        _check_exactly_once(url, tasks, side)
    if side == "pgqueuer":
        elapsed = max(r[2] for r in results) - min(r[1] for r in results if r[0])
        return tasks / elapsed, sum(r[3] for r in results) / tasks * 1e6
    elapsed = max(r[1] for r in results)
    return tasks / elapsed, sum(r[2] for r in results) / tasks * 1e6


#: pgqueuer's enqueue rates (jobs/s, one batch per round) of this run.
_ENQUEUE_RATES: list[float] = []


# -- pgqueuer ------------------------------------------------------------------------------


def _pgq_available() -> bool:
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        return False
    return True


def _pgq_install(url: str) -> None:
    import asyncio

    import psycopg
    from pgqueuer.queries import Queries

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        await Queries.from_psycopg_connection(conn).install()
        await conn.close()

    asyncio.run(main())


def _pgq_fill(url: str, jobs: int) -> float:
    """Enqueue ``jobs`` jobs in one batch; jobs enqueued per second."""
    import asyncio

    import psycopg
    from pgqueuer.queries import Queries

    async def main() -> float:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")
        queries = Queries.from_psycopg_connection(conn)
        began = time.perf_counter()
        await queries.enqueue(["bench"] * jobs, [None] * jobs, [0] * jobs)
        elapsed = time.perf_counter() - began
        await conn.execute("VACUUM ANALYZE pgqueuer")
        await conn.close()
        return jobs / elapsed

    return asyncio.run(main())


def _pgq_check(url: str, jobs: int, results: list[Any]) -> None:
    import psycopg

    done = sum(r[0] for r in results)
    with psycopg.connect(url, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()[0]
    if done != jobs or left != 0:
        raise SystemExit(f"pgqueuer: {done} jobs run of {jobs}, {left} left in the queue")


# -- latency ---------------------------------------------------------------------------------


def latency(url: str, agents: list[str], size: int, claims: int) -> tuple[float, float, float, str]:
    """(build s, p50 µs, p99 µs, plan) of ``claims`` single claims with ``size`` open tasks."""
    import psycopg

    from icn_mcp.store.sql.postgres import CLAIM_SQL

    began = time.perf_counter()
    _refill(url, size)
    build = time.perf_counter() - began
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN " + CLAIM_SQL, {"agent_id": agents[0], "lease_s": 300.0}).fetchall()
        )
        conn.execute("ROLLBACK")
    store = _open_store(url)
    times = []
    warm = 20  # the first claims warm the connection and prepare the statement
    for i in range(min(claims + warm, size)):
        t = time.perf_counter()
        claim = store.claim_next_task(agents[0])
        elapsed = time.perf_counter() - t
        if claim is None:
            raise SystemExit("latency: nothing left to claim")
        if i >= warm:
            times.append(elapsed * 1e6)
    store.db.close()
    times.sort()
    return build, statistics.median(times), times[int(len(times) * 0.99) - 1], plan


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--procs", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-sizes", default="1000,1000000")
    parser.add_argument("--latency-claims", type=int, default=1000)
    parser.add_argument("--no-pgqueuer", action="store_true")
    parser.add_argument("--pgq-batch", type=int, default=10)
    args = parser.parse_args()
    from icn_mcp.config import Settings
    from icn_mcp.db.postgres import PostgresDatabase
    from icn_mcp.store import Store
    from pgscratch import scratch_database

    with scratch_database() as url:
        with PostgresDatabase(url) as db:  # migrates
            store = Store.from_settings(db, Settings.from_env({}))
            agents = [store.register_agent(f"bench-{i}", "ops", operator=True).id for i in range(AGENTS)]
        sides = ["raw", "store"]
        if not args.no_pgqueuer:
            if _pgq_available():
                _pgq_install(url)
                sides.append("pgqueuer")
            else:
                print("pgqueuer is not installed (.venv/bin/pip install pgqueuer): its column is left out")
        print(f"load average at start: {os.getloadavg()[0]:.2f}; {args.tasks} tasks per round")
        header = f"{'procs':>5} {'round':>5}" + "".join(f" {s + '/s':>11} {s + ' CPU µs':>14}" for s in sides)
        print(header + f" {'store/raw':>9}")
        summary = []
        for procs in (int(p) for p in args.procs.split(",")):
            rates: dict[str, list[float]] = {s: [] for s in sides}
            ratios = []
            for rnd in range(args.rounds):
                order = sides if rnd % 2 == 0 else list(reversed(sides))
                line: dict[str, tuple[float, float]] = {}
                for side in order:
                    line[side] = run_side(side, url, agents, procs, args.tasks, args.pgq_batch)
                    rates[side].append(line[side][0])
                ratios.append(line["store"][0] / line["raw"][0])
                print(
                    f"{procs:>5} {rnd + 1:>5}"
                    + "".join(f" {line[s][0]:>11.0f} {line[s][1]:>14.0f}" for s in sides)
                    + f" {ratios[-1]:>9.2f}",
                    flush=True,
                )
            summary.append((procs, {s: statistics.median(r) for s, r in rates.items()}, statistics.median(ratios)))
        print("\nmedians of the rounds")
        print(f"{'procs':>5}" + "".join(f" {s + '/s':>11}" for s in sides) + f" {'store/raw':>9}")
        for procs, med, ratio in summary:
            print(f"{procs:>5}" + "".join(f" {med[s]:>11.0f}" for s in sides) + f" {ratio:>9.2f}")
        if _ENQUEUE_RATES:
            print(
                f"pgqueuer enqueue (one batch of {args.tasks}): median {statistics.median(_ENQUEUE_RATES):.0f} jobs/s"
            )
        print(f"\nclaim latency, one process, {args.latency_claims} claims (store.claim_next_task)")
        print(f"{'open tasks':>10} {'build s':>8} {'p50 µs':>8} {'p99 µs':>8}")
        lat = []
        for size in (int(s) for s in args.latency_sizes.split(",")):
            build, p50, p99, plan = latency(url, agents, size, args.latency_claims)
            lat.append(p50)
            print(f"{size:>10} {build:>8.1f} {p50:>8.0f} {p99:>8.0f}")
            if "tasks_claim_order" not in plan:
                raise SystemExit(f"the claim does not read tasks_claim_order at {size} tasks:\n{plan}")
        print(f"p50 ratio largest / smallest: {lat[-1] / lat[0]:.2f}")
        print("\nclaim plan (EXPLAIN, at the last size):\n" + plan)
        print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
