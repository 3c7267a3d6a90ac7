"""Waiting claims: wake-up latency next to a polling client, and the cost of idle waiters.

Run:  .venv/bin/python bench/bench_waiting.py [--rounds 30] [--idle 1000] [--idle-s 10]
      MCP_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1/test \
          .venv/bin/python bench/bench_waiting.py --backend postgresql

One real ``icn-mcp serve`` subprocess on a fresh database, and a second process (the
"creator") that opens the same database with the store and creates one task per
round: the server learns of it only through the database. On SQLite that is another
process on the same file (``PRAGMA data_version``); on PostgreSQL a scratch database
created on MCP_BENCH_DATABASE_URL's server, and the creator has its own connection
pool as another host's server would (LISTEN/NOTIFY).

- ``waiting``: a client's ``POST /api/task/claim {"wait_s": 30}`` is waiting; the
  creator commits a task and notes the time right after COMMIT; latency is from that
  moment to the claim's response arriving.
- ``polling``: the baseline agents use today: ``POST /api/task/claim`` every 100 ms
  until it returns a task; the same latency from the creating commit.

Rounds alternate between the two. Then ``--idle`` claims wait with nothing to claim;
once all of them wait, the server's CPU time over ``--idle-s`` seconds is printed next
to the same server idle with no waiters for as long; SIGTERM then ends the waits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from pgscratch import scratch_database

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
POLL_INTERVAL_S = 0.1

_CREATOR = """
import sys, time
from icn_mcp.db import Database
from icn_mcp.store import Store
if sys.argv[1].startswith("postgresql://"):
    from icn_mcp.db.postgres import PostgresDatabase
    db = PostgresDatabase(sys.argv[1])
else:
    db = Database(sys.argv[1])
store = Store(db)
for line in sys.stdin:
    store.create_task(line.strip())
    print(time.time(), flush=True)
db.close()
"""


def _start_server(db_dir: Path, db_url: str | None) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    if db_url is not None:
        env["MCP_DB_URL"] = db_url
    env.update(
        MCP_DB_DIR=str(db_dir),
        MCP_PORT="0",
        MCP_ADMIN_TOKEN=ADMIN_TOKEN,
        MCP_RATE_LIMIT_IP_PER_MIN="0",
        MCP_RATE_LIMIT_TOKEN_PER_MIN="0",
        MCP_LOG_LEVEL="WARNING",
        MCP_HEALTH_CACHE_S="0",
        MCP_CLAIM_WAIT_MAX_S="600",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "icn_mcp", "serve"],
        env=env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split()[1]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _waiters(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("icn_mcp_claim_waiters "):
            return float(line.split()[1])
    raise SystemExit("icn_mcp_claim_waiters missing from /metrics")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _round(url: str, token: str, creator: subprocess.Popen[str], mode: str, n: int) -> float:
    """One task created by the creator; seconds from its COMMIT to the claim's answer."""
    assert creator.stdin is not None and creator.stdout is not None
    answered: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    ready = threading.Event()

    def claim() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            if mode == "waiting":
                ready.set()
                answer = client.post("/api/task/claim", json={"wait_s": 30}, headers=headers).json()
            else:
                while True:
                    answer = client.post("/api/task/claim", json={}, headers=headers).json()
                    ready.set()
                    if "task_id" in answer:
                        break
                    time.sleep(POLL_INTERVAL_S)
            answered.append(time.time())
            assert "task_id" in answer, answer
            client.post(
                "/api/task/run",
                headers=headers,
                json={"task_id": answer["task_id"], "status": "completed", "attempt": answer["attempt"]},
            )

    thread = threading.Thread(target=claim)
    thread.start()
    ready.wait()
    with httpx.Client(base_url=url, timeout=30) as probe:
        if mode == "waiting":
            while _waiters(probe) < 1:
                time.sleep(0.005)
        else:
            time.sleep(POLL_INTERVAL_S * (n % 10) / 10)  # land anywhere in the poll cycle
    creator.stdin.write(f"{mode} {n}\n")
    creator.stdin.flush()
    committed = float(creator.stdout.readline())
    thread.join()
    return answered[0] - committed


async def _idle(url: str, token: str, count: int, seconds: float) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(base_url=url, timeout=seconds + 60, limits=limits) as client:
        headers = {"Authorization": f"Bearer {token}"}
        return await asyncio.gather(
            *(client.post("/api/task/claim", json={"wait_s": seconds}, headers=headers) for _ in range(count))
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds per mode (default 30)")
    parser.add_argument("--idle", type=int, default=1000, help="idle waiting claims (default 1000)")
    parser.add_argument("--idle-s", type=float, default=10.0, help="how long they wait (default 10)")
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="postgresql: a scratch database on MCP_BENCH_DATABASE_URL's server (default sqlite)",
    )
    args = parser.parse_args()
    if args.backend == "postgresql":
        with scratch_database() as db_url:
            _run(args, db_url)
    else:
        _run(args, None)


def _run(args: argparse.Namespace, db_url: str | None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.idle + 256)), hard))

    with tempfile.TemporaryDirectory(prefix="icn-bench-waiting-") as tmp:
        db_dir = Path(tmp) / "var"
        server, url = _start_server(db_dir, db_url)
        creator = subprocess.Popen(
            [sys.executable, "-c", _CREATOR, db_url or str(db_dir / "icn-mcp.sqlite")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                token = client.post(
                    "/api/agent/register",
                    json={"name": "bench", "kind": "ops"},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                ).json()["token"]
            latencies: dict[str, list[float]] = {"waiting": [], "polling": []}
            for n in range(args.rounds):
                for mode in ("waiting", "polling"):
                    latencies[mode].append(_round(url, token, creator, mode, n))
            print(
                f"{args.backend}: wake-up latency from the creating COMMIT (another process), "
                f"{args.rounds} rounds each:"
            )
            for mode, values in latencies.items():
                print(
                    f"  {mode:8} p50 {1000 * statistics.median(values):7.1f} ms   "
                    f"p99 {1000 * _percentile(values, 0.99):7.1f} ms   max {1000 * max(values):7.1f} ms"
                )
            ratio = statistics.median(latencies["polling"]) / statistics.median(latencies["waiting"])
            print(f"  polling/waiting p50: {ratio:.1f}x")

            idle_before = _cpu_s(server.pid)
            time.sleep(args.idle_s)
            idle_cpu = _cpu_s(server.pid) - idle_before
            answers: list[httpx.Response] = []
            waits = threading.Thread(target=lambda: answers.extend(asyncio.run(_idle(url, token, args.idle, 600))))
            waits.start()
            with httpx.Client(base_url=url, timeout=30) as probe:
                while _waiters(probe) < args.idle:
                    time.sleep(0.2)
            before = _cpu_s(server.pid)
            time.sleep(args.idle_s)
            waiting_cpu = _cpu_s(server.pid) - before
            server.terminate()  # SIGTERM ends every wait at once
            waits.join()
            empty = sum(1 for a in answers if a.json() == {"error": "no_available_tasks"})
            print(
                f"{args.idle} waiting claims, all waiting, for {args.idle_s:g} s: server CPU "
                f"{waiting_cpu:.3f} s; the same server with no waiter for {args.idle_s:g} s: "
                f"{idle_cpu:.3f} s; after SIGTERM, answered no_available_tasks: {empty}/{args.idle}"
            )
            print(
                json.dumps({"latency_ms": {m: [round(1000 * v, 2) for v in vs] for m, vs in latencies.items()}}),
                file=sys.stderr,
            )
        finally:
            if creator.stdin is not None:
                creator.stdin.close()
            creator.wait(30)
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
