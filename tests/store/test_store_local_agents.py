"""Local agents (serve --stdio): one per name, found again, never cleaned up, no token."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.errors import ValidationError
from icn_mcp.store import Store

from .store_helpers import FakeClock, ensure_local_at_barrier

CTX = multiprocessing.get_context("fork")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_path: Path, clock: FakeClock):
    with Database(db_path) as db:
        yield Store(db, clock=clock)


def test_the_same_local_agent_is_found_again_across_reopening(db_path: Path) -> None:
    with Database(db_path) as db:
        first = Store(db).ensure_local_agent("desk", "ops", "0.1.0")
    with Database(db_path) as db:
        again = Store(db).ensure_local_agent("desk", "planner", "0.2.0")
        assert again.id == first.id and again.kind == "planner" and again.version == "0.2.0"
        assert db.connection().execute("SELECT count(*) FROM agents").fetchone()[0] == 1
        assert db.connection().execute("SELECT count(*) FROM agent_tokens").fetchone()[0] == 0


def test_a_local_agent_works_tasks_and_does_not_close_the_bootstrap(store: Store) -> None:
    local = store.ensure_local_agent("desk", "ops")
    task = store.create_task("write the report")
    claim = store.claim_next_task(local.id)
    assert claim is not None and claim.task_id == task.id
    store.report_run(task.id, local.id, "completed", attempt=claim.attempt)
    # The first HTTP agent may still bootstrap: a local agent holds no token.
    assert store.register_agent("first", "planner").token
    assert store.stats()["agents_active"] == 2


def test_cleanup_never_removes_a_local_agent_but_revoke_retires_it(store: Store, clock: FakeClock) -> None:
    local = store.ensure_local_agent("desk", "ops")
    clock.advance(365 * 24 * 3600)
    store.cleanup_expired()
    assert store.ensure_local_agent("desk", "ops").id == local.id
    store.revoke_agent(local.id)
    assert store.ensure_local_agent("desk", "ops").id != local.id


def test_bad_name_or_kind_is_a_validation_error(store: Store) -> None:
    with pytest.raises(ValidationError) as info:
        store.ensure_local_agent("", "wizard")
    assert set(info.value.fields) == {"name", "kind"}


@pytest.mark.slow
def test_racing_processes_create_exactly_one_local_agent(db_path: Path, tmp_path: Path) -> None:
    Database(db_path).close()
    racers = 5
    barrier = CTX.Barrier(racers)
    outs = [tmp_path / f"local-{i}.json" for i in range(racers)]
    procs = [CTX.Process(target=ensure_local_at_barrier, args=(str(db_path), barrier, str(out))) for out in outs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    results = [json.loads(out.read_text()) for out in outs]
    assert [r for r in results if "error" in r] == []
    assert len({r["id"] for r in results}) == 1
