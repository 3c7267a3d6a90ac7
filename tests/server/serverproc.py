"""Helpers: a real ``icn-mcp serve`` subprocess on a free port with a temporary database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

#: Tokens of at least 16 characters (the store's minimum for maintainer tokens).
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
MAINTAINER_TOKEN = "maintainer-token-for-tests-0123"
START_TIMEOUT_S = 30.0


def server_env(db_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test server: its own database, no rate limits by default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    env.update(
        MCP_DB_DIR=str(db_dir),
        MCP_HOST="127.0.0.1",
        MCP_PORT="0",
        MCP_ADMIN_TOKEN=ADMIN_TOKEN,
        MCP_MAINTAINER_TOKENS=MAINTAINER_TOKEN,
        MCP_RATE_LIMIT_IP_PER_MIN="0",
        MCP_RATE_LIMIT_TOKEN_PER_MIN="0",
        MCP_LOG_LEVEL="INFO",
        MCP_SHUTDOWN_TIMEOUT_S="5",
    )
    env.update(extra)
    return env


class ServerProcess:
    """``icn-mcp serve`` as a child process; ``url`` once it accepts connections."""

    def __init__(self, db_dir: Path, *, args: tuple[str, ...] = (), prefix: tuple[str, ...] = (), **env: str) -> None:
        self.db_dir = db_dir
        self.args = args
        #: Runs the server through this, e.g. ``ip netns exec NS`` (which execs: same pid).
        self.prefix = prefix
        self.env = server_env(db_dir, **env)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stderr_lines: list[str] = []
        self._drain: threading.Thread | None = None

    def start(self) -> ServerProcess:
        self.stderr_lines = []
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "icn_mcp", "serve", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Drain stderr in the background so the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True)
        self._drain.start()
        ready = threading.Event()
        line: list[str] = []

        def read_announcement() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            line.append(self.proc.stdout.readline())
            ready.set()

        threading.Thread(target=read_announcement, daemon=True).start()
        if not ready.wait(START_TIMEOUT_S) or not line[0].startswith("serving "):
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}\n" + "".join(self.stderr_lines[-20:]))
        self.url = line[0].split()[1]
        return self

    def _drain_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for text in proc.stderr:
            self.stderr_lines.append(text)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        status = self.proc.wait(timeout)
        if self._drain is not None:
            self._drain.join(timeout)  # every line the process wrote is in stderr_lines
        return status

    def kill(self) -> None:
        """kill -9: no shutdown code runs at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
