"""The store on PostgreSQL: the server's clock decides ownership, whatever a host's
clock says (DESIGN.md guarantee 10); leases expire, are requeued once, fence late
reports, and count against max attempts, timed by the server.

Leases here are short (a fraction of a second) and the tests wait until the
server's ``now()`` is past a lease's end: they wait on the database's clock and
never assert on elapsed wall-clock time.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any, Iterator

import pytest

from icn_mcp.db.timestamps import parse_ts, utc_now
from icn_mcp.errors import Conflict
from icn_mcp.store import Store
from icn_mcp.store.sql.postgres import CLAIM_SQL

from .store_helpers import MAINTAINER_TOKEN, open_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def pgdb(pg_url: str) -> Iterator[Any]:
    database = open_database(pg_url)
    yield database
    database.close()


def _skewed(offset_s: float):
    """A host clock off by ``offset_s`` seconds (the injected skew)."""

    def clock() -> datetime:
        return utc_now() + timedelta(seconds=offset_s)

    return clock


def _server_now(db: Any) -> datetime:
    with db.read_transaction() as conn:
        return parse_ts(conn.execute("SELECT now()").fetchone()[0])


def _wait_until_server_passes(db: Any, moment: str) -> None:
    """Wait (on the server's clock) until ``moment`` has passed there."""
    deadline = time.monotonic() + 60
    while _server_now(db) <= parse_ts(moment):
        assert time.monotonic() < deadline, "the server's clock did not reach the lease's end"
        time.sleep(0.05)


def _agents(store: Store, count: int) -> list[str]:
    first = store.register_agent("worker-0", "planner")
    rest = [store.register_agent(f"worker-{i}", "planner", credential=MAINTAINER_TOKEN) for i in range(1, count)]
    return [first.id] + [agent.id for agent in rest]


def test_a_host_clock_skewed_ahead_cannot_steal_a_live_lease(pgdb: Any) -> None:
    honest = Store(pgdb, maintainer_tokens=[MAINTAINER_TOKEN])
    # A host whose clock runs a day ahead: on SQLite's rules it would see every lease
    # (and every token) as long expired.
    ahead = Store(pgdb, clock=_skewed(86400), maintainer_tokens=[MAINTAINER_TOKEN], token_ttl_s=3600)
    holder, thief = _agents(honest, 2)
    task = honest.create_task("held")
    claim = honest.claim_next_task(holder, lease_s=300)
    assert claim is not None and claim.task_id == task.id
    lease_end = parse_ts(claim.lease_expires_at)
    assert lease_end - _server_now(pgdb) <= timedelta(seconds=300)

    assert ahead.claim_next_task(thief) is None  # the lease is live on the server's clock
    status = ahead.task_status(task.id)
    assert (status.status, status.agent, status.attempt) == ("claimed", holder, 1)
    assert [run.status for run in ahead.list_runs(task.id)] == []  # no "expired" run written
    # The skewed host accepts the holder's report: the lease has not expired.
    ahead.report_run(task.id, holder, "in_progress", attempt=1)
    # Its own claims and renewals are timed by the server too, not a day ahead.
    renewed = parse_ts(ahead.task_status(task.id).lease_expires_at)  # type: ignore[arg-type]
    assert renewed - _server_now(pgdb) <= timedelta(seconds=300)
    # A token issued through the skewed host lives token_ttl_s on the server's clock,
    # and a host a day ahead still accepts it.
    issued = ahead.register_agent("late", "planner", credential=MAINTAINER_TOKEN)
    assert parse_ts(issued.token_expires_at) - _server_now(pgdb) <= timedelta(seconds=3600)
    assert ahead.authenticate(issued.token).id == issued.id


def test_a_host_clock_skewed_behind_cannot_keep_an_expired_lease(pgdb: Any) -> None:
    behind = Store(pgdb, clock=_skewed(-86400), maintainer_tokens=[MAINTAINER_TOKEN])
    holder, other = _agents(behind, 2)
    task = behind.create_task("short")
    claim = behind.claim_next_task(holder, lease_s=0.2)
    assert claim is not None
    _wait_until_server_passes(pgdb, claim.lease_expires_at)
    # A host a day behind would think the lease still runs; the server says it ended.
    with pytest.raises(Conflict, match="expired"):
        behind.report_run(task.id, holder, "completed", attempt=claim.attempt)
    again = behind.claim_next_task(other)
    assert again is not None and (again.task_id, again.attempt) == (task.id, 2)


def test_expired_lease_is_requeued_once_and_fences_the_late_report(pgdb: Any) -> None:
    store = Store(pgdb, maintainer_tokens=[MAINTAINER_TOKEN])
    first, second = _agents(store, 2)
    task = store.create_task("leased", max_attempts=3)
    claim = store.claim_next_task(first, lease_s=0.2)
    assert claim is not None and claim.attempt == 1
    _wait_until_server_passes(pgdb, claim.lease_expires_at)

    taken = store.claim_next_task(second, lease_s=300)
    assert taken is not None and (taken.task_id, taken.attempt) == (task.id, 2)
    runs = store.list_runs(task.id)
    assert [(r.agent_id, r.attempt, r.status) for r in runs] == [(first, 1, "expired")]
    assert runs[0].notes == f"lease expired at {claim.lease_expires_at}"
    # The late report of attempt 1 is refused; so is one without attempt.
    with pytest.raises(Conflict, match="claimed by another agent"):
        store.report_run(task.id, first, "completed", attempt=1)
    with pytest.raises(Conflict, match="claimed by another agent"):
        store.report_run(task.id, first, "completed")
    store.report_run(task.id, second, "completed", attempt=2)
    assert store.get_task(task.id).status == "completed"


def test_attempt_is_required_after_an_agent_held_an_expired_attempt(pgdb: Any) -> None:
    store = Store(pgdb, maintainer_tokens=[MAINTAINER_TOKEN])
    (agent,) = _agents(store, 1)
    task = store.create_task("twice")
    claim = store.claim_next_task(agent, lease_s=0.2)
    assert claim is not None
    _wait_until_server_passes(pgdb, claim.lease_expires_at)
    again = store.claim_next_task(agent, lease_s=300)
    assert again is not None and again.attempt == 2
    with pytest.raises(Conflict, match="attempt is required"):
        store.report_run(task.id, agent, "completed")
    with pytest.raises(Conflict, match="stale"):
        store.report_run(task.id, agent, "completed", attempt=1)
    with pytest.raises(Conflict, match="attempt is required"):
        store.add_artifact(task.id, "log", "out.txt", agent_id=agent)
    store.report_run(task.id, agent, "completed", attempt=2)


def test_expired_leases_count_against_max_attempts(pgdb: Any) -> None:
    store = Store(pgdb, maintainer_tokens=[MAINTAINER_TOKEN])
    (agent,) = _agents(store, 1)
    task = store.create_task("fragile", max_attempts=2)
    for attempt in (1, 2):
        claim = store.claim_next_task(agent, lease_s=0.2)
        assert claim is not None and claim.attempt == attempt
        _wait_until_server_passes(pgdb, claim.lease_expires_at)
    assert store.claim_next_task(agent) is None  # requeues attempt 2 as failed for good
    assert store.get_task(task.id).status == "failed"
    assert [r.status for r in store.list_runs(task.id)] == ["expired", "expired"]


def test_claims_follow_priority_then_age_and_wait_for_dependencies(pgdb: Any) -> None:
    store = Store(pgdb, maintainer_tokens=[MAINTAINER_TOKEN])
    (agent,) = _agents(store, 1)
    low = store.create_task("low")
    root = store.create_task("root", priority=1)
    child = store.create_task("child", depends_on=[root.id], priority=9)
    high = store.create_task("high", priority=5)
    order = []
    while (claim := store.claim_next_task(agent)) is not None:
        order.append(claim.task_id)
        store.report_run(claim.task_id, agent, "completed", attempt=claim.attempt)
    assert order == [high.id, root.id, child.id, low.id]


def test_the_claim_reads_the_claim_order_index(pgdb: Any) -> None:
    store = Store(pgdb, maintainer_tokens=[MAINTAINER_TOKEN])
    (agent,) = _agents(store, 1)
    with pgdb.write_transaction() as conn:
        conn.execute(
            "INSERT INTO tasks (title, created_at, updated_at, priority) "
            "SELECT 'bulk ' || g, now(), now(), g % 7 FROM generate_series(1, 20000) AS g"
        )
        conn.execute("ANALYZE tasks")
    with pgdb.read_transaction() as conn:
        plan = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + CLAIM_SQL, {"agent_id": agent, "lease_s": 1.0}).fetchall()
        )
    # The first unlocked entry of the partial index, locked: no scan of tasks, no sort.
    assert "Index Scan using tasks_claim_order on tasks" in plan, plan
    assert "LockRows" in plan, plan
    assert "Sort" not in plan and "Seq Scan" not in plan, plan


