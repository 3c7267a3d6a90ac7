"""Keyed in-process locks (threads and asyncio) and cross-process advisory leases."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest

from icn_mcp.db import Database, KeyedLocks, with_lock
from icn_mcp.db.timestamps import parse_ts
from icn_mcp.errors import DatabaseError, LockLost, LockTimeout
from tests.helpers import run_worker


def _unsafe_increment(box: list[int]) -> None:
    value = box[0]
    time.sleep(0)  # invite a thread switch between read and write
    box[0] = value + 1


def test_threads_are_serialised_per_key_and_keys_are_forgotten() -> None:
    locks = KeyedLocks()
    box = [0]

    def work() -> None:
        for _ in range(200):
            with locks("counter"):
                _unsafe_increment(box)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert box[0] == 1600
    assert len(locks) == 0  # no key left behind


def test_asyncio_tasks_are_serialised_without_blocking_the_loop() -> None:
    locks = KeyedLocks()
    box = [0]
    ticks = []

    async def work() -> None:
        for _ in range(50):
            async with locks("counter"):
                value = box[0]
                await asyncio.sleep(0)
                box[0] = value + 1

    async def ticker() -> None:
        for _ in range(20):
            ticks.append(1)
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(work() for _ in range(8)), ticker())

    asyncio.run(main())
    assert box[0] == 400
    assert len(ticks) == 20  # the loop kept running other tasks while they waited
    assert len(locks) == 0


def test_threads_and_coroutines_share_one_lock() -> None:
    locks = KeyedLocks()
    inside = []
    holder_ready = threading.Event()
    release_holder = threading.Event()

    def holder() -> None:
        with locks("k"):
            holder_ready.set()
            release_holder.wait()
            inside.append("thread")

    thread = threading.Thread(target=holder)
    thread.start()
    holder_ready.wait()

    async def main() -> None:
        waiter = asyncio.ensure_future(locks("k").__aenter__())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # waits for the thread, without a thread of its own
        release_holder.set()
        await waiter
        inside.append("task")
        locks.release("k")

    asyncio.run(main())
    thread.join()
    assert inside == ["thread", "task"]
    assert len(locks) == 0


def test_timeouts_raise_lock_timeout_and_leave_nothing_behind() -> None:
    locks = KeyedLocks()
    with locks("k"):
        with pytest.raises(LockTimeout, match="'k'"):
            result = []
            thread = threading.Thread(target=lambda: result.append(_try(locks)))
            thread.start()
            thread.join()
            raise result[0]

        async def main() -> None:
            async with locks("k", timeout=0.02):
                pass

        with pytest.raises(LockTimeout):
            asyncio.run(main())
    assert len(locks) == 0
    assert locks.waits == 2


def _try(locks: KeyedLocks) -> Exception:
    try:
        locks.acquire("k", timeout=0.02)
    except LockTimeout as exc:
        return exc
    return AssertionError("acquired a held lock")


def test_a_cancelled_waiter_never_strands_the_lock() -> None:
    locks = KeyedLocks()

    async def main() -> None:
        await locks.acquire_async("k")
        waiter = asyncio.ensure_future(locks.acquire_async("k"))
        await asyncio.sleep(0)
        locks.release("k")  # handed to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        async with locks("k", timeout=1):  # still acquirable
            pass

    asyncio.run(main())
    assert len(locks) == 0


def test_reentrant_use_is_an_error_not_a_deadlock() -> None:
    locks = KeyedLocks()
    with locks("k"):
        with pytest.raises(DatabaseError, match="not reentrant"):
            locks.acquire("k")
    with pytest.raises(DatabaseError, match="not held"):
        locks.release("k")


def _in_thread(fn) -> object:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except Exception as exc:  # handed back to the test
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


def _enter_and_leave(lock) -> str:
    with lock:
        return "entered"


def test_with_lock_is_process_wide_and_db_lock_per_database(db_path: Path) -> None:
    with with_lock("shared"):
        assert isinstance(_in_thread(lambda: _enter_and_leave(with_lock("shared", timeout=0.01))), LockTimeout)
    with Database(db_path) as db:
        with db.lock("shared"):
            # A different registry: the process-wide lock on the same key is free...
            assert _in_thread(lambda: _enter_and_leave(with_lock("shared", timeout=0.01))) == "entered"
            # ...while the database's own lock is taken.
            assert isinstance(_in_thread(lambda: _enter_and_leave(db.lock("shared", timeout=0.01))), LockTimeout)


# -- advisory locks ---------------------------------------------------------------


def test_advisory_lock_excludes_renews_and_releases(db_path: Path) -> None:
    with Database(db_path) as db:
        with db.advisory_lock("nightly", ttl_s=30) as lease:
            with pytest.raises(LockTimeout) as info:
                db.advisory_lock("nightly", ttl_s=30, wait_s=0.05)
            assert info.value.owner == lease.owner
            assert info.value.expires_at == lease.expires_at
            old_expiry = lease.expires_at
            assert lease.renew(60) > old_expiry
        assert db.connection().execute("SELECT count(*) FROM advisory_locks").fetchone()[0] == 0
        with db.advisory_lock("nightly", ttl_s=30):
            pass


def test_only_the_owner_releases_and_a_taken_over_lease_is_lost(db_path: Path) -> None:
    with Database(db_path) as db:
        first = db.advisory_lock("job", ttl_s=0.05)
        time.sleep(0.1)  # let the lease expire
        second = db.advisory_lock("job", ttl_s=30)
        with pytest.raises(LockLost):
            first.renew()
        assert first.release() is False  # not the owner any more: nothing deleted
        assert (
            db.connection().execute("SELECT owner FROM advisory_locks WHERE name = 'job'").fetchone()[0] == second.owner
        )
        assert second.release() is True


@pytest.mark.slow
def test_advisory_lock_across_processes_survives_kill_9_of_the_holder(db_path: Path) -> None:
    Database(db_path).close()
    # A lease long enough that the contender below starts inside it even on a loaded
    # machine (with 1 s, its start-up alone could outlast the lease), short enough
    # that the waiter after the kill gets the lock in seconds.
    holder = run_worker("lock_holder", db_path, "singleton", 6.0, 0, 600)
    line = holder.stdout.readline().split()
    assert line[0] == "acquired", holder.stderr.read()
    holder_owner = line[1]

    # A second process contends and times out, told who holds the lock.
    contender = run_worker("lock_holder", db_path, "singleton", 1.0, 0, 0)
    out, err = contender.communicate(timeout=60)
    assert contender.returncode == 3, err
    assert out.split() == ["timeout", holder_owner]

    with Database(db_path) as db:
        row = (
            db.connection().execute("SELECT owner, expires_at FROM advisory_locks WHERE name = 'singleton'").fetchone()
        )
        assert row[0] == holder_owner
        holder_expiry = parse_ts(row[1])

    holder.send_signal(signal.SIGKILL)  # dies holding the lock; its row stays
    holder.communicate(timeout=30)

    waiter = run_worker("lock_holder", db_path, "singleton", 5.0, 30, 0)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    status, owner, acquired_at = out.split()[:3]
    assert status == "acquired" and owner != holder_owner
    # It got the lock only after the dead holder's lease ended, never before.
    assert parse_ts(acquired_at) >= holder_expiry
    with Database(db_path) as db:
        assert db.connection().execute("SELECT count(*) FROM advisory_locks").fetchone()[0] == 0


def test_a_waiter_cancelled_just_before_release_does_not_free_someone_elses_lock() -> None:
    """A holds; B and C wait; B is cancelled and, before B's task runs again, A
    releases: the lock must pass to C and stay held by C alone."""
    locks = KeyedLocks()

    async def main() -> None:
        await locks.acquire_async("k")  # A
        b = asyncio.ensure_future(locks.acquire_async("k"))
        c = asyncio.ensure_future(locks.acquire_async("k"))
        await asyncio.sleep(0)  # both are queued
        b.cancel()  # cancels B's future at once; B's handler has not run yet
        locks.release("k")  # A releases: B is skipped, C is granted
        with pytest.raises(asyncio.CancelledError):
            await b
        await c
        assert locks.locked("k") and len(locks) == 1  # held by C, still known
        with pytest.raises(LockTimeout):
            async with locks("k", timeout=0.02):  # D must not get in beside C
                pass
        locks.release("k")  # C
        assert len(locks) == 0

    asyncio.run(main())


def _releasing_at(locker) -> float:
    """When the write_locker worker let go of the write lock (epoch seconds)."""
    word, at = locker.stdout.readline().split()
    assert word == "releasing"
    locker.communicate(timeout=30)
    return float(at)


def test_an_advisory_lease_that_waited_for_the_write_lock_runs_from_when_it_was_taken(db_path: Path) -> None:
    """Issue 9 item 11's sibling: the clock that sets a lease is read inside the
    transaction. While another process holds the write lock for 3 s, a lease of 1 s
    asked for now must not be granted already expired."""
    with Database(db_path) as db:
        locker = run_worker("write_locker", db_path, 3)
        assert locker.stdout.readline().strip() == "locked"
        lease = db.advisory_lock("after-a-wait", ttl_s=1)
        released_at = _releasing_at(locker)
        assert parse_ts(lease.expires_at).timestamp() > released_at
        assert parse_ts(lease.acquired_at).timestamp() > released_at

        long = db.advisory_lock("renewed-after-a-wait", ttl_s=600)
        locker = run_worker("write_locker", db_path, 3)
        assert locker.stdout.readline().strip() == "locked"
        expires_at = long.renew()
        released_at = _releasing_at(locker)
        assert parse_ts(expires_at).timestamp() >= released_at + 600
        assert long.expires_at == expires_at
