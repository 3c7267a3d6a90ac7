"""Claim+complete cycles over HTTP against the same cycles on the store directly.

Run:  .venv/bin/python bench/bench_server.py [--tasks 2000] [--clients 8]

Two runs on fresh databases with the same open tasks:

- ``http``: a real ``icn-mcp serve`` subprocess; CLIENTS threads in this process,
  each an agent with its own keep-alive ``http.client`` connection, loop
  POST /api/task/claim then POST /api/task/run (completed) until nothing is left.
- ``store``: CLIENTS threads in this process call ``Store.claim_next_task`` then
  ``Store.report_run`` on one ``Store`` (one SQLite connection per thread).

A cycle is one claim plus its report; its latency is measured from before the claim
to after the report. Printed: cycles per second, p50 and p99 cycle latency, and the
ratio http/store (the server's overhead: HTTP, JSON, auth, threads, logging).
Rate limits are off for the run; logging stays at INFO into a file, as in production.

``--backup-mb N`` adds a third run: a database of about N MB of open tasks (16 kB
descriptions) served to the same clients while ``icn-mcp db backup`` runs beside the
server; it prints cycle latencies of the cycles before the backup and of those that
overlapped it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from icn_mcp.config import Settings
from icn_mcp.db import Database
from icn_mcp.store import Store

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


def _settings(db_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    env.update(
        MCP_DB_DIR=str(db_dir),
        MCP_PORT="0",
        MCP_ADMIN_TOKEN=ADMIN_TOKEN,
        MCP_RATE_LIMIT_IP_PER_MIN="0",
        MCP_RATE_LIMIT_TOKEN_PER_MIN="0",
        MCP_LOG_LEVEL="INFO",
    )
    return env


def _prepare(db_dir: Path, tasks: int, clients: int) -> tuple[Store, list[str]]:
    """A database with ``tasks`` open tasks and ``clients`` agents; their tokens."""
    env = _settings(db_dir)
    settings = Settings.from_env(env)
    db = Database(settings.db_path, **settings.database_options())
    store = Store.from_settings(db, settings)
    tokens = [store.register_agent(f"bench-{n}", "ops", credential=ADMIN_TOKEN).token for n in range(clients)]
    for n in range(tasks):
        store.create_task(f"task {n}")
    return store, tokens


def _run_clients(clients: int, cycle_fns: list[Callable[[], bool]]) -> tuple[float, list[float]]:
    """Run each client's cycle until it returns False; (elapsed seconds, cycle latencies)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        start.wait()
        cycle = cycle_fns[n]
        while True:
            began = time.perf_counter()
            if not cycle():
                return
            latencies[n].append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return elapsed, [x for per_client in latencies for x in per_client]


