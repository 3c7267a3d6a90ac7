"""store/dashboard.py: agent activity and the task graph, on a real SQLite file (issue 13)."""

from __future__ import annotations

import pytest

from icn_mcp.errors import NotFound, ValidationError
from icn_mcp.store import Store
from icn_mcp.store.dashboard import agent_activity, task_graph

from .store_helpers import ADMIN_TOKEN, FakeClock

# store/dashboard.py's queries are SQLite's in this version (issue 10 item 4 remains).
pytestmark = pytest.mark.sqlite_only(reason="store/dashboard.py has no PostgreSQL queries yet")


def _register(store: Store, name: str, kind: str = "ops") -> str:
    return store.register_agent(name, kind, credential=ADMIN_TOKEN).id


def test_activity_counts_live_tokens_and_ignores_store_written_runs(store: Store, clock: FakeClock) -> None:
    ann = _register(store, "ann")
    gone = _register(store, "gone")
    store.revoke_agent(gone)
    task = store.create_task("t", max_attempts=2)
    claim = store.claim_next_task(ann, lease_s=10)
    assert claim is not None
    claimed_at = agent_activity(store.db, clock())
    ann_row = next(a for a in claimed_at if a["id"] == ann)
    assert (ann_row["tokens_active"], ann_row["tasks_held"]) == (1, [str(task.id)])
    assert ann_row["last_report_at"] is None and ann_row["last_claim_at"] is not None

    # The lease runs out and another agent's claim releases it: the store writes an
    # 'expired' run under ann's name, which is not a report by ann.
    clock.advance(60)
    bob = _register(store, "bob")
    assert store.claim_next_task(bob, lease_s=10) is not None
    rows = {a["name"]: a for a in agent_activity(store.db, clock())}
    assert rows["ann"]["last_report_at"] is None and rows["ann"]["tasks_held"] == []
    assert rows["bob"]["tasks_held"] == [str(task.id)]
    # Revoked agents are listed last, with no live token.
    assert [a["name"] for a in agent_activity(store.db, clock())][-1] == "gone"
    assert rows["gone"]["tokens_active"] == 0 and rows["gone"]["revoked_at"] is not None

    # Past the token lifetime no token is active any more.
    clock.advance(store.token_ttl_s + 1)
    assert all(a["tokens_active"] == 0 for a in agent_activity(store.db, clock()))


def test_open_work_too_large_is_counted_not_drawn(store: Store) -> None:
    for n in range(5):
        store.create_task(f"t{n}")
    small = task_graph(store.db, open_work_max=5)
    assert len(small["nodes"]) == 5 and not small["too_large"]
    large = task_graph(store.db, open_work_max=4)
    assert large["too_large"] and large["open_count"] == 5 and large["nodes"] == []


def test_neighbourhood_is_cut_at_max_nodes_and_says_so(store: Store) -> None:
    hub = store.create_task("hub")
    for n in range(10):
        store.create_task(f"leaf {n}", depends_on=[hub.id])
    graph = task_graph(store.db, hub.id, max_nodes=4)
    assert graph["truncated"] and len(graph["nodes"]) == 4
    assert all(edge["from"] == str(hub.id) for edge in graph["edges"]) and len(graph["edges"]) == 3
    whole = task_graph(store.db, hub.id)
    assert not whole["truncated"] and len(whole["nodes"]) == 11


def test_graph_refuses_unknown_tasks_and_bad_depths(store: Store) -> None:
    with pytest.raises(NotFound):
        task_graph(store.db, 42)
    for depth in (0, 6, "2", True):
        with pytest.raises(ValidationError):
            task_graph(store.db, None, depth=depth)  # type: ignore[arg-type]
