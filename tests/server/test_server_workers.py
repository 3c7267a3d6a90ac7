"""``icn-mcp serve --workers N``: several server processes on one port (issue 14).

Real supervisor and worker processes on a real SQLite file: tasks are claimed exactly
once across workers, SIGTERM stops every worker gracefully (the WAL is checkpointed),
the log has one whole JSON line per request with no token in it, kill -9 of the
supervisor leaves no orphan, a killed worker is replaced, acknowledged writes survive
kill -9 of everything, and rate limits apply per worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.server.serverproc import ADMIN_TOKEN, ServerProcess, bearer, server_env

pytestmark = pytest.mark.slow

WORKERS = 2


def _children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _workers_of(server: ServerProcess) -> list[int]:
    """The worker pids: the supervisor's children that hold a socket (the listening one)."""
    assert server.proc is not None
    return [pid for pid in _children(server.proc.pid) if _listens(pid)]


def _listens(pid: int) -> bool:
    """Whether ``pid`` holds a listening TCP socket (workers do; the resource tracker does not)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    return any(
        os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        for fd in fds
        if os.path.exists(f"/proc/{pid}/fd/{fd}")
    )


def _register(client: httpx.Client, name: str) -> dict[str, str]:
    response = client.post("/api/agent/register", json={"name": name, "kind": "ops"}, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200, response.text
    return response.json()


def _wait_until(condition, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_two_workers_claim_each_task_once_and_stop_on_sigterm(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "var", args=("--workers", str(WORKERS))).start()
    workers = _workers_of(server)
    assert len(workers) == WORKERS, workers
    with server.client() as client:
        agents = [_register(client, f"w{n}") for n in range(8)]
        task_ids = []
        for n in range(80):
            response = client.post("/api/task/create", json={"title": f"t{n}"}, headers=bearer(agents[0]["token"]))
            assert response.status_code == 200, response.text
            task_ids.append(str(response.json()["id"]))

    claims: list[tuple[str, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def work(token: str) -> None:
        # A new connection every few cycles, so that the workers share the clients.
        while True:
            with httpx.Client(base_url=server.url, timeout=60.0, headers=bearer(token)) as client:
                for _ in range(4):
                    claim = client.post("/api/task/claim", json={})
                    if claim.status_code != 200:
                        errors.append(f"claim {claim.status_code} {claim.text}")
                        return
                    body = claim.json()
                    if "task_id" not in body:
                        return
                    report = client.post(
                        "/api/task/run",
                        json={"task_id": body["task_id"], "status": "completed", "attempt": body["attempt"]},
                    )
                    if report.status_code != 200:
                        errors.append(f"report {report.status_code} {report.text}")
                    with lock:
                        claims.append((str(body["task_id"]), body["attempt"]))

    threads = [threading.Thread(target=work, args=(agent["token"],)) for agent in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    counts = Counter(task_id for task_id, _ in claims)
    assert sorted(counts) == sorted(task_ids)
    assert set(counts.values()) == {1}, "a task was claimed twice"
    with server.client() as client:
        statuses = {client.get("/api/task/status", params={"task_id": t}).json()["status"] for t in task_ids}
    assert statuses == {"completed"}

    wal = tmp_path / "var" / "icn-mcp.sqlite-wal"
    code = server.stop(signal.SIGTERM)
    assert code in (-signal.SIGTERM, 128 + signal.SIGTERM), code
    assert not any(_alive(pid) for pid in workers), "a worker outlived the supervisor"
    assert not wal.exists() or wal.stat().st_size == 0, "every worker closed (checkpointed) the database"
    lines = [json.loads(line) for line in server.stderr_lines if line.startswith("{")]
    pids_serving = {line["msg"] for line in lines if "accepting connections" in line["msg"]}
    assert len(pids_serving) == WORKERS
    closed = [line for line in lines if line["msg"].startswith("database ") and line["msg"].endswith(" closed")]
    assert len(closed) == WORKERS, "each worker shut down gracefully"
    # The log: whole JSON lines (no two workers' lines interleaved), one per request
    # (written by each worker's background writer), and no token anywhere.
    assert len(lines) == len([line for line in server.stderr_lines if line.strip()])
    access = Counter(line["route"] for line in lines if line["logger"] == "icn_mcp.server.access")
    assert access["/api/task/create"] == len(task_ids)
    assert access["/api/task/run"] == len(claims)
    assert access["/api/task/status"] == len(task_ids)
    assert access["/api/agent/register"] == len(agents)
    text = "".join(server.stderr_lines)
    assert ADMIN_TOKEN not in text and not any(agent["token"] in text for agent in agents)


def test_a_killed_worker_is_replaced_and_acknowledged_writes_survive_kill_9(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "var", args=("--workers", str(WORKERS))).start()
    first = _workers_of(server)
    os.kill(first[0], signal.SIGKILL)
    assert _wait_until(lambda: len(_workers_of(server)) == WORKERS and first[0] not in _workers_of(server))
    acknowledged = []
    with server.client() as client:
        agent = _register(client, "durable")
    for n in range(40):
        with httpx.Client(base_url=server.url, timeout=60.0) as client:  # new connections: both workers
            response = client.post("/api/task/create", json={"title": f"kept {n}"}, headers=bearer(agent["token"]))
            assert response.status_code == 200, response.text
            acknowledged.append(str(response.json()["id"]))
    workers = _workers_of(server)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    server.kill()
    again = server_factory(tmp_path / "var").start()
    with again.client() as client:
        for task_id in acknowledged:
            response = client.get("/api/task/status", params={"task_id": task_id})
            assert response.status_code == 200 and response.json()["status"] == "open", (task_id, response.text)
        # The old token still works after the crash.
        assert client.post("/api/task/claim", json={}, headers=bearer(agent["token"])).status_code == 200
    again.stop()


def test_rate_limits_apply_in_each_worker_and_no_worker_outlives_a_killed_supervisor(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(
        tmp_path / "var", args=("--workers", str(WORKERS)), MCP_RATE_LIMIT_TOKEN_PER_MIN="3"
    ).start()
    with server.client() as client:
        agent = _register(client, "limited")
        # One keep-alive connection stays on one worker: its limit is the setting.
        statuses = [
            client.post("/api/task/create", json={"title": "x"}, headers=bearer(agent["token"])).status_code
            for _ in range(4)
        ]
    assert statuses == [200, 200, 200, 429]
    # kill -9 of the supervisor: it cannot stop anyone, yet no worker is left behind.
    workers = _workers_of(server)
    assert len(workers) == WORKERS
    server.kill()
    assert _wait_until(lambda: not any(_alive(pid) for pid in workers)), "orphaned workers"


def test_workers_with_stdio_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "icn_mcp", "serve", "--stdio", "--workers", "2"],
        env=server_env(tmp_path / "var"),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "--workers applies to HTTP only" in done.stderr


@pytest.mark.parametrize("value", ["0", "65", "many"])
def test_workers_out_of_range_is_a_usage_error(tmp_path: Path, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "icn_mcp", "serve", "--workers", value],
        env=server_env(tmp_path / "var"),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "--workers" in done.stderr
