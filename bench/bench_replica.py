"""Continuous replication with Litestream (issue 12): recovery point, cost, restore time.

1. Recovery point: a server replicating to a ``file://`` replica with the default
   sync interval serves a steady writer (one task created over HTTP every ~10 ms);
   then the machine "dies": Litestream and the server are killed -9 at the same
   moment. The replica is restored into an empty directory and every acknowledged
   task missing from it is counted. Repeated ``--kills`` times (20).
2. Throughput: the same HTTP writer load (``--clients`` threads creating tasks) for
   ``--seconds`` against a server without and then with replication, in this run.
3. Restore time: a database of ``--size-mb`` restored onto an empty directory with
   ``icn-mcp db restore BACKUP`` and with ``icn-mcp db restore --from-replica``.

    .venv/bin/python bench/bench_replica.py                       # everything, 1 GB restore
    .venv/bin/python bench/bench_replica.py --size-mb 256 --kills 20 --seconds 10
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_backup  # noqa: E402  (the database builder)
from icn_mcp.config import DEFAULT_REPLICA_SYNC_INTERVAL_S  # noqa: E402
from icn_mcp.db import Database  # noqa: E402
from icn_mcp.db.replica import Replicator  # noqa: E402

ADMIN = "admin-token-for-the-benchmark-0123"


def _env(db_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    env.update(
        MCP_DB_DIR=str(db_dir),
        MCP_HOST="127.0.0.1",
        MCP_PORT="0",
        MCP_ADMIN_TOKEN=ADMIN,
        MCP_RATE_LIMIT_IP_PER_MIN="0",
        MCP_RATE_LIMIT_TOKEN_PER_MIN="0",
        MCP_LOG_LEVEL="WARNING",
        MCP_HEALTH_CACHE_S="0",
        TMPDIR=str(db_dir.parent),
    )  # what kill -9 leaves stays in the work dir
    env.update(extra)
    return env


class Server:
    def __init__(self, db_dir: Path, **extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "icn_mcp", "serve"],
            env=_env(db_dir, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            raise RuntimeError(f"server did not start: {line!r}")
        host_port = line.split()[1].removeprefix("http://")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def _call(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None, token: str | None = None
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {data}")
    return data


def _agent(server: Server, name: str) -> str:
    conn = server.conn()
    try:
        return str(_call(conn, "POST", "/api/agent/register", {"name": name, "kind": "ops"}, ADMIN)["token"])
    finally:
        conn.close()


def _replication(server: Server) -> dict[str, Any]:
    conn = server.conn()
    try:
        return dict(_call(conn, "GET", "/healthz/db")["replication"])
    finally:
        conn.close()


def _wait_caught_up(server: Server, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _replication(server)
        if s["running"] and s["lag_s"] == 0 and s["replica_txid"] >= s["local_txid"] > 0:
            return s
        time.sleep(0.1)
    raise RuntimeError("replication did not catch up")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "icn_mcp", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"icn-mcp {' '.join(args)}: {done.stderr}")
    return done


# -- 1. recovery point ------------------------------------------------------------------


def one_kill(work: Path, n: int, write_s: float, *, machine: bool = True) -> dict[str, Any]:
    replica = work / f"replica-{n}"
    server = Server(work / f"live-{n}", MCP_REPLICA_URL=f"file://{replica}")
    token = _agent(server, "writer")
    _wait_caught_up(server)
    acked: list[tuple[str, float]] = []
    stop = threading.Event()

    def write() -> None:
        conn = server.conn()
        k = 0
        while not stop.is_set():
            k += 1
            try:
                _call(conn, "POST", "/api/task/create", {"title": f"t-{k}"}, token)
            except (OSError, http.client.HTTPException):
                return  # killed mid-request: never acknowledged
            acked.append((f"t-{k}", time.monotonic()))
            time.sleep(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(write_s)
    pid = _replication(server)["pid"]
    if machine:
        os.kill(pid, signal.SIGKILL)  # the machine dies: both at once, neither syncs
    killed_at = time.monotonic()
    server.proc.kill()
    server.proc.wait()
    stop.set()
    writer.join()
    while not machine:  # only the server died: Litestream gets SIGTERM and syncs last
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    target = work / f"restored-{n}"
    _cli("db", "restore", "--from-replica", f"file://{replica}", "--yes", env=_env(target))
    conn = sqlite3.connect(target / "icn-mcp.sqlite")
    have = {row[0] for row in conn.execute("SELECT title FROM tasks")}
    conn.close()
    lost = [(title, killed_at - at) for title, at in acked if title not in have]
    return {"acked": len(acked), "lost": len(lost), "oldest_lost_s": max((age for _, age in lost), default=0.0)}


def bench_recovery_point(work: Path, kills: int, *, machine: bool = True) -> None:
    what = "server + Litestream" if machine else "the server only"
    print(
        f"\n1. recovery point: {kills} x kill -9 of {what} under a steady writer "
        f"(sync interval {DEFAULT_REPLICA_SYNC_INTERVAL_S:g} s, the default)",
        flush=True,
    )
    rows = []
    for n in range(kills):
        row = one_kill(work, n if machine else 1000 + n, write_s=2.0 + (n % 5) * 0.37, machine=machine)
        rows.append(row)
        print(
            f"   kill {n + 1:2d}: {row['acked']:4d} acknowledged, {row['lost']:3d} lost, "
            f"oldest lost acknowledged {row['oldest_lost_s'] * 1000:6.0f} ms before the kill",
            flush=True,
        )
    lost = [r["lost"] for r in rows]
    print(
        f"   lost per kill: mean {statistics.mean(lost):.1f}, median {statistics.median(lost):.0f}, "
        f"max {max(lost)} (of ~{statistics.mean(r['acked'] for r in rows):.0f} acknowledged each); "
        f"oldest lost write {max(r['oldest_lost_s'] for r in rows) * 1000:.0f} ms before the kill"
    )


# -- 2. throughput --------------------------------------------------------------------------


def _load(server: Server, clients: int, seconds: float) -> float:
    tokens = [_agent(server, f"load-{n}") for n in range(clients)]
    counts = [0] * clients
    deadline = time.monotonic() + seconds

    def run(n: int) -> None:
        conn = server.conn()
        while time.monotonic() < deadline:
            _call(conn, "POST", "/api/task/create", {"title": "load"}, tokens[n])
            counts[n] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def bench_throughput(work: Path, clients: int, seconds: float) -> None:
    print(f"\n2. throughput: {clients} clients creating tasks over HTTP for {seconds:g} s", flush=True)
    results: dict[str, list[float]] = {"replication off": [], "replication on": []}
    # off, on, on, off: neither side profits from running first or last.
    for n, label in enumerate(("replication off", "replication on", "replication on", "replication off")):
        extra = {"MCP_REPLICA_URL": f"file://{work}/throughput-replica-{n}"} if label.endswith("on") else {}
        server = Server(work / f"throughput-{n}", **extra)
        try:
            rate = _load(server, clients, seconds)
            results[label].append(rate)
            caught = ""
            if extra:
                status = _wait_caught_up(server)
                caught = (
                    f" (replica then caught up at transaction {status['replica_txid']}, {status['restarts']} restarts)"
                )
        finally:
            server.stop()
        print(f"   {label:16s} {rate:7.0f} tasks/s{caught}", flush=True)
    on, off = statistics.mean(results["replication on"]), statistics.mean(results["replication off"])
    print(f"   mean: off {off:.0f}, on {on:.0f} tasks/s; on / off: {on / off:.2f}x")


# -- 3. restore time ---------------------------------------------------------------------------


def bench_restore(work: Path, size_mb: int) -> None:
    print(f"\n3. restore onto an empty directory of a ~{size_mb} MB database", flush=True)
    path = work / "big" / "icn-mcp.sqlite"
    path.parent.mkdir()
    bench_backup.build(path, size_mb)
    url = f"file://{work}/big-replica"
    with Database(path, wal_autocheckpoint=0) as db:
        backup = db.create_backup(work / "big-backup.sqlite", check="quick")
        started = time.monotonic()
        with Replicator(db.path, url) as replicator:
            while not (replicator.status()["replica_txid"] and replicator.status()["lag_s"] == 0):
                time.sleep(0.2)
        print(f"   first replication (snapshot) took {time.monotonic() - started:.1f} s", flush=True)
    timings = {}
    for label, args in (
        ("backup file", ["db", "restore", backup.path, "--yes"]),
        ("file:// replica", ["db", "restore", "--from-replica", url, "--yes"]),
    ):
        target = work / f"restore-{label.split()[0]}"
        # The same starting point for both: a new machine with an empty, migrated database
        # (a backup-file restore onto no database at all is issue 9's, not measured here).
        _cli("db", "migrate", env=_env(target))
        started = time.monotonic()
        out = _cli(*args, env=_env(target)).stdout
        timings[label] = time.monotonic() - started
        fetched = next((line for line in out.splitlines() if line.startswith("fetched ")), "")
        detail = f"  ({fetched.rsplit(' in ', 1)[1]} of it litestream restore)" if fetched else ""
        print(f"   from {label:16s} {timings[label]:6.1f} s{detail}", flush=True)
    print(f"   replica / backup file: {timings['file:// replica'] / timings['backup file']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--only", choices=("recovery", "throughput", "restore"))
    parser.add_argument(
        "--server-kills", type=int, default=5, help="also kill -9 only the server this many times (a process crash)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="icn-bench-replica-"))
    print(f"work directory {work}")
    if args.only in (None, "recovery"):
        if args.kills:
            bench_recovery_point(work, args.kills)
        if args.server_kills:
            bench_recovery_point(work, args.server_kills, machine=False)
    if args.only in (None, "throughput"):
        bench_throughput(work, args.clients, args.seconds)
    if args.only in (None, "restore"):
        bench_restore(work, args.size_mb)


if __name__ == "__main__":
    main()
