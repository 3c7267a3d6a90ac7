"""Fixtures: a real ``icn-mcp serve`` subprocess on a free port with a temporary database."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.server.serverproc import ServerProcess


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    """Makes servers (start them with ``.start()``); kills every one left at the end."""
    started: list[ServerProcess] = []

    class _Factory(ServerProcess):
        def start(self) -> ServerProcess:
            started.append(self)
            return super().start()

    yield _Factory
    for server in started:
        server.kill()


@pytest.fixture
def server(server_factory: type[ServerProcess], tmp_path: Path) -> ServerProcess:
    """A started server on a fresh database in ``tmp_path/var``."""
    return server_factory(tmp_path / "var").start()
