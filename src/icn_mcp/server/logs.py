"""Structured (JSON lines) logging for the server process, installed by its entry point.

Every record becomes one JSON object on stderr: ``ts``, ``level``, ``logger``, ``msg``
and, for request lines, the fields passed as ``extra={"fields": {...}}``.

The event loop only creates the record and appends it to a queue
(:class:`BackgroundLogHandler`); a writer thread wakes every ``POLL_S``, formats what
is queued and writes it in a few ``write`` calls. Formatting and writing a JSON line
per request on the loop cost about a tenth of the server's CPU under load, and waking
a thread per record cost several percent more (issue 14).
:func:`flush_logging` (called at the end of ``serve``, and at exit) writes whatever
is queued, so a clean shutdown loses no line; a kill -9 loses at most the lines of
the last ``POLL_S`` (about 50 ms).
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO

__all__ = ["JsonFormatter", "BackgroundLogHandler", "configure_logging", "flush_logging"]

#: How often the writer thread looks at the queue. It polls instead of blocking on
#: the queue, so that logging a record never has to wake a thread (a futex call and a
#: GIL hand-over per request): a line appears at most this late.
POLL_S = 0.05
#: Lines are written in chunks of at most this many bytes (the atomic size of a pipe
#: write), so that lines of several worker processes sharing stderr never interleave.
#: (``json.dumps`` escapes non-ASCII, so characters are bytes here.)
CHUNK_BYTES = 4096


class JsonFormatter(logging.Formatter):
    """One JSON object per record; exceptions as a single ``exc`` string field."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, separators=(",", ":"))


class BackgroundLogHandler(logging.Handler):
    """Queues records; a daemon thread formats them and writes them to ``stream`` in batches.

    ``emit`` takes no lock, formats nothing and wakes no thread, so the thread that
    logs (the event loop) pays only for the record itself. Records keep their order.
    ``flush`` waits until every record queued before it has been written.
    """

    def __init__(self, stream: IO[str], formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.stream = stream
        self._queue: queue.SimpleQueue[logging.LogRecord | threading.Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="icn-mcp-log-writer", daemon=True)
        self._thread.start()

    def createLock(self) -> None:  # noqa: N802 - logging's name
        self.lock = None  # the queue is the only shared state; it locks itself

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle would take the (absent) lock; filtering is all it adds.
        if self.filter(record):
            self._queue.put(record)
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        self._queue.put(record)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` seconds) until everything queued so far is written."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5.0)
        super().close()

    def _write_loop(self) -> None:
        get = self._queue.get_nowait
        while True:
            lines: list[str] = []
            events: list[threading.Event] = []
            stop = False
            while not stop:
                try:
                    item = get()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    if lines:  # what came before it is written before it is set
                        self._write(lines)
                        lines = []
                    events.append(item)
                else:
                    lines.append(self._format(item))
            if lines:
                self._write(lines)
            for event in events:
                event.set()
            if stop:
                return
            time.sleep(POLL_S)

    def _write(self, lines: list[str]) -> None:
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                if chunk and size + len(line) + 1 > CHUNK_BYTES:
                    self.stream.write("".join(chunk))
                    self.stream.flush()
                    chunk, size = [], 0
                chunk.append(line + "\n")
                size += len(line) + 1
            if chunk:
                self.stream.write("".join(chunk))
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the server down
            pass

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self.format(record)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the writer
            return json.dumps(
                {
                    "level": "ERROR",
                    "logger": "icn_mcp.server.logs",
                    "msg": f"could not format a log record of {record.name}: {exc!r}",
                }
            )


_handler: BackgroundLogHandler | None = None


def configure_logging(level: str | int, *, stream: IO[str] | None = None) -> None:
    """Send every log record to ``stream`` (default stderr) as JSON lines at ``level`` and above."""
    global _handler
    handler = BackgroundLogHandler(stream if stream is not None else sys.stderr, JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
        existing.close()
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler
    # The JSON lines name no thread or process: do not look them up for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # uvicorn's own error logger carries start-up and shutdown news; its access log is
    # replaced by ours (one line per request, without query strings).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def flush_logging() -> None:
    """Write every queued record now (the end of ``serve``, and at interpreter exit)."""
    if _handler is not None:
        _handler.flush()


atexit.register(flush_logging)
