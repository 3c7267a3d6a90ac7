"""Tasks: creation and validation, dependencies, listing, claims with leases, the
fencing attempt, reports and their history, artifacts, stats, and the claim plan."""

from __future__ import annotations

import sqlite3

import pytest

from icn_mcp.db import Database
from icn_mcp.errors import Conflict, Forbidden, NotFound, ValidationError
from icn_mcp.store import STATS_KEYS, RegisteredAgent, Store
from icn_mcp.store.tasks import CLAIM_SQL, EXPIRED_LEASE_PROBE_SQL

from .store_helpers import MAINTAINER_TOKEN, MOVES_CLOCK, FakeClock


@pytest.fixture
def agents(store: Store) -> list[RegisteredAgent]:
    first = store.register_agent("agent-a", "planner")
    return [first, store.register_agent("agent-b", "ops", credential=MAINTAINER_TOKEN)]


def test_create_task_validates_every_field(store: Store) -> None:
    with pytest.raises(ValidationError) as info:
        store.create_task(
            "",
            description=5,
            created_by="x" * 129,
            priority=True,  # type: ignore[arg-type]
            max_attempts=0,
            idempotency_key="",
        )
    assert set(info.value.fields) == {
        "title",
        "description",
        "created_by",
        "priority",
        "max_attempts",
        "idempotency_key",
    }
    for title in ["x" * 201, "   ", None, "nul\x00byte", b"bytes"]:
        with pytest.raises(ValidationError, match="title"):
            store.create_task(title)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="priority: an integer from -1000 to 1000"):
        store.create_task("t", priority=1001)
    with pytest.raises(ValidationError, match="depends_on"):
        store.create_task("t", depends_on=["1"])  # type: ignore[list-item]
    assert store.create_task("x" * 200).title == "x" * 200
    assert store.create_task("two\nlines\tok", depends_on=None).depends_on == []


def test_unknown_dependencies_are_named_and_nothing_is_written(store: Store) -> None:
    known = store.create_task("known")
    with pytest.raises(ValidationError, match="unknown task ids: 98, 99") as info:
        store.create_task("t", depends_on=[known.id, 98, 99])
    assert set(info.value.fields) == {"depends_on"}
    assert store.stats()["tasks_total"] == 1


def test_repeated_idempotency_key_returns_the_first_task(store: Store) -> None:
    first = store.create_task("deploy", idempotency_key="req-1")
    again = store.create_task("deploy (retried)", idempotency_key="req-1")
    assert again == first
    assert store.create_task("other", idempotency_key="req-2").id != first.id
    assert store.stats()["tasks_total"] == 2


def test_claims_follow_priority_then_age_then_dependencies(
    store: Store, agents: list[RegisteredAgent], clock: FakeClock
) -> None:
    a = agents[0].id
    low = store.create_task("low")
    clock.advance(1)
    high_old = store.create_task("high old", priority=5)
    clock.advance(1)
    high_new = store.create_task("high new", priority=5)
    blocked = store.create_task("blocked", priority=9, depends_on=[low.id, high_old.id])
    assert blocked.depends_on == [low.id, high_old.id]

    order = []
    while (claim := store.claim_next_task(a)) is not None:
        order.append(claim.task_id)
        store.report_run(claim.task_id, a, "completed", attempt=claim.attempt)
    assert order == [high_old.id, high_new.id, low.id, blocked.id]


def test_a_task_is_claimable_only_after_all_dependencies_completed(store: Store, agents: list[RegisteredAgent]) -> None:
    a = agents[0].id
    left, right = store.create_task("left"), store.create_task("right")
    sink = store.create_task("sink", depends_on=[left.id, right.id])
    first = store.claim_next_task(a)
    second = store.claim_next_task(a)
    assert {first.task_id, second.task_id} == {left.id, right.id}  # type: ignore[union-attr]
    assert store.claim_next_task(a) is None
    store.report_run(first.task_id, a, "completed")  # type: ignore[union-attr]
    assert store.claim_next_task(a) is None  # one dependency still open
    store.report_run(second.task_id, a, "failed", attempt=second.attempt)  # type: ignore[union-attr]
    retry = store.claim_next_task(a)
    assert retry.task_id == second.task_id and retry.attempt == 2  # type: ignore[union-attr]
    store.report_run(retry.task_id, a, "completed")  # type: ignore[union-attr]
    assert store.claim_next_task(a).task_id == sink.id  # type: ignore[union-attr]
    # A task depending on a completed task is claimable at once.
    late = store.create_task("late", depends_on=[left.id])
    assert store.claim_next_task(a).task_id == late.id  # type: ignore[union-attr]