class _Session:
    """One agent's keep-alive connection. The standard library's client, because the
    client shares the CPUs with the server here and should cost as little as possible."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.conn.request("POST", path, json.dumps(body), self.headers)
        response = self.conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data}")
        return data


def bench_http(tasks: int, clients: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        db_dir = Path(tmp) / "var"
        store, tokens = _prepare(db_dir, tasks, clients)
        store.db.close()
        log = open(Path(tmp) / "server.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "icn_mcp", "serve"],
            env=_settings(db_dir),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("serving "):
                raise RuntimeError(f"server did not start: {line!r}")
            url = line.split()[1]
            host, port = url.removeprefix("http://").rsplit(":", 1)
            sessions = [_Session(host, int(port), token) for token in tokens]

            def make_cycle(session: _Session) -> Callable[[], bool]:
                def cycle() -> bool:
                    claim = session.post("/api/task/claim", {})
                    if "task_id" not in claim:
                        return False
                    session.post(
                        "/api/task/run",
                        {"task_id": claim["task_id"], "status": "completed", "attempt": claim["attempt"]},
                    )
                    return True

                return cycle

            result = _run_clients(clients, [make_cycle(session) for session in sessions])
            for session in sessions:
                session.conn.close()
            return result
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()


def bench_store(tasks: int, clients: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store, tokens = _prepare(Path(tmp) / "var", tasks, clients)
        agent_ids = [store.authenticate(token).id for token in tokens]

        def make_cycle(agent_id: str) -> Callable[[], bool]:
            def cycle() -> bool:
                claim = store.claim_next_task(agent_id)
                if claim is None:
                    return False
                store.report_run(claim.task_id, agent_id, "completed", attempt=claim.attempt)
                return True

            return cycle

        try:
            return _run_clients(clients, [make_cycle(agent_id) for agent_id in agent_ids])
        finally:
            store.db.close()


def bench_backup_while_serving(size_mb: int, clients: int) -> None:
    """Cycles over HTTP before and during ``icn-mcp db backup`` of a ~size_mb database."""
    description = "x" * 16_000  # within the store's 20 000-character limit
    tasks = max(1, size_mb * 1024 * 1024 // len(description))
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        db_dir = Path(tmp) / "var"
        store, tokens = _prepare(db_dir, 0, clients)
        for n in range(tasks):
            store.create_task(f"padded {n}", description)
        store.db.close()
        env = _settings(db_dir)
        log = open(Path(tmp) / "server.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "icn_mcp", "serve"], env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
        stop = threading.Event()
        cycles: list[tuple[float, float]] = []  # (start, end), monotonic
        lock = threading.Lock()
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("serving "):
                raise RuntimeError(f"server did not start: {line!r}")
            host, port = line.split()[1].removeprefix("http://").rsplit(":", 1)

            def client(token: str) -> None:
                session = _Session(host, int(port), token)
                while not stop.is_set():
                    began = time.monotonic()
                    claim = session.post("/api/task/claim", {})
                    if "task_id" not in claim:
                        return
                    session.post(
                        "/api/task/run",
                        {"task_id": claim["task_id"], "status": "completed", "attempt": claim["attempt"]},
                    )
                    with lock:
                        cycles.append((began, time.monotonic()))
                session.conn.close()

            threads = [threading.Thread(target=client, args=(token,)) for token in tokens]
            for thread in threads:
                thread.start()
            time.sleep(2.0)
            backup_began = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "icn_mcp", "db", "backup"], env=env, capture_output=True, text=True
            )
            backup_ended = time.monotonic()
            if done.returncode != 0:
                raise RuntimeError(f"backup failed: {done.stderr}")
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join()
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    before = sorted(e - b for b, e in cycles if e < backup_began)
    during = sorted(e - b for b, e in cycles if b < backup_ended and e > backup_began)
    print(
        f"\nbackup while serving: ~{size_mb} MB database, `icn-mcp db backup` took "
        f"{backup_ended - backup_began:.2f} s (full check), {clients} clients cycling"
    )
    print(f"{'window':<8} {'cycles':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for name, sample in (("before", before), ("during", during)):
        if sample:
            p99 = sample[min(len(sample) - 1, int(len(sample) * 0.99))]
            print(
                f"{name:<8} {len(sample):>7} {statistics.median(sample) * 1000:>9.2f} "
                f"{p99 * 1000:>9.2f} {sample[-1] * 1000:>9.2f}"
            )


def _summary(name: str, elapsed: float, latencies: list[float]) -> tuple[float, float, float]:
    rate = len(latencies) / elapsed
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(f"{name:<6} {len(latencies):>7} {elapsed:>9.2f} {rate:>12.0f} {p50:>9.2f} {p99:>9.2f}")
    return rate, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--backup-mb",
        type=int,
        default=0,
        help="also time cycles while `icn-mcp db backup` copies a database of this size",
    )
    args = parser.parse_args()
    print(
        f"claim+complete cycles: {args.tasks} tasks, {args.clients} concurrent clients, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print(f"{'run':<6} {'cycles':>7} {'seconds':>9} {'cycles/s':>12} {'p50 ms':>9} {'p99 ms':>9}")
    http = _summary("http", *bench_http(args.tasks, args.clients))
    store = _summary("store", *bench_store(args.tasks, args.clients))
    print(
        f"http/store: throughput {http[0] / store[0]:.2f}x, p50 latency {http[1] / store[1]:.1f}x, "
        f"p99 latency {http[2] / store[2]:.1f}x"
    )
    if args.backup_mb:
        bench_backup_while_serving(args.backup_mb, args.clients)


if __name__ == "__main__":
    main()
