"""Many hosts, one PostgreSQL: a host cut off mid-claim loses its leases, never a task (issue 10).

Three ``icn-mcp serve`` processes run in three network namespaces (tests/netns.py),
each with its own address on a private subnet, sharing one PostgreSQL that listens on
the bridge between them. Agents on hosts 1 and 2 drain the tasks through their own
host's server. An agent on host 3 claims a few tasks with a short lease
(``MCP_LEASE_S``) and holds them; then host 3's link goes down and, from inside host
3, the agent reports them: the reports reach host 3's server but not the database.
Meanwhile the leases expire and hosts 1 and 2, draining the rest, claim those tasks
again (attempt 2) and hold them. When the link comes back, host 3's reports arrive
late, carrying attempt 1, while attempt 2 is live: they are refused with 409 (or, had
host 3's server given up on the database first, 503), and so are later ones; then
attempt 2 completes. Every task is completed exactly once, by an acknowledged report,
and nothing is lost. Afterwards host 3 serves again.

The second test cuts a host off and asks its server for work from inside the host:
every request must be answered 503 ``unavailable`` while the link is down, within a
bound (once some answered 500 and some hung for TCP's ~15 minutes: pooled connections
had no keepalives or ``tcp_user_timeout``).

Needs root for ``ip netns`` and a private PostgreSQL (PostgreSQL 15 server binaries);
skipped with the reason otherwise, and that skip fails in CI (``postgres`` marker).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import WORKERS
from tests.netns import HostNetwork, PrivatePostgres, netns_unavailable, private_postgres_unavailable
from tests.server.serverproc import ServerProcess, bearer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

HOSTS = 3
TASKS = 60
#: Tasks the host that is cut off holds when its link goes down.
HELD = 3
#: The servers' default lease (MCP_LEASE_S): the held claims use it and expire soon.
LEASE_S = 3
#: Claims on the hosts that stay up ask for a lease no loaded machine outlives.
LONG_LEASE_S = 600
AGENTS_PER_UP_HOST = 2
#: Tasks created through host 3 after it is back, drained by every host.
AFTER = 6
#: Generous bounds for waits on a shared, loaded machine; reaching one fails the test.
DEADLINE_S = 120.0


@pytest.fixture
def network() -> Iterator[HostNetwork]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"many-hosts test: {reason}")
    with HostNetwork(HOSTS) as net:
        yield net


@pytest.fixture
def shared_db_url(network: HostNetwork) -> Iterator[str]:
    """A database on a private PostgreSQL listening on the bridge, reachable from every host."""
    reason = private_postgres_unavailable()
    if reason is not None:
        pytest.skip(f"many-hosts test: {reason}")
    with PrivatePostgres(network.bridge_address, str(network.subnet)) as cluster:
        yield cluster.create_database("icn_mcp")


@dataclass
class Ledger:
    """What clients were told: every acknowledged (200) completion, and every failure."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    completed: list[tuple[str, str, int]] = field(default_factory=list)  # (task_id, agent_id, attempt)
    #: Claims of host 3's held tasks on the other hosts, kept open:
    #: (task_id, attempt, server, agent_id, token).
    reclaimed: list[tuple[str, int, ServerProcess, str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self) -> int:
        with self.lock:
            return len(self.completed)

    def reclaims(self) -> int:
        with self.lock:
            return len(self.reclaimed)


def _drain(
    server: ServerProcess, agent_id: str, token: str, ledger: Ledger, stop: threading.Event, keep: set[str]
) -> None:
    """Claim and complete through one host's server until told to stop; claims of the
    tasks in ``keep`` are held open instead (``ledger.reclaimed``)."""
    with httpx.Client(base_url=server.url, headers=bearer(token), timeout=60.0) as client:
        while not stop.is_set():
            claim = client.post("/api/task/claim", json={"lease_s": LONG_LEASE_S})
            if claim.status_code != 200:
                ledger.errors.append(f"{agent_id} claim {claim.status_code} {claim.text}")
                return
            body = claim.json()
            if "task_id" not in body:
                stop.wait(0.1)
                continue
            if body["task_id"] in keep:
                with ledger.lock:
                    ledger.reclaimed.append((body["task_id"], body["attempt"], server, agent_id, token))
                continue
            report = client.post(
                "/api/task/run",
                json={"task_id": body["task_id"], "status": "completed", "attempt": body["attempt"]},
            )
            if report.status_code != 200:
                ledger.errors.append(f"{agent_id} run {report.status_code} {report.text}")
                return
            with ledger.lock:
                ledger.completed.append((body["task_id"], agent_id, body["attempt"]))


def _wait_for(condition: Callable[[], bool], what: str, ledger: Ledger) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert not ledger.errors, ledger.errors[:5]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _register(client: httpx.Client, token: str | None, name: str) -> tuple[str, str]:
    response = client.post(
        "/api/agent/register",
        json={"name": name, "kind": "ops"},
        headers=bearer(token) if token else {},
    )
    assert response.status_code == 200, response.text
    return response.json()["id"], response.json()["token"]


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        return conn.execute(sql).fetchall()


def test_a_host_cut_off_mid_claim_loses_its_leases_and_its_late_reports_are_refused(
    network: HostNetwork, shared_db_url: str, server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    def server(n: int) -> ServerProcess:
        host = network.hosts[n]
        return server_factory(
            tmp_path / host.name,
            prefix=tuple(host.exec_prefix()),
            MCP_DB_URL=shared_db_url,
            MCP_HOST=host.address,
            MCP_LEASE_S=str(LEASE_S),
            # Enough open connections that host 3's reports wait on the link, not the pool.
            MCP_DB_POOL_MIN=str(HELD + 1),
            MCP_DB_POOL_MAX="8",
        )

    # Started together: the three migrate one shared, empty database at once.
    with ThreadPoolExecutor(HOSTS) as pool:
        servers = list(pool.map(lambda n: server(n).start(), range(HOSTS)))
    up, cut_server = servers[:2], servers[2]
    cut_host = network.hosts[2]

    with up[0].client() as client:
        _, boss = _register(client, None, "boss")
        workers = [
            (server, *_register(client, boss, f"h{h + 1}-worker-{n}"))
            for h, server in enumerate(up)
            for n in range(AGENTS_PER_UP_HOST)
        ]
    with cut_server.client() as client:
        holder_id, holder_token = _register(client, boss, "cut-off-host-agent")
    task_ids = []
    for n in range(TASKS):
        with servers[n % HOSTS].client() as client:  # every host creates some
            response = client.post("/api/task/create", json={"title": f"task {n}"}, headers=bearer(boss))
            assert response.status_code == 200, response.text
            task_ids.append(response.json()["id"])

    # Host 3's agent, inside host 3, claims HELD tasks and holds them.
    holder = subprocess.Popen(
        [*cut_host.exec_prefix(), sys.executable, str(WORKERS / "held_claims.py")]
        + [cut_server.url, holder_token, str(HELD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(holder.stdout, said), daemon=True).start()
    try:
        held = {c["task_id"]: c["attempt"] for c in json.loads(said.get(timeout=DEADLINE_S))["claimed"]}
        assert len(held) == HELD and set(held.values()) == {1}, held

        # Hosts 1 and 2 drain; host 3 is cut off in the middle of it.
        ledger = Ledger()
        stop = threading.Event()
        drainers = [
            threading.Thread(target=_drain, args=(server, agent_id, token, ledger, stop, set(held)))
            for server, agent_id, token in workers
        ]
        for thread in drainers:
            thread.start()
        try:
            _wait_for(lambda: ledger.count() >= 5, "the first completions on hosts 1 and 2", ledger)
            network.cut(cut_host)
            # The cut is real: the root namespace no longer reaches host 3.
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{cut_server.url}/healthz", timeout=1.0)
            # Host 3's agent reports now; its server cannot reach the database.
            assert holder.stdin is not None
            holder.stdin.write("report\n")
            holder.stdin.flush()
            assert json.loads(said.get(timeout=DEADLINE_S)) == {"reporting": HELD}

            # The held leases expire; hosts 1 and 2 claim those tasks again and finish the rest.
            _wait_for(
                lambda: ledger.count() >= TASKS - HELD and ledger.reclaims() >= HELD,
                "hosts 1 and 2 to complete the other tasks and claim the held ones again",
                ledger,
            )
        finally:
            stop.set()
            for thread in drainers:
                thread.join(DEADLINE_S)
        assert not ledger.errors, ledger.errors[:5]
    finally:
        network.restore(cut_host)

    try:
        late = [json.loads(said.get(timeout=DEADLINE_S)) for _ in range(HELD)]
        assert holder.wait(DEADLINE_S) == 0
    finally:
        holder.kill()
        holder.wait()
    # Each in-flight report was refused: it reached the database late, while attempt 2
    # was live on another host (409), or host 3's server gave up on the database while
    # the link was down (503; today it waits for the link, see the test below).
    for answer in late:
        refused = answer.get("status_code"), answer.get("body", {}).get("error")
        assert refused in {(409, "conflict"), (503, "unavailable")}, answer
        if refused[0] == 409:
            assert (answer["body"]["status"], answer["body"]["attempt"]) == ("claimed", 2), answer
    assert {answer["task_id"] for answer in late} == set(held)
    assert sorted((task_id, attempt) for task_id, attempt, _, _, _ in ledger.reclaimed) == [
        (task_id, 2) for task_id in sorted(held)
    ]

    # Later reports from host 3 are refused too, with or without the old attempt.
    with cut_server.client(headers=bearer(holder_token)) as client:
        for task_id, attempt in held.items():
            for payload in (
                {"task_id": task_id, "status": "completed", "attempt": attempt},
                {"task_id": task_id, "status": "in_progress", "attempt": attempt},
                {"task_id": task_id, "status": "completed"},
            ):
                response = client.post("/api/task/run", json=payload)
                assert response.status_code == 409, (payload, response.text)
                body = response.json()
                assert (body["error"], body["status"], body["attempt"]) == ("conflict", "claimed", 2), body
    # Attempt 2 is untouched by them: its holders complete it.
    for task_id, attempt, server, agent_id, token in ledger.reclaimed:
        with server.client(headers=bearer(token)) as client:
            response = client.post(
                "/api/task/run", json={"task_id": task_id, "status": "completed", "attempt": attempt}
            )
            assert response.status_code == 200, response.text
        ledger.completed.append((task_id, agent_id, attempt))
    with cut_server.client() as client:
        for task_id in held:
            status = client.get("/api/task/status", params={"task_id": task_id}).json()
            assert (status["status"], status["attempt"]) == ("completed", 2), status
            assert status["agent"] != holder_id

    # Host 3 serves again: it creates tasks, its agent claims and completes one, and
    # every host drains the rest.
    after_ids = []
    with cut_server.client() as client:
        for n in range(AFTER):
            response = client.post("/api/task/create", json={"title": f"after {n}"}, headers=bearer(boss))
            assert response.status_code == 200, response.text
            after_ids.append(response.json()["id"])
        claim = client.post("/api/task/claim", json={}, headers=bearer(holder_token)).json()
        assert claim["task_id"] in after_ids, claim
        response = client.post(
            "/api/task/run",
            json={"task_id": claim["task_id"], "status": "completed", "attempt": claim["attempt"]},
            headers=bearer(holder_token),
        )
        assert response.status_code == 200, response.text
        ledger.completed.append((claim["task_id"], holder_id, claim["attempt"]))
    stop = threading.Event()
    drainers = [
        threading.Thread(target=_drain, args=(server, agent_id, token, ledger, stop, set()))
        for server, agent_id, token in [*workers[::AGENTS_PER_UP_HOST], (cut_server, holder_id, holder_token)]
    ]
    for thread in drainers:
        thread.start()
    try:
        _wait_for(lambda: ledger.count() >= TASKS + AFTER, "the tasks created after the link came back", ledger)
    finally:
        stop.set()
        for thread in drainers:
            thread.join(DEADLINE_S)
    assert not ledger.errors, ledger.errors[:5]

    # The database: every task completed exactly once, by an acknowledged report.
    all_ids = {int(task_id) for task_id in task_ids + after_ids}
    tasks = {row[0]: (row[1], row[2]) for row in _rows(shared_db_url, "SELECT id, status, attempt FROM tasks")}
    assert set(tasks) == all_ids
    assert {status for status, _ in tasks.values()} == {"completed"}
    runs = _rows(shared_db_url, "SELECT task_id, agent_id, attempt, status FROM runs ORDER BY id")
    completed_runs = [
        (str(task_id), str(agent), attempt) for task_id, agent, attempt, status in runs if status == "completed"
    ]
    assert Counter(task_id for task_id, _, _ in completed_runs) == Counter(str(task_id) for task_id in all_ids)
    assert sorted(completed_runs) == sorted(ledger.completed), "completed runs are exactly the acknowledged reports"
    for task_id in held:
        history = [(str(agent), a, status) for t, agent, a, status in runs if str(t) == task_id]
        assert history[0] == (holder_id, 1, "expired"), history
        assert history[1][1:] == (2, "completed") and history[1][0] != holder_id, history
        assert len(history) == 2, history
        assert tasks[int(task_id)] == ("completed", 2)
    others = [tasks[t] for t in all_ids if str(t) not in held]
    assert set(others) == {("completed", 1)}, "no other task was claimed twice"


#: How long a request of a host cut off from PostgreSQL may go unanswered: many times
#: what the settings below allow (a 2 s pool timeout, one retry), so it bounds a hang,
#: not a speed.
UNANSWERED_BOUND_S = 20.0


def test_a_host_cut_off_from_postgresql_answers_503_until_the_link_returns(
    network: HostNetwork, shared_db_url: str, server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    host = network.hosts[0]
    server = server_factory(
        tmp_path / host.name,
        prefix=tuple(host.exec_prefix()),
        MCP_DB_URL=shared_db_url,
        MCP_HOST=host.address,
        MCP_DB_POOL_MIN="2",
        MCP_DB_POOL_TIMEOUT_S="2",
        MCP_DB_CONNECT_TIMEOUT_S="2",
        MCP_DB_RETRIES="1",
    ).start()
    with server.client() as client:
        _, token = _register(client, None, "agent")
        for n in range(3):
            response = client.post("/api/task/create", json={"title": f"task {n}"}, headers=bearer(token))
            assert response.status_code == 200, response.text

    requests = ["POST:/api/task/claim", "POST:/api/task/claim", "POST:/api/task/create", "GET:/api/task/list"]
    network.cut(host)
    try:
        # From inside the host: its server is reachable, PostgreSQL is not.
        probe = subprocess.run(
            [*host.exec_prefix(), sys.executable, str(WORKERS / "http_requests.py")]
            + [server.url, token, str(UNANSWERED_BOUND_S), *requests, "GET:/healthz/db"],
            capture_output=True,
            text=True,
            timeout=UNANSWERED_BOUND_S + 60,
        )
    finally:
        network.restore(host)
    answers = [json.loads(line) for line in probe.stdout.splitlines()]
    assert len(answers) == len(requests) + 1, probe.stderr
    refused = [(a["request"], a.get("status_code"), a.get("body", {}).get("error"), a.get("error")) for a in answers]
    # 503 either way: unavailable, or commit_unknown for a write whose statement was
    # already on its way when the link died (it may have committed: never retried).
    assert all(status == 503 and error in ("unavailable", "commit_unknown") for _, status, error, _ in refused), refused

    # The link is back: the same server claims again.
    with server.client(headers=bearer(token)) as client:
        claim = client.post("/api/task/claim", json={})
        assert claim.status_code == 200 and "task_id" in claim.json(), claim.text