@MOVES_CLOCK
def test_expired_lease_is_reclaimed_late_report_refused_history_kept(
    store: Store, agents: list[RegisteredAgent], clock: FakeClock
) -> None:
    a, b = agents[0].id, agents[1].id
    task = store.create_task("flaky work")
    first = store.claim_next_task(a, lease_s=60)
    assert first is not None and first.attempt == 1
    store.report_run(task.id, a, "in_progress", notes="halfway", attempt=1)
    assert store.claim_next_task(b) is None  # the lease holds

    clock.advance(61)
    with pytest.raises(Conflict, match="expired"):
        store.report_run(task.id, a, "completed", attempt=1)
    second = store.claim_next_task(b, lease_s=60)
    assert second is not None and second.task_id == task.id and second.attempt == 2

    with pytest.raises(Conflict, match="another agent") as info:
        store.report_run(task.id, a, "completed", attempt=1)
    assert info.value.data["attempt"] == 2
    store.report_run(task.id, b, "completed", notes="done", attempt=2)

    runs = store.list_runs(task.id)
    assert [(r.agent_id, r.attempt, r.status) for r in runs] == [
        (a, 1, "in_progress"),
        (a, 1, "expired"),
        (b, 2, "completed"),
    ]
    status = store.task_status(task.id)
    assert (status.status, status.attempt, status.agent, status.notes) == ("completed", 2, b, "done")
    assert status.latest_run == runs[-1]


@MOVES_CLOCK
def test_status_of_a_reclaimed_task_names_the_current_claimer(
    store: Store, agents: list[RegisteredAgent], clock: FakeClock
) -> None:
    """A claim writes no run, so the latest run of a reclaimed task is the previous
    claimer's; while the task is claimed, ``agent`` is the claimer all the same."""
    a, b = agents[0].id, agents[1].id
    task = store.create_task("reclaimed")
    assert store.claim_next_task(a, lease_s=60) is not None
    assert store.task_status(task.id).agent == a  # claimed, no run yet
    store.report_run(task.id, a, "in_progress", notes="a was here", attempt=1)

    clock.advance(61)
    second = store.claim_next_task(b, lease_s=60)
    assert second is not None and second.task_id == task.id and second.attempt == 2
    status = store.task_status(task.id)
    assert (status.status, status.attempt, status.agent) == ("claimed", 2, b)
    # notes and latest_run stay the latest run: a's lease running out.
    assert status.latest_run is not None
    assert (status.latest_run.agent_id, status.latest_run.status) == (a, "expired")
    assert status.notes == status.latest_run.notes

    # Once the task is no longer claimed, agent is the latest run's again.
    store.report_run(task.id, b, "failed", notes="b gave up", attempt=2)
    status = store.task_status(task.id)
    assert (status.status, status.agent, status.notes) == ("open", b, "b gave up")


@MOVES_CLOCK
def test_report_conflicts_name_what_is_stale(store: Store, agents: list[RegisteredAgent], clock: FakeClock) -> None:
    a, b = agents[0].id, agents[1].id
    task = store.create_task("t")
    with pytest.raises(Conflict, match="not claimed"):
        store.report_run(task.id, a, "in_progress")
    claim = store.claim_next_task(a, lease_s=30)
    with pytest.raises(Conflict, match="attempt 7 .* stale: the current attempt is 1"):
        store.report_run(task.id, a, "in_progress", attempt=7)
    with pytest.raises(Conflict, match="another agent"):
        store.report_run(task.id, b, "in_progress")
    with pytest.raises(NotFound):
        store.report_run(999, a, "completed")
    with pytest.raises(ValidationError, match="status"):
        store.report_run(task.id, a, "done")

    # in_progress is a heartbeat: it renews the lease for the claim's lease length.
    clock.advance(20)
    store.report_run(task.id, a, "in_progress", attempt=claim.attempt)  # type: ignore[union-attr]
    clock.advance(20)  # 40 s after the claim, 20 s after the heartbeat
    assert store.claim_next_task(b) is None
    store.report_run(task.id, a, "claimed")
    clock.advance(11)  # "claimed" did not renew
    with pytest.raises(Conflict, match="expired"):
        store.report_run(task.id, a, "completed")


