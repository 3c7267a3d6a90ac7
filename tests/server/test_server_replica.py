"""Continuous replication with the real Litestream under a real server (issue 12).

Every test here runs ``icn-mcp serve`` with ``MCP_REPLICA_URL=file://...``, so the
server supervises a real ``litestream replicate`` child, and restores with the real
``litestream restore`` through ``icn-mcp db restore --from-replica``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from tests.helpers import run_cli
from tests.server.serverproc import ServerProcess, bearer

pytestmark = pytest.mark.slow

SYNC_INTERVAL_S = 1.0
#: How long a test waits for something that takes a sync interval or two.
PATIENCE_S = 60.0


def _wait_for(what: str, check: Callable[[], Any], timeout: float = PATIENCE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _replication(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/healthz/db")
    assert response.status_code == 200, response.text
    return response.json()["replication"]


def _caught_up(client: httpx.Client) -> dict[str, Any] | None:
    status = _replication(client)
    ok = status["running"] and status["lag_s"] == 0 and status["replica_txid"] >= status["local_txid"] > 0
    return status if ok else None


def _start(server_factory: type[ServerProcess], db_dir: Path, replica: Path, **env: str) -> ServerProcess:
    return server_factory(
        db_dir,
        MCP_REPLICA_URL=f"file://{replica}",
        MCP_REPLICA_SYNC_INTERVAL_S=str(SYNC_INTERVAL_S),
        MCP_HEALTH_CACHE_S="0",
        # A server killed -9 leaves Litestream's private directory behind: keep it here.
        TMPDIR=str(tmp_path_of(db_dir)),
        **env,
    ).start()


def tmp_path_of(db_dir: Path) -> Path:
    return db_dir.parent


def _agents(client: httpx.Client) -> tuple[str, str]:
    boss = client.post("/api/agent/register", json={"name": "boss", "kind": "planner", "version": "1"})
    assert boss.status_code == 200, boss.text
    worker = client.post(
        "/api/agent/register", json={"name": "worker", "kind": "ops"}, headers=bearer(boss.json()["token"])
    )
    assert worker.status_code == 200, worker.text
    return boss.json()["token"], worker.json()["token"]


def _create(client: httpx.Client, token: str, title: str) -> str:
    response = client.post("/api/task/create", json={"title": title}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _titles(db_file: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in conn.execute("SELECT title FROM tasks ORDER BY id")]
    finally:
        conn.close()


def _restore(db_dir: Path, replica: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    done = run_cli(
        "db",
        "restore",
        "--from-replica",
        f"file://{replica}",
        "--yes",
        *extra,
        env={"MCP_DB_DIR": str(db_dir), **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_without_a_replica_nothing_runs_and_nothing_changes(server: ServerProcess) -> None:
    with server.client() as client:
        health = client.get("/healthz/db").json()
        assert health["replication"] == {"enabled": False}
        assert "icn_mcp_replication" not in client.get("/metrics").text
    assert server.proc is not None and _children(server.proc.pid) == []
    assert not list(server.db_dir.glob("*replica*")) and not list(server.db_dir.glob(".*litestream*"))


def test_a_replicating_server_runs_one_litestream_child_and_stops_it_cleanly(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    server = _start(server_factory, tmp_path / "var", tmp_path / "replica")
    with server.client() as client:
        status = _wait_for("replication", lambda: _caught_up(client))
    assert server.proc is not None and _children(server.proc.pid) == [status["pid"]]
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    with pytest.raises(ProcessLookupError):
        os.kill(status["pid"], 0)
    lines = [json.loads(line) for line in server.stderr_lines if line.startswith("{")]
    from_litestream = [r for r in lines if r["logger"] == "icn_mcp.replica" and "litestream" in r]
    assert any(r["msg"] == "litestream: litestream shut down" for r in from_litestream)


def test_loss_of_the_machine_loses_nothing_older_than_the_sync_interval(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    server = _start(server_factory, tmp_path / "var", replica)
    client = server.client()
    boss, worker = _agents(client)
    _wait_for("the first replication", lambda: _caught_up(client))

    acknowledged: list[tuple[str, float]] = []  # (title, when the 200 arrived)
    stop = threading.Event()

    def write() -> None:
        with server.client() as own:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = own.post("/api/task/create", json={"title": f"task-{n}"}, headers=bearer(worker))
                except httpx.TransportError:
                    return  # the server was killed mid-request: never acknowledged
                assert response.status_code == 200, response.text
                acknowledged.append((f"task-{n}", time.monotonic()))
                time.sleep(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(4 * SYNC_INTERVAL_S)
    litestream_pid = _replication(client)["pid"]
    # The machine dies: Litestream and the server at the same moment, neither syncs.
    os.kill(litestream_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    server.kill()
    stop.set()
    writer.join(30)
    old_enough = [title for title, at in acknowledged if at < killed_at - SYNC_INTERVAL_S]
    assert len(old_enough) > 20, "the writer should have been acknowledged many times"

    fresh = tmp_path / "new-machine"  # does not exist: nothing of the old one is here
    out = _restore(fresh, replica)
    assert "restored" in out and "integrity_check ok" in out
    assert (fresh / "icn-mcp.sqlite").stat().st_mode & 0o777 == 0o600
    restored = _titles(fresh / "icn-mcp.sqlite")
    missing = [title for title in old_enough if title not in restored]
    assert not missing, f"{len(missing)} tasks acknowledged > {SYNC_INTERVAL_S}s before the kill are lost"
    assert restored == [t for t, _ in acknowledged if t in restored], "no task out of order or invented"

    # The old tokens work against the restored database.
    server2 = server_factory(fresh).start()
    with server2.client() as client2:
        for token in (boss, worker):
            response = client2.post("/api/task/create", json={"title": "after"}, headers=bearer(token))
            assert response.status_code == 200, response.text


def test_point_in_time_restore_gives_exactly_the_state_at_that_moment(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    server = _start(server_factory, tmp_path / "var", replica)
    client = server.client()
    _, worker = _agents(client)
    _create(client, worker, "A")
    before = _wait_for("A in the replica", lambda: _caught_up(client))
    time.sleep(1.5)  # Litestream keeps the moments of the listing to the second
    moment = datetime.now(UTC)
    time.sleep(1.5)
    _create(client, worker, "B")
    _wait_for("B in the replica", lambda: (s := _caught_up(client)) and s["replica_txid"] > before["replica_txid"])

    at = moment.isoformat().replace("+00:00", "Z")
    out = _restore(tmp_path / "at-T", replica, "--at", at)
    assert at in out
    assert _titles(tmp_path / "at-T" / "icn-mcp.sqlite") == ["A"]
    _restore(tmp_path / "latest", replica)
    assert _titles(tmp_path / "latest" / "icn-mcp.sqlite") == ["A", "B"]

    # The window `db replica` reports contains both moments.
    report = run_cli(
        "db", "replica", "--json", env={"MCP_DB_DIR": str(tmp_path / "var"), "MCP_REPLICA_URL": f"file://{replica}"}
    )
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["earliest"] <= at <= data["latest"] or data["earliest"][:19] <= at[:19] <= data["latest"][:19]
    assert data["size_bytes"] > 0 and data["behind_txids"] == 0


def test_litestream_killed_is_restarted_and_catches_up_while_serving(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    server = _start(server_factory, tmp_path / "var", replica)
    client = server.client()
    _, worker = _agents(client)
    first = _wait_for("the first replication", lambda: _caught_up(client))

    failures: list[str] = []
    created: list[str] = []
    stop = threading.Event()

    def write() -> None:
        with server.client() as own:
            n = 0
            while not stop.is_set():
                n += 1
                response = own.post("/api/task/create", json={"title": f"t-{n}"}, headers=bearer(worker))
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    created.append(f"t-{n}")
                time.sleep(0.02)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(1)
        os.kill(first["pid"], signal.SIGKILL)
        restarted = _wait_for(
            "Litestream restarted",
            lambda: (s := _replication(client))["running"] and s["pid"] != first["pid"] and s,
        )
        assert restarted["restarts"] == 1 and "signal 9" in restarted["last_error"]
        time.sleep(2 * SYNC_INTERVAL_S)  # writes keep going while the new one replicates
    finally:
        stop.set()
        writer.join(30)
    assert not failures, failures[:3]
    assert len(created) > 50
    _wait_for("the replica to catch up", lambda: _caught_up(client))
    metrics = client.get("/metrics").text
    assert "icn_mcp_replication_restarts_total 1.0" in metrics
    assert "icn_mcp_replication_lag_seconds 0.0" in metrics
    assert "icn_mcp_replication_errors_total" in metrics

    _restore(tmp_path / "elsewhere", replica)
    assert _titles(tmp_path / "elsewhere" / "icn-mcp.sqlite") == created


def test_restore_from_a_replica_under_a_running_server_keeps_the_backup_guarantees(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    db_dir = tmp_path / "var"
    server = _start(server_factory, db_dir, replica)
    client = server.client()
    boss, worker = _agents(client)
    for n in range(5):
        _create(client, worker, f"early-{n}")
    before = _wait_for("the early tasks in the replica", lambda: _caught_up(client))
    time.sleep(1.5)
    moment = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    time.sleep(1.5)
    for n in range(5):
        _create(client, worker, f"late-{n}")
    _wait_for(
        "the late tasks in the replica",
        lambda: (s := _caught_up(client)) and s["replica_txid"] > before["replica_txid"],
    )

    # The server keeps the database open (and Litestream keeps replicating it).
    out = _restore(db_dir, replica, "--at", moment, env={"MCP_REPLICA_URL": f"file://{replica}"})
    assert "integrity_check ok" in out
    safety = Path(out.rsplit("the previous database is saved in ", 1)[1].splitlines()[0].strip())
    assert _titles(safety) == [f"early-{n}" for n in range(5)] + [f"late-{n}" for n in range(5)]
    assert os.stat(safety).st_mode & 0o777 == 0o600

    # The running server serves the restored content at once, with the old tokens.
    listed = client.get("/api/task/list", headers=bearer(worker))
    assert listed.status_code == 200, listed.text
    assert [t["title"] for t in listed.json()] == [f"early-{n}" for n in range(5)]
    _create(client, worker, "after-restore")
    assert _titles(db_dir / "icn-mcp.sqlite") == [f"early-{n}" for n in range(5)] + ["after-restore"]
    assert not list(db_dir.glob(".icn-mcp-replica-restore-*")), "the private work directory is removed"

    # The replica follows the restored database too.
    _wait_for("the restored state in the replica", lambda: _caught_up(client))
    _restore(tmp_path / "again", replica)
    assert _titles(tmp_path / "again" / "icn-mcp.sqlite") == [f"early-{n}" for n in range(5)] + ["after-restore"]


def test_litestream_does_not_outlive_a_killed_server(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    server = _start(server_factory, tmp_path / "var", tmp_path / "replica")
    with server.client() as client:
        pid = _wait_for("replication", lambda: _caught_up(client))["pid"]
    server.kill()  # kill -9: no shutdown code runs; the parent-death signal stops Litestream

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # exited, not yet reaped

    _wait_for("Litestream to exit", gone)


def test_a_crashed_server_lets_litestream_make_its_final_sync(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    """kill -9 of the server alone (the machine lives): Litestream gets SIGTERM from the
    kernel and exits after its final sync; nothing older than the sync interval is lost
    (bench_replica.py --server-kills: usually nothing at all)."""
    replica = tmp_path / "replica"
    server = _start(server_factory, tmp_path / "var", replica)
    client = server.client()
    _, worker = _agents(client)
    pid = _wait_for("the first replication", lambda: _caught_up(client))["pid"]
    acknowledged: list[tuple[str, float]] = []
    stop = threading.Event()

    def write() -> None:
        with server.client() as own:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = own.post("/api/task/create", json={"title": f"task-{n}"}, headers=bearer(worker))
                except httpx.TransportError:
                    return
                assert response.status_code == 200, response.text
                acknowledged.append((f"task-{n}", time.monotonic()))

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(2 * SYNC_INTERVAL_S)
    killed_at = time.monotonic()
    server.kill()
    stop.set()
    writer.join(30)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    _wait_for("Litestream's final sync and exit", gone)
    old_enough = [title for title, at in acknowledged if at < killed_at - SYNC_INTERVAL_S]
    assert len(old_enough) > 20
    _restore(tmp_path / "restored", replica)
    restored = _titles(tmp_path / "restored" / "icn-mcp.sqlite")
    assert [t for t in old_enough if t not in restored] == []
