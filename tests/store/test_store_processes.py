"""Real processes: many claimers on one database, dependencies under concurrency,
racing bootstrap registrations, kill -9 in the middle of claiming, close and reopen."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.db.timestamps import parse_ts, utc_now
from icn_mcp.errors import Conflict
from icn_mcp.store import Store

from .store_helpers import (
    MAINTAINER_TOKEN,
    FakeClock,
    claim_forever,
    claim_until_done,
    hold_write_lock,
    register_at_barrier,
)

pytestmark = pytest.mark.slow

# fork: children start in milliseconds, and Database opens fresh connections in a
# forked child (the parent's are set aside).
CTX = multiprocessing.get_context("fork")
WORKERS = 8
TASKS = 2000


def _register(store: Store, count: int) -> list[str]:
    first = store.register_agent("worker-0", "planner")
    rest = [store.register_agent(f"worker-{i}", "planner", credential=MAINTAINER_TOKEN) for i in range(1, count)]
    return [first.id] + [agent.id for agent in rest]


def _run_claimers(db_path: str | Path, agent_ids: list[str], tmp_path: Path, total: int) -> list[dict]:
    outs = [tmp_path / f"claimer-{i}.json" for i in range(len(agent_ids))]
    procs = [
        CTX.Process(target=claim_until_done, args=(str(db_path), agent, str(out), total, 300.0))
        for agent, out in zip(agent_ids, outs, strict=True)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    results = [json.loads(out.read_text()) if out.exists() else {"error": "no result"} for out in outs]
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors[0]  # a BusyError or anything else escaping a claimer
    assert [proc.exitcode for proc in procs] == [0] * len(procs)
    return results


def _assert_each_claimed_once(store: Store, results: list[dict], task_ids: list[int]) -> None:
    claims = [tuple(claim) for r in results for claim in r["claims"]]
    counts = Counter(task_id for task_id, _ in claims)
    assert [t for t, n in counts.items() if n > 1] == []  # none twice
    assert sorted(counts) == sorted(task_ids)  # none skipped
    assert {attempt for _, attempt in claims} == {1}
    stats = store.stats()
    assert stats["tasks_completed"] == len(task_ids) == stats["tasks_total"]
    assert stats["runs_total"] == len(task_ids)
    assert sum(1 for r in results if r["claims"]) > 1, "only one process did any work"


def test_eight_processes_claim_every_task_exactly_once(store: Store, db_target: str, tmp_path: Path) -> None:
    agent_ids = _register(store, WORKERS)
    task_ids = [store.create_task(f"task {i}", priority=i % 5).id for i in range(TASKS)]
    results = _run_claimers(db_target, agent_ids, tmp_path, TASKS)
    _assert_each_claimed_once(store, results, task_ids)


#: A trigger logs every claim and completion with an increasing number: the oracle
#: for "no task was claimed before its dependencies completed". On SQLite (one writer)
#: in commit order; on PostgreSQL a sequence value taken inside the completing
#: transaction, so before its commit, while a dependent's claim can only see
#: blocking_deps = 0 after that commit: a claim logged before its dependency's
#: completion is a claim that did not wait for it.
_CLAIM_LOG = {
    "sqlite": [
        "CREATE TABLE claim_log (seq INTEGER PRIMARY KEY, task_id INTEGER, status TEXT)",
        "CREATE TRIGGER log_claims AFTER UPDATE OF status ON tasks "
        "WHEN NEW.status IN ('claimed', 'completed') BEGIN "
        "INSERT INTO claim_log (task_id, status) VALUES (NEW.id, NEW.status); END",
    ],
    "postgresql": [
        "CREATE TABLE claim_log (seq BIGSERIAL PRIMARY KEY, task_id BIGINT, status TEXT)",
        "CREATE FUNCTION log_claims() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO claim_log (task_id, status) VALUES (NEW.id, NEW.status); RETURN NEW; END $$",
        "CREATE TRIGGER log_claims AFTER UPDATE OF status ON tasks FOR EACH ROW "
        "WHEN (NEW.status IN ('claimed', 'completed')) EXECUTE FUNCTION log_claims()",
    ],
}


def test_eight_processes_respect_chains_and_fan_ins(
    store: Store, db: Database, backend: str, db_target: str, tmp_path: Path
) -> None:
    with db.write_transaction() as conn:
        for statement in _CLAIM_LOG[backend]:
            conn.execute(statement)
    agent_ids = _register(store, WORKERS)
    deps: dict[int, list[int]] = {}

    def create(title: str, depends_on: list[int] | None = None) -> int:
        depends_on = depends_on or []
        task = store.create_task(title, depends_on=depends_on, priority=len(deps) % 3)
        deps[task.id] = list(depends_on)
        return task.id

    chain = [create("chain 0")]
    for i in range(1, 150):  # a chain: each link waits for the one before
        chain.append(create(f"chain {i}", [chain[-1]]))
    sinks = []
    for group in range(4):  # fan-ins: one sink waits for 100 leaves
        leaves = [create(f"leaf {group}.{i}") for i in range(100)]
        sinks.append(create(f"sink {group}", leaves))
    create("final", sinks + [chain[-1]])
    while len(deps) < TASKS:
        create(f"free {len(deps)}")

    results = _run_claimers(db_target, agent_ids, tmp_path, TASKS)
    _assert_each_claimed_once(store, results, list(deps))

    with db.read_transaction() as conn:
        log = conn.execute("SELECT seq, task_id, status FROM claim_log").fetchall()
    claimed_at = {task_id: seq for seq, task_id, status in log if status == "claimed"}
    completed_at = {task_id: seq for seq, task_id, status in log if status == "completed"}
    assert len(claimed_at) == len(completed_at) == TASKS
    early = [(task, dep) for task, ds in deps.items() for dep in ds if claimed_at[task] < completed_at[dep]]
    assert early == []


def test_racing_bootstrap_registrations_yield_exactly_one_agent(db: Database, db_target: str, tmp_path: Path) -> None:
    racers = 6
    barrier = CTX.Barrier(racers)
    outs = [tmp_path / f"racer-{i}.json" for i in range(racers)]
    procs = [
        CTX.Process(target=register_at_barrier, args=(db_target, f"racer-{i}", barrier, str(out)))
        for i, out in enumerate(outs)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    results = [json.loads(out.read_text()) for out in outs]
    assert [r for r in results if "error" in r] == []
    winners = [r for r in results if r["ok"]]
    assert len(winners) == 1
    assert all("already registered" in r["reason"] for r in results if not r["ok"])
    with db.read_transaction() as conn:
        rows = conn.execute("SELECT id FROM agents").fetchall()
    assert [row[0] for row in rows] == [winners[0]["id"]]


@pytest.mark.sqlite_only(reason="reopens the SQLite file and checks its integrity")
def test_kill_9_in_the_middle_of_claiming_loses_nothing(store: Store, db: Database, db_path: Path) -> None:
    victim, survivor = _register(store, 2)
    task_ids = [store.create_task(f"task {i}").id for i in range(600)]
    proc = CTX.Process(target=claim_forever, args=(str(db_path), victim))
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while store.stats()["tasks_completed"] < 100:  # let it get well under way
            assert proc.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert proc.exitcode == -signal.SIGKILL
    db.close()

    # Reopen as a restarted server would, with a clock past every lease.
    clock = FakeClock(utc_now())
    with Database(db_path) as reopened:
        conn = reopened.connection()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        later = Store(reopened, clock=clock)
        clock.advance(3600)
        while (claim := later.claim_next_task(survivor)) is not None:
            later.report_run(claim.task_id, survivor, "completed", attempt=claim.attempt)
        stats = later.stats()
        assert stats["tasks_completed"] == len(task_ids)
        completed_runs = conn.execute(
            "SELECT task_id, count(*) AS n FROM runs WHERE status = 'completed' GROUP BY task_id"
        ).fetchall()
        assert {row["task_id"]: row["n"] for row in completed_runs} == dict.fromkeys(task_ids, 1)
        # At most the one claim in flight at the kill expired and was taken over.
        expired = conn.execute("SELECT task_id, attempt FROM runs WHERE status = 'expired'").fetchall()
        assert len(expired) <= 1
        assert max(t.attempt for t in later.list_tasks(limit=1000).tasks) <= 2


@pytest.mark.sqlite_only(reason="reopens the SQLite file and checks its integrity")
def test_everything_survives_close_and_reopen(db_path: Path, tmp_path: Path) -> None:
    clock = FakeClock()
    with Database(db_path) as db:
        store = Store(db, clock=clock)
        agent = store.register_agent("worker", "planner", "2.1")
        other = store.register_agent("other", "ops", credential=agent.token)
        done = store.create_task("done", idempotency_key="k1")
        held = store.create_task("held", depends_on=[done.id], priority=2)
        claim = store.claim_next_task(agent.id)
        store.report_run(done.id, agent.id, "completed", notes="ok", attempt=claim.attempt)  # type: ignore[union-attr]
        claim = store.claim_next_task(agent.id, lease_s=600)
        store.report_run(held.id, agent.id, "in_progress", attempt=claim.attempt)  # type: ignore[union-attr]
        store.add_artifact(done.id, "file", "out.txt", {"lines": 3}, added_by="maintainer:admin")
        before = (
            store.list_tasks().to_dict(),
            store.task_status(held.id).to_dict(),
            store.list_artifacts(done.id),
            store.stats(),
        )

    with Database(db_path) as db:
        store = Store(db, clock=clock)
        after = (
            store.list_tasks().to_dict(),
            store.task_status(held.id).to_dict(),
            store.list_artifacts(done.id),
            store.stats(),
        )
        assert after == before
        assert store.authenticate(agent.token).version == "2.1"
        assert store.authenticate(other.token).id == other.id
        assert store.create_task("again", idempotency_key="k1").id == done.id
        assert store.claim_next_task(other.id) is None  # the lease survived
        with pytest.raises(Conflict):
            store.report_run(held.id, other.id, "completed")
        store.report_run(held.id, agent.id, "completed", attempt=claim.attempt)  # type: ignore[union-attr]
        assert store.get_task(held.id).status == "completed"


def _while_another_process_holds_the_write_lock(db_path: Path, tmp_path: Path, seconds: float):
    """Start a process holding the write lock for ``seconds``; return it once it holds
    it, with the file where it writes the moment it lets go."""
    turn = len(list(tmp_path.glob("locked-*")))
    locked, released = tmp_path / f"locked-{turn}", tmp_path / f"released-{turn}.json"
    holder = CTX.Process(target=hold_write_lock, args=(str(db_path), seconds, str(locked), str(released)))
    holder.start()
    for _ in range(3000):
        if locked.exists() or not holder.is_alive():
            break
        time.sleep(0.01)
    assert locked.exists(), "the lock holder never took the lock"
    return holder, released


def _released_at(holder, released: Path) -> datetime:
    holder.join(timeout=60)
    assert holder.exitcode == 0
    return datetime.fromtimestamp(json.loads(released.read_text())["released_at"], tz=UTC)


def test_a_claim_that_waited_for_the_write_lock_gets_a_lease_from_when_it_ran(db_path: Path, tmp_path: Path) -> None:
    """Issue 9 item 11: the clock is read inside the transaction. Another process
    holds the write lock for 3 s; a claim with ``lease_s=1`` waits for it. Its lease
    must end after the lock was released (the earliest its commit can be), not 1 s
    after the claim was asked for, which was already in the past by then."""
    with Database(db_path) as db:
        store = Store(db)
        agent = store.register_agent("patient", "planner")
        task = store.create_task("claimed after a wait")
        holder, released = _while_another_process_holds_the_write_lock(db_path, tmp_path, 3.0)
        claim = store.claim_next_task(agent.id, lease_s=1)
        released_at = _released_at(holder, released)
        assert claim is not None and claim.task_id == task.id
        assert parse_ts(claim.lease_expires_at) > released_at, (claim.lease_expires_at, released_at)
        assert parse_ts(store.get_task(task.id).lease_expires_at) > released_at  # type: ignore[arg-type]

        # A heartbeat that waited renews from when it ran (it read the clock inside
        # its transaction already; this keeps it so).
        later = store.create_task("renewed after a wait")
        renewed = store.claim_next_task(agent.id, lease_s=600)
        assert renewed is not None and renewed.task_id == later.id
        holder, released = _while_another_process_holds_the_write_lock(db_path, tmp_path, 3.0)
        store.report_run(later.id, agent.id, "in_progress", attempt=renewed.attempt)
        released_at = _released_at(holder, released)
        lease = parse_ts(store.get_task(later.id).lease_expires_at)  # type: ignore[arg-type]
        assert lease >= released_at + timedelta(seconds=600)