@MOVES_CLOCK
def test_failed_reopens_until_max_attempts_then_fails_for_good(
    store: Store, agents: list[RegisteredAgent], clock: FakeClock
) -> None:
    a = agents[0].id
    task = store.create_task("fragile", max_attempts=3)
    dependent = store.create_task("after", depends_on=[task.id])
    claim = store.claim_next_task(a)
    store.report_run(task.id, a, "failed", attempt=claim.attempt)  # type: ignore[union-attr]
    store.claim_next_task(a, lease_s=10)
    clock.advance(11)  # an expired lease counts as a failed attempt too
    claim = store.claim_next_task(a)
    assert claim.attempt == 3  # type: ignore[union-attr]
    store.report_run(task.id, a, "failed", notes="gave up", attempt=3)
    final = store.get_task(task.id)
    assert (final.status, final.attempt, final.claimed_by) == ("failed", 3, a)
    assert store.claim_next_task(a) is None  # neither it nor its dependent
    assert store.get_task(dependent.id).status == "open"
    with pytest.raises(Conflict, match="not claimed"):
        store.report_run(task.id, a, "completed")


@MOVES_CLOCK
def test_expired_lease_on_the_last_attempt_fails_the_task(
    store: Store, agents: list[RegisteredAgent], clock: FakeClock
) -> None:
    a = agents[0].id
    task = store.create_task("once", max_attempts=1)
    store.claim_next_task(a, lease_s=5)
    clock.advance(6)
    assert store.claim_next_task(a) is None
    assert store.get_task(task.id).status == "failed"
    assert [r.status for r in store.list_runs(task.id)] == ["expired"]


def test_revoking_an_agent_frees_its_claims(store: Store, agents: list[RegisteredAgent]) -> None:
    a, b = agents[0].id, agents[1].id
    task = store.create_task("t")
    store.claim_next_task(a, lease_s=3600)
    store.revoke_agent(a)
    with pytest.raises(Forbidden):
        store.claim_next_task(a)
    with pytest.raises(NotFound):
        store.claim_next_task("no-such-agent")
    claim = store.claim_next_task(b)
    assert claim.task_id == task.id and claim.attempt == 2  # type: ignore[union-attr]


def test_list_tasks_pages_with_an_opaque_cursor(store: Store, agents: list[RegisteredAgent]) -> None:
    ids = [store.create_task(f"task {i}").id for i in range(7)]
    store.claim_next_task(agents[0].id)
    seen, cursor, pages = [], None, 0
    while True:
        page = store.list_tasks(limit=3, cursor=cursor)
        seen += [t.id for t in page.tasks]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids and pages == 3
    assert [t.id for t in store.list_tasks(status="open").tasks] == ids[1:]
    assert [t.id for t in store.list_tasks(status="claimed").tasks] == ids[:1]
    page = store.list_tasks(status="open", limit=6)
    assert page.next_cursor is None and len(page.tasks) == 6
    for bad in [{"cursor": "garbage!"}, {"cursor": "dGFza3M6eA"}, {"limit": 0}, {"limit": 1001}, {"status": "done"}]:
        with pytest.raises(ValidationError):
            store.list_tasks(**bad)  # type: ignore[arg-type]
    assert page.to_dict()["tasks"][0]["title"] == "task 1"


def test_get_task_and_status_of_unknown_tasks(store: Store) -> None:
    for call in (store.get_task, store.task_status, store.list_artifacts, store.list_runs):
        with pytest.raises(NotFound, match="task 42 not found"):
            call(42)
    with pytest.raises(ValidationError):
        store.get_task("1")  # type: ignore[arg-type]


def test_artifacts_are_recorded_per_task(store: Store, agents: list[RegisteredAgent]) -> None:
    task = store.create_task("build")
    first = store.add_artifact(task.id, "file", "out/app.whl", {"size": 1024, "sha": "ab"}, added_by="maintainer:admin")
    claim = store.claim_next_task(agents[0].id)
    assert claim is not None
    second = store.add_artifact(task.id, "log", "logs/build.txt", agent_id=agents[0].id, attempt=claim.attempt)
    listed = store.list_artifacts(task.id)
    assert [a.kind for a in listed] == ["file", "log"]
    assert listed[0] == first and first.meta == {"sha": "ab", "size": 1024}
    # Who added each is recorded: a maintainer without an attempt, the claim holder with its attempt.
    assert (first.added_by, first.attempt) == ("maintainer:admin", None)
    assert (second.added_by, second.attempt) == (agents[0].id, claim.attempt)
    with pytest.raises(NotFound):
        store.add_artifact(999, "file", "x", added_by="maintainer:admin")
    with pytest.raises(ValidationError) as info:
        store.add_artifact(task.id, "", "", {"x": object()})
    assert set(info.value.fields) == {"kind", "path", "meta", "added_by"}
    with pytest.raises(ValidationError) as info:
        store.add_artifact(task.id, "log", "x", agent_id=agents[0].id, added_by="maintainer:admin")
    assert set(info.value.fields) == {"added_by"}
    assert store.stats()["artifacts_total"] == 2


