"""/healthz/db and /metrics need no token and are never rate limited, so their database
part is computed at most once per MCP_HEALTH_CACHE_S, one computation shared by
concurrent requests (``server/cache.py``). Computations are counted, never timed."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

from icn_mcp.server.cache import SharedValue
from tests.server.serverproc import ServerProcess, bearer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Computation:
    """A compute function that counts its calls and can be held open."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate: anyio.Event | None = None
        self.fail: Exception | None = None

    async def __call__(self) -> int:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.calls


def test_concurrent_callers_share_one_computation_per_interval() -> None:
    clock, compute = FakeClock(), Computation()
    started: list[int] = []
    shared = SharedValue(compute, 2.0, clock=clock, on_compute=lambda: started.append(1))

    async def main() -> None:
        compute.gate = anyio.Event()
        results: list[int] = []

        async def get() -> None:
            results.append(await shared.get())

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(get)
            await anyio.wait_all_tasks_blocked()
            assert compute.calls == 1, "50 callers arriving together start one computation"
            compute.gate.set()
        assert results == [1] * 50
        compute.gate = None

        clock.now += 1.9
        assert [await shared.get() for _ in range(100)] == [1] * 100  # fresh: no computation
        assert compute.calls == 1
        clock.now += 0.2  # past the interval: the next caller refreshes the value
        assert await shared.get() == 2 and await shared.get() == 2
        assert compute.calls == 2 and len(started) == 2

    anyio.run(main)


def test_a_failed_computation_reaches_its_waiters_and_is_not_kept() -> None:
    compute = Computation()
    shared = SharedValue(compute, 60.0, clock=FakeClock())

    async def main() -> None:
        compute.gate, compute.fail = anyio.Event(), RuntimeError("database gone")
        errors: list[BaseException] = []

        async def get() -> None:
            try:
                await shared.get()
            except RuntimeError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(get)
            await anyio.wait_all_tasks_blocked()
            compute.gate.set()
        assert len(errors) == 10 and compute.calls == 1
        compute.gate, compute.fail = None, None
        assert await shared.get() == 2, "the failure was not kept"

    anyio.run(main)


def test_a_cancelled_leader_does_not_cancel_the_waiters() -> None:
    compute = Computation()
    shared = SharedValue(compute, 60.0, clock=FakeClock())

    async def main() -> None:
        compute.gate = anyio.Event()
        results: list[int] = []

        async def wait_for_value() -> None:
            results.append(await shared.get())

        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as leader:
                leader.start_soon(shared.get)
                await anyio.wait_all_tasks_blocked()
                outer.start_soon(wait_for_value)
                await anyio.wait_all_tasks_blocked()
                leader.cancel_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert compute.calls == 2, "the waiter started a computation of its own"
            compute.gate.set()
        assert results == [2]

    anyio.run(main)


def test_zero_interval_keeps_nothing() -> None:
    compute = Computation()
    shared = SharedValue(compute, 0.0, clock=FakeClock())

    async def main() -> None:
        assert [await shared.get() for _ in range(3)] == [1, 2, 3]

    anyio.run(main)
    with pytest.raises(ValueError):
        SharedValue(compute, -1.0)


# -- against a real server ---------------------------------------------------------


def _sample(text: str, series: str) -> float:
    match = re.search("^" + re.escape(series) + r" (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _computations(server: ServerProcess) -> dict[str, float]:
    """How often each expensive part ran, read from a /metrics scrape (which counts
    as one /metrics request itself)."""
    with server.client() as client:
        text = client.get("/metrics").text
    return {
        # The store call behind the table counts: timed by the transaction histogram.
        "database_info": _sample(text, 'icn_mcp_db_transaction_duration_seconds_count{operation="database_info"}'),
        "healthz_db": _sample(text, 'icn_mcp_health_cache_computations_total{part="healthz_db"}'),
        "metrics": _sample(text, 'icn_mcp_health_cache_computations_total{part="metrics"}'),
    }


def _task_count(health: dict[str, Any]) -> int:
    return next(t["count"] for t in health["database"]["tables"] if t["name"] == "tasks")


def test_rapid_health_and_metrics_requests_compute_once_per_interval(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "var", MCP_HEALTH_CACHE_S="600").start()
    with server.client() as client:
        token = client.post("/api/agent/register", json={"name": "a", "kind": "ops"}).json()["token"]
        first = client.get("/healthz/db").json()
        assert _task_count(first) == 0
        client.post("/api/task/create", json={"title": "t"}, headers=bearer(token))

    def probe(_: int) -> dict[str, Any]:
        with server.client() as client:
            health = client.get("/healthz/db")
            scrape = client.get("/metrics")
        assert health.status_code == 200 and scrape.status_code == 200
        return health.json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(probe, range(64)))
    # 65 /healthz/db and 65 /metrics requests: one computation of each.
    assert _computations(server) == {"database_info": 1, "healthz_db": 1, "metrics": 1}
    for health in answers:
        # The exact shape, and the counts as of the one computation (the task came later).
        assert set(health) == {"ok", "latency_ms", "database", "replication"} and health["ok"] is True
        assert health["replication"] == {"enabled": False}  # no MCP_REPLICA_URL (issue 12)
        assert health["database"] == first["database"]
        assert _task_count(health) == 0
        # The probe is live, not cached: every answer measured its own SELECT 1.
        assert isinstance(health["latency_ms"], float) and health["latency_ms"] >= 0
    assert len({health["latency_ms"] for health in answers}) > 1


def test_cached_health_and_metrics_refresh_after_the_interval(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "var", MCP_HEALTH_CACHE_S="0.5").start()
    with server.client() as client:
        token = client.post("/api/agent/register", json={"name": "a", "kind": "ops"}).json()["token"]
        assert _task_count(client.get("/healthz/db").json()) == 0
        assert 'icn_mcp_tasks{status="open"} 0.0' in client.get("/metrics").text
        client.post("/api/task/create", json={"title": "t"}, headers=bearer(token))
        time.sleep(0.6)  # past the interval: whatever the timing, the next request recomputes
        assert _task_count(client.get("/healthz/db").json()) == 1
        assert 'icn_mcp_tasks{status="open"} 1.0' in client.get("/metrics").text
    counts = _computations(server)
    assert counts["healthz_db"] == 2 and counts["database_info"] == 2
    assert counts["metrics"] >= 2
