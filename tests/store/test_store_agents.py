"""Agents and tokens: registration and the bootstrap rule, authentication, refresh,
revocation, clean-up, maintainer tokens, and where raw tokens must never appear."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from icn_mcp.db import Database
from icn_mcp.errors import NotFound, Unauthorized, ValidationError
from icn_mcp.store import Store

from .store_helpers import ADMIN_TOKEN, MAINTAINER_TOKEN, MOVES_CLOCK, FakeClock

DAY = 24 * 60 * 60


def test_first_agent_registers_without_credentials_later_ones_need_one(store: Store) -> None:
    first = store.register_agent("worker-1", "planner", "1.0.0")
    assert first.kind == "planner" and first.version == "1.0.0"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", first.token)  # 32 random bytes, URL-safe

    with pytest.raises(Unauthorized, match="already registered"):
        store.register_agent("intruder", "ops")
    with pytest.raises(Unauthorized, match="unknown token"):
        store.register_agent("intruder", "ops", credential="not-a-token")

    by_agent = store.register_agent("worker-2", "reviewer", credential=first.token)
    by_maintainer = store.register_agent("worker-3", "ops", credential=MAINTAINER_TOKEN)
    by_admin = store.register_agent("worker-4", "architect", credential=ADMIN_TOKEN)
    ids = {first.id, by_agent.id, by_maintainer.id, by_admin.id}
    assert len(ids) == 4
    assert store.stats()["agents_active"] == 4


def test_registration_is_validated_with_every_bad_field_named(store: Store) -> None:
    with pytest.raises(ValidationError) as info:
        store.register_agent("bad name!", "wizard", "v 1")
    assert set(info.value.fields) == {"name", "kind", "version"}
    assert "planner, architect, reviewer, ops" in info.value.fields["kind"]
    for name in ["", "x" * 65, "-leading-dash", None, 7]:
        with pytest.raises(ValidationError) as info:
            store.register_agent(name, "planner")  # type: ignore[arg-type]
        assert set(info.value.fields) == {"name"}
    assert store.register_agent("x" * 64, "ops").name == "x" * 64


def test_allowed_kinds_come_from_the_store_settings(db: Database, clock: FakeClock) -> None:
    store = Store(db, agent_kinds=["builder"], clock=clock)
    with pytest.raises(ValidationError, match="one of builder"):
        store.register_agent("a", "planner")
    assert store.register_agent("a", "builder").kind == "builder"


@MOVES_CLOCK
def test_authenticate_refuses_missing_unknown_expired_and_revoked_tokens(store: Store, clock: FakeClock) -> None:
    agent = store.register_agent("worker", "planner")
    assert store.authenticate(agent.token).id == agent.id
    for token, reason in [(None, "missing"), ("", "missing"), ("x" * 600, "malformed"), ("nope", "unknown")]:
        with pytest.raises(Unauthorized, match=reason):
            store.authenticate(token)

    clock.advance(DAY - 1)
    assert store.authenticate(agent.token).id == agent.id
    clock.advance(1)
    with pytest.raises(Unauthorized, match="expired"):
        store.authenticate(agent.token)


@MOVES_CLOCK
def test_refresh_within_grace_replaces_the_token_and_refuses_the_old_one(store: Store, clock: FakeClock) -> None:
    agent = store.register_agent("worker", "planner")
    clock.advance(DAY + 6 * DAY)  # expired 6 days ago: inside the 7-day grace window
    refreshed = store.refresh_token(agent.token)
    assert refreshed.id == agent.id and refreshed.token != agent.token
    assert store.authenticate(refreshed.token).id == agent.id
    for use in (store.authenticate, store.refresh_token):
        with pytest.raises(Unauthorized, match="revoked"):
            use(agent.token)  # refreshed away: neither valid nor refreshable

    clock.advance(DAY + 7 * DAY)  # now beyond the grace window
    with pytest.raises(Unauthorized, match="grace"):
        store.refresh_token(refreshed.token)


def test_revoked_agents_tokens_never_work_again(store: Store) -> None:
    agent = store.register_agent("worker", "planner")
    other = store.register_agent("other", "ops", credential=agent.token)
    store.revoke_agent(agent.id)
    store.revoke_agent(agent.id)  # idempotent
    for use in (store.authenticate, store.refresh_token):
        with pytest.raises(Unauthorized, match="revoked"):
            use(agent.token)
    with pytest.raises(Unauthorized):
        store.register_agent("again", "ops", credential=agent.token)
    assert store.authenticate(other.token).id == other.id
    with pytest.raises(NotFound):
        store.revoke_agent("no-such-agent")


@MOVES_CLOCK
def test_bootstrap_never_reopens_once_an_agent_was_registered(store: Store, clock: FakeClock, db: Database) -> None:
    """Issue 9 item 14: when every token has lapsed (TTL plus grace), or was revoked,
    or cleaned up, nobody may register without a credential: the first registration is
    a fact of the database, not a count of active agents."""
    first = store.register_agent("worker", "planner")
    clock.advance(store.token_ttl_s + store.refresh_grace_s + 1)  # every token lapsed
    assert store.stats()["agents_active"] == 0
    with pytest.raises(Unauthorized, match="already registered"):
        store.register_agent("squatter", "ops")

    assert store.cleanup_expired() == 1  # the agent is retired, its token rows deleted
    assert db.connection().execute("SELECT count(*) FROM agent_tokens").fetchone()[0] == 0
    with pytest.raises(Unauthorized, match="already registered"):
        store.register_agent("squatter", "ops")
    assert db.connection().execute("SELECT count(*) FROM agents").fetchone()[0] == 1

    # A maintainer, or the operator (icn-mcp agent register), can always register.
    by_maintainer = store.register_agent("rescuer", "ops", credential=MAINTAINER_TOKEN)
    store.revoke_agent(by_maintainer.id)
    by_operator = store.register_agent("operator-made", "planner", operator=True)
    assert store.authenticate(by_operator.token).id == by_operator.id
    with pytest.raises(Unauthorized, match="already registered"):
        store.register_agent("squatter", "ops")
    assert first.id not in {by_maintainer.id, by_operator.id}


def test_the_operator_may_register_the_very_first_agent_and_that_closes_the_bootstrap(
    store: Store,
) -> None:
    made = store.register_agent("made-by-operator", "ops", operator=True)
    assert store.authenticate(made.token).name == "made-by-operator"
    with pytest.raises(Unauthorized, match="already registered"):
        store.register_agent("late-first", "planner")


def test_the_bootstrap_fact_survives_revocation_of_everyone_and_reopening(db_path: Path) -> None:
    with Database(db_path) as db:
        store = Store(db)
        agent = store.register_agent("only", "planner")
        store.revoke_agent(agent.id)
    with Database(db_path) as db:
        with pytest.raises(Unauthorized, match="already registered"):
            Store(db).register_agent("next", "planner")


@MOVES_CLOCK
def test_cleanup_expired_removes_agents_whose_tokens_can_never_be_used(
    store: Store, clock: FakeClock, db: Database
) -> None:
    stale = store.register_agent("stale", "planner")
    clock.advance(2 * DAY)
    fresh = store.register_agent("fresh", "ops", credential=MAINTAINER_TOKEN)
    refreshed = store.refresh_token(fresh.token)  # leaves one revoked token row behind
    assert store.cleanup_expired() == 0  # stale is expired but still refreshable

    clock.advance(7 * DAY)  # stale: expired 8 days ago; fresh's token: 6 days ago
    assert store.cleanup_expired() == 1
    assert store.cleanup_expired() == 0
    assert store.stats()["agents_active"] == 1
    with pytest.raises(Unauthorized):
        store.refresh_token(stale.token)
    assert store.refresh_token(refreshed.token).id == fresh.id
    rows = db.connection().execute("SELECT agent_id FROM agent_tokens").fetchall()
    assert [row["agent_id"] for row in rows] == [fresh.id, fresh.id]  # old one revoked


def test_maintainer_roles_compare_configured_tokens_only(store: Store) -> None:
    assert store.maintainer_role(ADMIN_TOKEN) == "admin"
    assert store.maintainer_role(MAINTAINER_TOKEN) == "maintainer"
    for token in [None, "", ADMIN_TOKEN[:-1], MAINTAINER_TOKEN + "x", "x" * 600]:
        assert store.maintainer_role(token) is None
    agent = store.register_agent("worker", "planner")
    assert store.maintainer_role(agent.token) is None
    assert ADMIN_TOKEN not in repr(store) and MAINTAINER_TOKEN not in repr(vars(store))


@pytest.mark.sqlite_only(reason="reads SQLite's file, WAL and backup bytes")
def test_raw_tokens_are_absent_from_database_wal_and_backup(store: Store, db: Database, tmp_path: Path) -> None:
    first = store.register_agent("worker", "planner")
    second = store.register_agent("second", "ops", credential=first.token)
    refreshed = store.refresh_token(second.token)
    raw_tokens = [first.token, second.token, refreshed.token, ADMIN_TOKEN, MAINTAINER_TOKEN]
    assert first.token not in repr(first)

    # icn_mcp.db.sqlite.backup is not part of this tree yet: a plain sqlite3 online backup
    # is the copy an operator would get.
    backup_path = tmp_path / "backup.sqlite"
    with sqlite3.connect(backup_path) as target:
        db.connection().backup(target)
    target.close()

    wal = Path(f"{db.path}-wal")
    files = {"database": db.path.read_bytes(), "wal": wal.read_bytes(), "backup": backup_path.read_bytes()}
    assert files["wal"], "the WAL should hold the recent writes"
    from icn_mcp.store.agents import hash_token

    for name, data in files.items():
        for token in raw_tokens:
            assert token.encode() not in data, f"raw token found in the {name}"
    # The hashes are there: we grepped the files that hold the tokens.
    assert hash_token(first.token).encode() in files["wal"] + files["database"]
    assert hash_token(first.token).encode() in files["backup"]


def test_racing_refreshes_of_one_token_yield_one_new_token(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    agent = store.register_agent("worker", "planner")

    def refresh(_: int) -> str:
        try:
            return store.refresh_token(agent.token).token
        except Unauthorized as exc:
            return exc.reason

    with ThreadPoolExecutor(max_workers=4) as pool:  # one connection per thread
        outcomes = list(pool.map(refresh, range(4)))
    winners = [o for o in outcomes if o not in ("token revoked",)]
    assert len(winners) == 1 and store.authenticate(winners[0]).id == agent.id


def test_a_refused_refresh_never_takes_the_write_lock(store: Store, db_path: Path) -> None:
    """The original agent SDK repeats a refused refresh without end (issue 8): each
    refusal must be a plain read, so a refresh loop cannot queue up behind writers
    or hold them up. Another connection holds the write lock throughout."""
    agent = store.register_agent("looper", "ops")
    store.refresh_token(agent.token)  # agent.token is now refreshed away
    with Database(db_path, busy_timeout_ms=50, retries=1) as quick:
        quick_store = Store(quick)
        holder = sqlite3.connect(db_path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            for token in (agent.token, "never-issued-" + "x" * 30):
                with pytest.raises(Unauthorized):  # not BusyError: no write lock was asked for
                    quick_store.refresh_token(token)
        finally:
            holder.execute("ROLLBACK")
            holder.close()


def test_databases_with_agents_from_before_the_bootstrap_table_stay_closed(tmp_path: Path) -> None:
    """Migration 0005 records the bootstrap of databases that had agents already;
    one with only a local agent (serve --stdio) stays open for its first agent."""
    from icn_mcp.db.sqlite.migrations import default_migrations_dir

    old = tmp_path / "migrations-0003"
    old.mkdir()
    for path in sorted(default_migrations_dir().glob("000[1-3]_*.sql")):
        (old / path.name).write_text(path.read_text())
    # Rows as the code before migration 0005 wrote them (a revoked agent, a local one).
    with Database(tmp_path / "used.sqlite", migrations_dir=old) as db:
        db.run_in_transaction(
            lambda c: c.execute(
                "INSERT INTO agents (id, name, kind, created_at, revoked_at) VALUES "
                "('agent-1', 'from-0.1', 'planner', '2026-01-01T00:00:00.000000Z', '2026-01-02T00:00:00.000000Z')"
            )
        )
    with Database(tmp_path / "local-only.sqlite", migrations_dir=old) as db:
        db.run_in_transaction(
            lambda c: c.execute(
                "INSERT INTO agents (id, name, kind, created_at, local) VALUES "
                "('local-1', 'desk', 'ops', '2026-01-01T00:00:00.000000Z', 1)"
            )
        )

    with Database(tmp_path / "used.sqlite") as db:
        with pytest.raises(Unauthorized, match="already registered"):
            Store(db).register_agent("squatter", "ops")
        row = db.connection().execute("SELECT first_agent_id FROM agent_bootstrap").fetchone()
        assert row["first_agent_id"] == "agent-1"
    with Database(tmp_path / "local-only.sqlite") as db:
        assert Store(db).register_agent("first", "planner").name == "first"
