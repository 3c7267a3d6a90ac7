"""Claim -> report cycles over HTTP from separate client processes, beside the store itself.

Run:  .venv/bin/python bench/bench_http.py [--tasks 2000] [--clients 8,64] [--workers 1,2] [--repeat 1]

For each (clients, server workers) pair: a fresh SQLite database with TASKS open tasks
and one agent per client, a real ``icn-mcp serve --workers W`` subprocess, and one load
generator: CLIENT_PROCS processes (separate from the server), each running its share
of the clients as threads with their own keep-alive connection (``--client raw``, the
default: requests written and answers read on a bare socket, a fraction of the CPU of
``--client http.client``, which the figures before 2026-12-02 04:00 UTC used). Every
client loops ``POST /api/task/claim`` -> ``POST /api/task/run`` (completed) until no
task is left. Rate limits are off; logging stays at INFO into a file, as in production.

Then the store-direct baseline in the same run: the same number of threads in one
process calling ``Store.claim_next_task`` then ``Store.report_run`` on fresh databases.

Printed per run: cycles/s, p50 and p99 of the claim request, the report request and
the whole cycle, errors (any non-200), the server's CPU time per cycle (all its
processes, from /proc: the figure least disturbed by other load on the machine), the
load generator's CPU time per cycle (``clients``: CPU the server could not use on a
shared machine), and the HTTP/store throughput ratio. Each run
also checks the outcome: every task completed, each claimed exactly once (attempt 1).
``uptime``'s load average is printed before and after: the machine is shared.

``--backend postgresql`` runs on a scratch database created for each run on the server
of ``MCP_BENCH_DATABASE_URL`` (dropped afterwards), the store baseline too; ``--servers
N`` starts N separate ``icn-mcp serve`` processes on the one database (as N hosts
would), each load-generator process talking to one of them, round robin; the server
CPU column sums all of them. ``--server-pythonpath DIR``
puts DIR first on the server's PYTHONPATH: used to run an older checkout's server
(``src/`` of a ``git archive``) with the same load generator for before/after figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from icn_mcp.config import Settings
from icn_mcp.db import open_database
from icn_mcp.store import Store
from pgscratch import scratch_database

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
BACKENDS = ("sqlite", "postgresql")

#: The scratch PostgreSQL database of the current run (None: SQLite).
_DB_URL: str | None = None


class _FreshDatabase:
    """A scratch PostgreSQL database for one run (bench/pgscratch.py), or nothing."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._scratch: Any = None

    def __enter__(self) -> None:
        global _DB_URL
        if self.backend == "postgresql":
            self._scratch = scratch_database()
            _DB_URL = self._scratch.__enter__()

    def __exit__(self, *exc: Any) -> None:
        global _DB_URL
        _DB_URL = None
        if self._scratch is not None:
            self._scratch.__exit__(*exc)
            self._scratch = None


