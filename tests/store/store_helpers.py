"""Helpers shared by the store tests, including the functions that run in child
processes (they must be importable by name, so they live here, not in a test file)."""

from __future__ import annotations

import json
import os
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from icn_mcp.db import Database
from icn_mcp.errors import Unauthorized
from icn_mcp.store import Store

ADMIN_TOKEN = "admin-" + "a" * 40
MAINTAINER_TOKEN = "maint-" + "m" * 40


#: A store test that moves the store's clock: SQLite only, since on PostgreSQL the
#: server's now() decides (its lease tests: tests/store/test_store_postgres.py).
MOVES_CLOCK = pytest.mark.sqlite_only(reason="moves the store's clock; on PostgreSQL the server's now() decides")


class FakeClock:
    """A clock the test moves by hand: ``clock()`` returns the current moment."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _write(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def open_database(target: str, **options: Any) -> Any:
    """The store's database at ``target``: a PostgreSQL URL or a SQLite file path."""
    if target.startswith(("postgresql://", "postgres://")):
        from icn_mcp.db.postgres.database import PostgresDatabase

        options.setdefault("pool_min", 1)
        options.setdefault("pool_max", 4)
        return PostgresDatabase(target, **options)
    return Database(target, **options)


def claim_until_done(db_path: str, agent_id: str, out: str, total: int, lease_s: float) -> None:
    """Claim and complete tasks until all ``total`` tasks are completed.

    When nothing is claimable but tasks remain (they wait for dependencies that
    other processes are completing), poll again shortly. Writes the claims made,
    or the traceback, to ``out`` as JSON.
    """
    claims: list[list[int]] = []
    try:
        with open_database(db_path) as db:
            store = Store(db, default_lease_s=lease_s)
            while True:
                claim = store.claim_next_task(agent_id)
                if claim is None:
                    if store.stats()["tasks_completed"] >= total:
                        break
                    time.sleep(0.002)
                    continue
                claims.append([claim.task_id, claim.attempt])
                store.report_run(claim.task_id, agent_id, "completed", attempt=claim.attempt)
        _write(Path(out), {"pid": os.getpid(), "claims": claims})
    except BaseException:
        _write(Path(out), {"pid": os.getpid(), "error": traceback.format_exc()})
        raise


def claim_forever(db_path: str, agent_id: str) -> None:
    """Claim and complete tasks as fast as possible, never stopping (killed by the test)."""
    with open_database(db_path) as db:
        store = Store(db, default_lease_s=60)
        while True:
            claim = store.claim_next_task(agent_id)
            if claim is None:
                time.sleep(0.001)
                continue
            store.report_run(claim.task_id, agent_id, "in_progress", attempt=claim.attempt)
            store.report_run(claim.task_id, agent_id, "completed", attempt=claim.attempt)


def register_at_barrier(db_path: str, name: str, barrier: Any, out: str) -> None:
    """Wait for every racer, then try a bootstrap registration (no credential)."""
    try:
        with open_database(db_path) as db:
            store = Store(db)
            barrier.wait(timeout=60)
            try:
                agent = store.register_agent(name, "planner")
                result: dict[str, Any] = {"ok": True, "id": agent.id}
            except Unauthorized as exc:
                result = {"ok": False, "reason": exc.reason}
        _write(Path(out), result)
    except BaseException:
        _write(Path(out), {"error": traceback.format_exc()})
        raise


def ensure_local_at_barrier(db_path: str, barrier: Any, out: str) -> None:
    """Wait for every racer, then ask for the local agent "desk"."""
    try:
        with open_database(db_path) as db:
            store = Store(db)
            barrier.wait(timeout=60)
            _write(Path(out), {"id": store.ensure_local_agent("desk", "ops").id})
    except BaseException:
        _write(Path(out), {"error": traceback.format_exc()})
        raise


def hold_write_lock(db_path: str, seconds: float, locked: str, released: str) -> None:
    """Take the database's write lock (BEGIN IMMEDIATE) with plain sqlite3, say so by
    creating ``locked``, hold it ``seconds``, then write the time (epoch seconds) just
    before releasing it to ``released``: nobody can commit a write before that time."""
    import sqlite3

    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        Path(locked).touch()
        time.sleep(seconds)
        _write(Path(released), {"released_at": time.time()})
        conn.execute("ROLLBACK")
    finally:
        conn.close()