@MOVES_CLOCK
def test_an_agent_adds_artifacts_only_under_the_current_claim(
    store: Store, clock: FakeClock, agents: list[RegisteredAgent]
) -> None:
    holder, other = agents[0].id, agents[1].id
    task = store.create_task("build")
    with pytest.raises(Conflict, match="not claimed"):
        store.add_artifact(task.id, "log", "a", agent_id=holder)
    claim = store.claim_next_task(holder, 10)
    assert claim is not None
    with pytest.raises(Conflict, match="another agent") as foreign:
        store.add_artifact(task.id, "log", "a", agent_id=other)
    assert foreign.value.data["task_id"] == task.id
    with pytest.raises(Conflict, match="stale"):
        store.add_artifact(task.id, "log", "a", agent_id=holder, attempt=claim.attempt + 1)
    clock.advance(11)
    with pytest.raises(Conflict, match="expired"):
        store.add_artifact(task.id, "log", "a", agent_id=holder, attempt=claim.attempt)
    # Nothing refused was written.
    assert store.list_artifacts(task.id) == [] and store.stats()["artifacts_total"] == 0


def test_stats_have_constant_keys(store: Store, agents: list[RegisteredAgent]) -> None:
    empty = store.stats()
    assert tuple(empty) == STATS_KEYS
    store.create_task("a")
    store.create_task("b")
    claim = store.claim_next_task(agents[0].id)
    store.report_run(claim.task_id, agents[0].id, "completed")  # type: ignore[union-attr]
    store.claim_next_task(agents[0].id)
    stats = store.stats()
    assert tuple(stats) == STATS_KEYS
    assert stats == {
        "agents_active": 2,
        "tasks_open": 0,
        "tasks_claimed": 1,
        "tasks_completed": 1,
        "tasks_failed": 0,
        "tasks_total": 2,
        "runs_total": 1,
        "artifacts_total": 0,
    }


def test_results_serialise_to_plain_json(store: Store, agents: list[RegisteredAgent]) -> None:
    import json

    task = store.create_task("t", depends_on=[], priority=3)
    claim = store.claim_next_task(agents[0].id)
    run = store.report_run(task.id, agents[0].id, "in_progress")
    for result in (
        task,
        claim,
        run,
        store.task_status(task.id),
        store.authenticate(agents[0].token),
        store.list_tasks(),
    ):
        json.dumps(result.to_dict())  # type: ignore[union-attr]
    assert claim.to_dict()["task"]["id"] == task.id  # type: ignore[union-attr]


def _plan(conn: sqlite3.Connection, sql: str, params: object) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


@pytest.mark.sqlite_only(reason="SQLite's query plan (PostgreSQL's: tests/store/test_store_postgres.py)")
def test_claim_query_reads_one_index_entry_without_scanning_or_sorting(
    store: Store, db: Database, agents: list[RegisteredAgent]
) -> None:
    conn = db.connection()
    with db.write_transaction() as tx:  # enough rows for the planner to have choices
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
            "INSERT INTO tasks (title, status, priority, created_at, updated_at, blocking_deps) "
            "SELECT 'bulk ' || i, CASE WHEN i % 3 = 0 THEN 'completed' ELSE 'open' END, "
            "i % 7, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', i % 2 FROM n"
        )
    for analysed in (False, True):  # statistics must not change the plan
        if analysed:
            conn.execute("ANALYZE")
        claim_plan = _plan(conn, CLAIM_SQL, {"agent_id": "a", "lease_expires_at": "x", "lease_s": 1.0, "now": "x"})
        probe_plan = _plan(conn, EXPIRED_LEASE_PROBE_SQL, ("x",))
        steps = claim_plan + probe_plan
        assert not any("TEMP B-TREE" in step for step in steps), steps
        scans = [step for step in steps if step.startswith("SCAN")]
        assert scans == ["SCAN tasks USING INDEX tasks_claim_order"], steps
        assert "SEARCH tasks USING INDEX tasks_lease (lease_expires_at<?)" in probe_plan
    assert store.claim_next_task(agents[0].id).task.priority == 6  # type: ignore[union-attr]


