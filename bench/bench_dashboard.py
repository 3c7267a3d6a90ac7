"""What one dashboard refresh costs the database, against /api/admin/stats (issue 13).

Builds a database with --tasks tasks (5 % open, two claimed per agent, the rest
completed with one run each, chains of ten dependencies) and --agents agents, then times, in the same
run, the store calls behind each part of a refresh, each the median of --repeat
calls and its ratio to ``store.stats()`` (the counts the page already read through
``/api/admin/stats`` before the dashboard existed):

- ``list_tasks(limit=15)``: one page of the task table,
- ``agent_activity``: the agents section (one pass over runs and tasks),
- ``task_graph(task)``: the neighbourhood of a task in the middle of a chain,
- ``task_graph()``: all open work (too large here: a count),
- ``get_database_info``: the database section (cached for MCP_HEALTH_CACHE_S).

    .venv/bin/python bench/bench_dashboard.py --tasks 100000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

from icn_mcp.db import Database
from icn_mcp.db.timestamps import format_ts
from icn_mcp.store import Store
from icn_mcp.store.dashboard import agent_activity, task_graph


def build(db: Database, tasks: int, agents: int) -> None:
    now = datetime.now(UTC)
    stamp = format_ts(now)
    lease = format_ts(now, plus_s=3600)
    with db.write_transaction() as conn:
        for a in range(agents):
            conn.execute(
                "INSERT INTO agents (id, name, kind, created_at) VALUES (?, ?, 'ops', ?)",
                (f"agent-{a}", f"agent {a}", stamp),
            )
            conn.execute(
                "INSERT INTO agent_tokens (token_hash, agent_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (f"hash-{a}", f"agent-{a}", stamp, lease),
            )
        for n in range(1, tasks + 1):
            agent = f"agent-{n % agents}"
            kind = n % 20
            # Claims are bounded by the agents working: two each.
            status = "open" if kind == 0 else "claimed" if kind == 1 and n <= 40 * agents else "completed"
            dep = [n - 1] if n % 10 != 1 else []
            conn.execute(
                "INSERT INTO tasks (id, title, status, created_at, updated_at, depends_on, blocking_deps,"
                " attempt, claimed_by, lease_expires_at, lease_s) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (
                    n,
                    f"task {n}",
                    status,
                    stamp,
                    stamp,
                    f"[{dep[0]}]" if dep else None,
                    0 if status == "open" else 1,
                    None if status == "open" else agent,
                    lease if status == "claimed" else None,
                    3600 if status == "claimed" else None,
                ),
            )
            if dep:
                conn.execute("INSERT INTO task_dependencies (task_id, depends_on_id) VALUES (?, ?)", (n, dep[0]))
            if status == "completed":
                conn.execute(
                    "INSERT INTO runs (task_id, agent_id, attempt, status, created_at) "
                    "VALUES (?, ?, 1, 'completed', ?)",
                    (n, agent, stamp),
                )


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Database(Path(tmp) / "bench.sqlite") as db:
        started = time.perf_counter()
        build(db, args.tasks, args.agents)
        print(f"built {args.tasks} tasks, {args.agents} agents in {time.perf_counter() - started:.1f} s")
        store = Store(db)
        now = datetime.now(UTC)
        middle = (args.tasks // 20) * 10 + 5
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("store.stats() [baseline]", store.stats),
            ("list_tasks(limit=15)", lambda: store.list_tasks(limit=15)),
            ("agent_activity", lambda: agent_activity(db, now)),
            (f"task_graph({middle})", lambda: task_graph(db, middle)),
            ("task_graph() open work", lambda: task_graph(db)),
            ("get_database_info", db.get_database_info),
        ]
        baseline = None
        print(f"{'call':28} {'median ms':>10} {'ratio':>7}")
        for name, fn in cases:
            ms = median_ms(fn, args.repeat)
            baseline = baseline or ms
            print(f"{name:28} {ms:10.2f} {ms / baseline:7.2f}")


if __name__ == "__main__":
    main()