def test_a_completion_waiting_for_a_new_dependents_lock_still_releases_it(pgdb: Any, pg_url: str) -> None:
    """create_task holds its dependencies FOR SHARE until it commits. A completion of
    such a dependency (a report sent in one round trip) waits for that lock, and its
    release of dependents then sees the new edge: the new task becomes claimable."""
    import threading

    import psycopg

    store = Store(pgdb, maintainer_tokens=[MAINTAINER_TOKEN])
    (agent,) = _agents(store, 1)
    root = store.create_task("root")
    claim = store.claim_next_task(agent)
    assert claim is not None and claim.task_id == root.id
    creator = psycopg.connect(pg_url, autocommit=True)
    creator.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    # What create_task does for a dependency that is not completed yet, then pauses.
    assert creator.execute("SELECT status FROM tasks WHERE id = %s FOR SHARE", (root.id,)).fetchone() == ("claimed",)
    child_id = creator.execute(
        "INSERT INTO tasks (title, status, created_at, updated_at, depends_on, blocking_deps) "
        "VALUES ('child', 'open', now(), now(), %s, 1) RETURNING id",
        (f"[{root.id}]",),
    ).fetchone()[0]
    creator.execute("INSERT INTO task_dependencies (task_id, depends_on_id) VALUES (%s, %s)", (child_id, root.id))
    reported: list[Any] = []
    reporter = threading.Thread(
        target=lambda: reported.append(store.report_run(root.id, agent, "completed", attempt=claim.attempt))
    )
    reporter.start()
    with psycopg.connect(pg_url, autocommit=True) as watcher:  # the report waits for the row lock
        for _ in range(3000):
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()[0]
            if waiting:
                break
            time.sleep(0.01)
        assert waiting, "the report never waited for the creator's lock"
    creator.execute("COMMIT")
    creator.close()
    reporter.join(60)
    assert reported and reported[0].status == "completed"
    assert store.get_task(child_id).status == "open"
    next_claim = store.claim_next_task(agent)
    assert next_claim is not None and next_claim.task_id == child_id
