"""The parts of issue 14 that need no server process: the background log writer, one
write at a time per process in ``Hub.call``, and cached metric children."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import signal
import threading
from pathlib import Path

import anyio
import pytest

from icn_mcp.config import Settings
from icn_mcp.server.hub import WRITE_OPERATIONS, Hub
from icn_mcp.server.logs import BackgroundLogHandler, JsonFormatter
from icn_mcp.server.metrics import CachedLabels
from tests.server.serverproc import ServerProcess


class _SlowStream(io.StringIO):
    """Counts writes; slow enough that records pile up into batches."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_background_handler_writes_every_record_once_in_order_after_flush() -> None:
    stream = _SlowStream()
    handler = BackgroundLogHandler(stream, JsonFormatter())
    logger = logging.getLogger("icn_mcp.test.background")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        threads = [
            threading.Thread(
                target=lambda t=t: [logger.info("request", extra={"fields": {"t": t, "n": n}}) for n in range(500)]
            )
            for t in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        handler.flush()
        lines = stream.getvalue().splitlines()
        records = [json.loads(line) for line in lines]  # whole lines only
        assert len(records) == 2000
        for t in range(4):
            assert [r["n"] for r in records if r["t"] == t] == list(range(500)), "order kept per thread"
        assert stream.writes < 2000, "written in batches, not a write per record"
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
        logger.info("last")
    finally:
        logger.removeHandler(handler)
        handler.close()  # close writes what is queued
    tail = [json.loads(line) for line in stream.getvalue().splitlines()[-2:]]
    assert tail[0]["msg"] == "failed" and "ValueError: boom" in tail[0]["exc"]
    assert tail[1]["msg"] == "last"


def test_background_handler_survives_a_record_that_cannot_be_formatted() -> None:
    stream = io.StringIO()
    handler = BackgroundLogHandler(stream, JsonFormatter())
    bad = logging.LogRecord("icn_mcp.x", logging.INFO, __file__, 1, "%d", ("not a number",), None)
    handler.handle(bad)
    handler.handle(logging.LogRecord("icn_mcp.x", logging.INFO, __file__, 1, "fine", (), None))
    handler.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "could not format" in lines[0]["msg"] and lines[1]["msg"] == "fine"


def _hub(tmp_path: Path) -> Hub:
    return Hub(Settings.from_env({"MCP_DB_DIR": str(tmp_path / "var")}))


def test_writes_run_one_at_a_time_per_process_and_reads_do_not_wait(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    active = 0
    most = 0
    lock = threading.Lock()

    def write() -> None:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        threading.Event().wait(0.05)
        with lock:
            active -= 1

    readers = threading.Barrier(3)

    def read() -> None:
        readers.wait(timeout=30)  # passes only if three reads run at the same time

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(hub.call, "claim_next_task", write)
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(hub.call, "task_status", read)

    try:
        anyio.run(main)
    finally:
        hub.close()
    assert most == 1, "two writes of one process ran at once"
    assert {"claim_next_task", "report_run", "create_task", "claim_task", "add_artifact"} <= WRITE_OPERATIONS


def test_cached_labels_give_the_metrics_own_children() -> None:
    from prometheus_client import CollectorRegistry, Counter

    counter = Counter("x", "x", ["a", "b"], registry=CollectorRegistry())
    cached = CachedLabels(counter)
    cached.labels("1", "2").inc()
    cached.labels("1", "2").inc()
    assert cached.labels("1", "2") is counter.labels("1", "2")
    assert counter.labels("1", "2")._value.get() == 2
    assert cached._name == counter._name  # everything else is the metric's


@pytest.mark.slow
def test_invented_methods_share_one_metrics_label(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    server = server_factory(tmp_path / "var").start()
    with server.client() as client:
        for method in ("PROPFIND", "PURGE", "MKCOL"):
            response = client.request(method, "/api/task/list")
            assert (response.status_code, response.json()) == (405, {"ok": False, "error": "method_not_allowed"})
        metrics = client.get("/metrics").text
    server.stop()
    assert 'icn_mcp_http_requests_total{method="OTHER",route="/api/task/list",status="405"} 3.0' in metrics
    assert "PROPFIND" not in metrics and "PURGE" not in metrics


@pytest.mark.slow
def test_sigterm_writes_every_queued_log_line_before_the_process_ends(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "var").start()
    with server.client() as client:
        for _ in range(50):
            assert client.get("/healthz").status_code == 200
    server.stop(signal.SIGTERM)
    lines = [json.loads(line) for line in server.stderr_lines if line.strip()]
    assert len([r for r in lines if r["logger"] == "icn_mcp.server.access" and r["route"] == "/healthz"]) == 50
    # The lines logged last, just before uvicorn ends the process by the signal.
    messages = [r["msg"] for r in lines]
    assert any(m.startswith("database ") and m.endswith(" closed") for m in messages)
    assert messages[-1].startswith("Finished server process")


def test_a_cancelled_caller_waits_for_its_running_call_and_context_goes_along(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who")
    started = threading.Event()
    release = threading.Event()
    finished: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(30)
        finished.append(who.get())

    async def main() -> None:
        who.set("agent-7")
        assert await hub.call("task_status", who.get) == "agent-7"
        task = asyncio.create_task(hub.call("report_run", slow))
        await asyncio.to_thread(started.wait, 30)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done(), "the caller gave up while its store call was still running"
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == ["agent-7"]

    try:
        asyncio.run(main())
    finally:
        hub.close()