@MOVES_CLOCK
def test_a_report_without_attempt_is_refused_while_the_agent_held_an_expired_attempt(
    store: Store, agents: list[RegisteredAgent], clock: FakeClock
) -> None:
    """Issue 9 item 10: A claims, its lease runs out, A claims the same task again
    (attempt 2). A report without ``attempt`` may be the late report of attempt 1:
    it is refused, whatever its status, and changes nothing (an ``in_progress``
    would otherwise renew attempt 2's lease on behalf of attempt 1)."""
    a = agents[0].id
    task = store.create_task("claimed twice by one agent")
    first = store.claim_next_task(a, lease_s=1)
    assert first is not None and first.attempt == 1
    clock.advance(2)
    second = store.claim_next_task(a, lease_s=60)
    assert second is not None and (second.task_id, second.attempt) == (task.id, 2)
    before = store.get_task(task.id)

    for status in ("claimed", "in_progress", "completed", "failed"):
        with pytest.raises(Conflict, match="attempt is required") as info:
            store.report_run(task.id, a, status)
        assert info.value.data == {"task_id": task.id, "status": "claimed", "attempt": 2}
    assert store.get_task(task.id) == before
    assert [(r.attempt, r.status) for r in store.list_runs(task.id)] == [(1, "expired")]

    # With the attempt, reports work as they always did.
    with pytest.raises(Conflict, match="attempt 1 .* stale"):
        store.report_run(task.id, a, "completed", attempt=1)
    clock.advance(30)
    store.report_run(task.id, a, "in_progress", attempt=2)
    assert store.get_task(task.id).lease_expires_at > before.lease_expires_at  # type: ignore[operator]
    store.report_run(task.id, a, "completed", attempt=2)
    assert [(r.attempt, r.status) for r in store.list_runs(task.id)] == [
        (1, "expired"),
        (2, "in_progress"),
        (2, "completed"),
    ]


@MOVES_CLOCK
def test_an_artifact_without_attempt_follows_the_report_rule(
    store: Store, agents: list[RegisteredAgent], clock: FakeClock
) -> None:
    """Issue 9 item 10's sibling: an artifact is accepted under the same claim rule as a
    report, so an agent that held an expired attempt must name the attempt it adds to."""
    a = agents[0].id
    task = store.create_task("artifacts of a twice-claimed task")
    assert store.claim_next_task(a, lease_s=1) is not None
    clock.advance(2)
    second = store.claim_next_task(a, lease_s=60)
    assert second is not None and second.attempt == 2
    with pytest.raises(Conflict, match="attempt is required"):
        store.add_artifact(task.id, "log", "/tmp/late.log", agent_id=a)
    assert store.list_artifacts(task.id) == []
    added = store.add_artifact(task.id, "log", "/tmp/now.log", agent_id=a, attempt=2)
    assert (added.added_by, added.attempt) == (a, 2)


@MOVES_CLOCK
def test_a_report_without_attempt_works_for_an_agent_that_held_only_the_current_attempt(
    store: Store, agents: list[RegisteredAgent], clock: FakeClock
) -> None:
    """Clients that never send ``attempt`` keep working: B's attempt 2 follows A's
    expired attempt 1, and a failed attempt that A itself reported is not ambiguous."""
    a, b = agents[0].id, agents[1].id
    task = store.create_task("handed over")
    store.claim_next_task(a, lease_s=1)
    clock.advance(2)
    claim = store.claim_next_task(b, lease_s=60)
    assert claim is not None and (claim.task_id, claim.attempt) == (task.id, 2)
    store.report_run(task.id, b, "in_progress")
    store.report_run(task.id, b, "failed")  # back to open: attempt 2 of 3 failed
    again = store.claim_next_task(b, lease_s=60)
    assert again is not None and (again.task_id, again.attempt) == (task.id, 3)
    store.report_run(task.id, b, "completed")
    assert [(r.agent_id, r.attempt, r.status) for r in store.list_runs(task.id)] == [
        (a, 1, "expired"),
        (b, 2, "in_progress"),
        (b, 2, "failed"),
        (b, 3, "completed"),
    ]