def _env(db_dir: Path, pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    if _DB_URL is not None:
        env["MCP_DB_URL"] = _DB_URL
    env.update(
        MCP_DB_DIR=str(db_dir),
        MCP_PORT="0",
        MCP_ADMIN_TOKEN=ADMIN_TOKEN,
        MCP_RATE_LIMIT_IP_PER_MIN="0",
        MCP_RATE_LIMIT_TOKEN_PER_MIN="0",
        MCP_LOG_LEVEL="INFO",
    )
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _prepare(db_dir: Path, tasks: int, clients: int) -> tuple[Store, list[str]]:
    """A database with ``tasks`` open tasks and ``clients`` agents; their tokens."""
    settings = Settings.from_env(_env(db_dir, None))
    db = open_database(settings)
    store = Store.from_settings(db, settings)
    tokens = [store.register_agent(f"bench-{n}", "ops", credential=ADMIN_TOKEN).token for n in range(clients)]
    for n in range(tasks):
        store.create_task(f"task {n}")
    return store, tokens


# -- the load generator (runs in client processes) ----------------------------------


class _RawConnection:
    """A keep-alive HTTP/1.1 client on a bare socket: the request bytes built here, the
    answer read by its status line and Content-Length. Several times cheaper in CPU
    than ``http.client`` (whose header parsing goes through ``email``), so on a shared
    machine the load generator takes less of the CPU the server is measured on."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._host = f"{host}:{port}".encode()
        self._buffer = b""

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        head = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: " + self._host]
        head += [f"{name}: {value}".encode() for name, value in headers.items()]
        head.append(b"Content-Length: " + str(len(body)).encode())
        self._sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._buffer += self._receive()
        lines = self._buffer[:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in lines[1:] if line[:15].lower() == b"content-length:")
        body_end = end + 4 + length
        while len(self._buffer) < body_end:
            self._buffer += self._receive()
        answer, self._buffer = self._buffer[end + 4 : body_end], self._buffer[body_end:]
        return status, answer

    def _receive(self) -> bytes:
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self._sock.close()


class _HttpClientConnection:
    """The same requests through the standard library's ``http.client``."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        self._conn.request("POST", path, body, headers)
        response = self._conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self._conn.close()


CLIENTS = {"raw": _RawConnection, "http.client": _HttpClientConnection}


def _client_process(host: str, port: int, tokens: list[str], barrier: Any, results: Any, kind: str = "raw") -> None:
    """Run one thread per token; put (claims, reports, cycles, errors, ends) on ``results``."""
    claim_lat: list[float] = []
    report_lat: list[float] = []
    cycle_lat: list[float] = []
    claimed: list[tuple[str, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(token: str) -> None:
        conn = CLIENTS[kind](host, port, 120)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            status, answer = conn.post(path, json.dumps(body).encode(), headers)
            return status, json.loads(answer)

        mine_c, mine_r, mine_y, mine_t = [], [], [], []
        try:
            while True:
                t0 = time.perf_counter()
                status, claim = post("/api/task/claim", {})
                t1 = time.perf_counter()
                if status != 200:
                    with lock:
                        errors.append(f"claim {status} {claim}")
                    continue
                if "task_id" not in claim:
                    break
                status, report = post(
                    "/api/task/run", {"task_id": claim["task_id"], "status": "completed", "attempt": claim["attempt"]}
                )
                t2 = time.perf_counter()
                if status != 200:
                    with lock:
                        errors.append(f"report {status} {report}")
                mine_c.append(t1 - t0)
                mine_r.append(t2 - t1)
                mine_y.append(t2 - t0)
                mine_t.append((str(claim["task_id"]), int(claim["attempt"])))
        except Exception as exc:  # noqa: BLE001 - reported, counted as an error
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        with lock:
            claim_lat.extend(mine_c)
            report_lat.extend(mine_r)
            cycle_lat.extend(mine_y)
            claimed.extend(mine_t)

    threads = [threading.Thread(target=client, args=(token,)) for token in tokens]
    barrier.wait()
    start = os.times()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    end = os.times()
    cpu = end.user + end.system - start.user - start.system
    results.put((claim_lat, report_lat, cycle_lat, claimed, errors, time.time(), cpu))


def _cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and its live children (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1] is the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else float("nan")


def _load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_http(
    tasks: int,
    clients: int,
    workers: int,
    client_procs: int,
    pythonpath: str | None,
    servers: int = 1,
    client_kind: str = "raw",
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        db_dir = Path(tmp) / "var"
        store, tokens = _prepare(db_dir, tasks, clients)
        store.db.close()
        log = open(Path(tmp) / "server.log", "w")
        command = [sys.executable, "-m", "icn_mcp", "serve"] + (["--workers", str(workers)] if workers > 1 else [])
        # On PostgreSQL each server has a directory of its own (as each host would);
        # on SQLite they share the database file's directory.
        dirs = [db_dir if _DB_URL is None else Path(tmp) / f"host{n}" for n in range(servers)]
        started = [
            subprocess.Popen(command, env=_env(d, pythonpath), stdout=subprocess.PIPE, stderr=log, text=True)
            for d in dirs
        ]
        try:
            addresses = []
            for proc in started:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line.startswith("serving "):
                    raise RuntimeError(f"server did not start: {line!r}; see {log.name}")
                host, port = line.split()[1].removeprefix("http://").rsplit(":", 1)
                addresses.append((host, int(port)))
            ctx = mp.get_context("spawn")
            # A whole number of load generators per server.
            per_server = -(-max(1, min(client_procs, clients)) // servers)
            procs_n = min(clients, per_server * servers)
            barrier = ctx.Barrier(procs_n + 1)
            results = ctx.Queue()
            shares = [tokens[n::procs_n] for n in range(procs_n)]
            procs = [
                ctx.Process(
                    target=_client_process, args=(*addresses[n % servers], share, barrier, results, client_kind)
                )
                for n, share in enumerate(shares)
            ]
            for p in procs:
                p.start()
            barrier.wait()
            began = time.time()
            cpu_before = sum(_cpu_seconds(proc.pid) for proc in started)
            parts = [results.get(timeout=600) for _ in procs]
            cpu = sum(_cpu_seconds(proc.pid) for proc in started) - cpu_before
            for p in procs:
                p.join()
            elapsed = max(part[5] for part in parts) - began
        finally:
            for proc in started:
                proc.terminate()
            for proc in started:
                proc.wait(60)
            log.close()
        claims = [x for part in parts for x in part[0]]
        reports = [x for part in parts for x in part[1]]
        cycles = [x for part in parts for x in part[2]]
        claimed = [x for part in parts for x in part[3]]
        errors = [x for part in parts for x in part[4]]
        # Exactly once: every task claimed by one client, at attempt 1, and completed.
        settings = Settings.from_env(_env(db_dir, None))
        with open_database(settings, migrate=False) as db, db.read_transaction() as conn:
            completed = conn.execute("SELECT count(*) FROM tasks WHERE status = 'completed'").fetchone()[0]
        ok = completed == tasks and len(set(claimed)) == len(claimed) == tasks and all(a == 1 for _, a in claimed)
        return {
            "cycles": len(cycles),
            "seconds": elapsed,
            "rate": len(cycles) / elapsed,
            "claim": claims,
            "report": reports,
            "cycle": cycles,
            "errors": errors,
            "exactly_once": ok,
            "cpu_ms": cpu * 1000 / max(1, len(cycles)),
            "client_cpu_ms": sum(part[6] for part in parts) * 1000 / max(1, len(cycles)),
        }


def bench_store(tasks: int, clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store, tokens = _prepare(Path(tmp) / "var", tasks, clients)
        agent_ids = [store.authenticate(token).id for token in tokens]
        claims: list[float] = []
        reports: list[float] = []
        cycles: list[float] = []
        lock = threading.Lock()
        barrier = threading.Barrier(clients + 1)

        def client(agent_id: str) -> None:
            mine: list[tuple[float, float, float]] = []
            barrier.wait()
            while True:
                t0 = time.perf_counter()
                claim = store.claim_next_task(agent_id)
                t1 = time.perf_counter()
                if claim is None:
                    break
                store.report_run(claim.task_id, agent_id, "completed", attempt=claim.attempt)
                t2 = time.perf_counter()
                mine.append((t1 - t0, t2 - t1, t2 - t0))
            with lock:
                for c, r, y in mine:
                    claims.append(c)
                    reports.append(r)
                    cycles.append(y)

        threads = [threading.Thread(target=client, args=(a,)) for a in agent_ids]
        for thread in threads:
            thread.start()
        barrier.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        store.db.close()
        return {
            "cycles": len(cycles),
            "seconds": elapsed,
            "rate": len(cycles) / elapsed,
            "claim": claims,
            "report": reports,
            "cycle": cycles,
            "errors": [],
            "exactly_once": True,
            "cpu_ms": float("nan"),
            "client_cpu_ms": float("nan"),
        }


HEADER = (
    f"{'run':<22} {'cycles':>6} {'cyc/s':>7} {'claim p50':>9} {'p99':>7} {'report p50':>10} {'p99':>7} "
    f"{'cycle p50':>9} {'p99':>7} {'err':>4} {'once':>4} {'srv CPU ms/cyc':>14} {'clients':>7}"
)


def _row(name: str, r: dict[str, Any]) -> None:
    print(
        f"{name:<22} {r['cycles']:>6} {r['rate']:>7.0f} {_pct(r['claim'], 0.5):>9.2f} {_pct(r['claim'], 0.99):>7.2f} "
        f"{_pct(r['report'], 0.5):>10.2f} {_pct(r['report'], 0.99):>7.2f} {_pct(r['cycle'], 0.5):>9.2f} "
        f"{_pct(r['cycle'], 0.99):>7.2f} {len(r['errors']):>4} "
        f"{'yes' if r['exactly_once'] else 'NO':>4} {r['cpu_ms']:>14.2f} {r['client_cpu_ms']:>7.2f}",
        flush=True,
    )
    for error in r["errors"][:3]:
        print(f"    error: {error[:200]}")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per run (default 2000)")
    parser.add_argument("--clients", type=_ints, default=[8, 64], help="comma-separated client counts (8,64)")
    parser.add_argument("--workers", type=_ints, default=[1, 2], help="comma-separated server process counts (1,2)")
    parser.add_argument("--client-procs", type=int, default=4, help="load-generator processes (default 4)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the whole set, interleaved")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sqlite",
        help="database backend (postgresql: a scratch database per run on MCP_BENCH_DATABASE_URL's server)",
    )
    parser.add_argument("--servers", type=int, default=1, help="separate serve processes on one database (default 1)")
    parser.add_argument(
        "--server-pythonpath", default=None, help="prepend to the server's PYTHONPATH (run another checkout's server)"
    )
    parser.add_argument("--no-store", action="store_true", help="skip the store-direct baseline")
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="raw",
        help="the load generator's HTTP client: keep-alive requests on a bare socket (raw, default) "
        "or the standard library's http.client (several times the CPU per request)",
    )
    args = parser.parse_args()
    print(
        f"claim -> report cycles, {args.backend}, {args.servers} server(s): {args.tasks} tasks per run, "
        f"Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, {args.client_procs} client processes ({args.client}), {_load()}"
        + (f", server PYTHONPATH {args.server_pythonpath}" if args.server_pythonpath else "")
    )
    print("latencies in ms")
    print(HEADER)
    for _round in range(args.repeat):
        for clients in args.clients:
            store = None
            if not args.no_store:
                with _FreshDatabase(args.backend):
                    store = bench_store(args.tasks, clients)
                _row(f"store {clients}c", store)
            for workers in args.workers:
                with _FreshDatabase(args.backend):
                    r = bench_http(
                        args.tasks,
                        clients,
                        workers,
                        args.client_procs,
                        args.server_pythonpath,
                        args.servers,
                        args.client,
                    )
                servers = f" x{args.servers}" if args.servers > 1 else ""
                _row(f"http {clients}c {workers}w{servers}", r)
                if store is not None:
                    print(f"    http/store {r['rate'] / store['rate']:.2f}x   ({_load()})", flush=True)
    print(f"done, {_load()}")


if __name__ == "__main__":
    main()
