"""One socket write per HTTP response instead of two.

uvicorn's httptools protocol writes a response's status line and headers when the
application sends ``http.response.start``, then the body at ``http.response.body``:
two ``send`` calls and, with Nagle off, two TCP segments for every small JSON answer.
The serving loop spent about 30% of its time in those writes (BENCHMARKS.md, issue
14). :class:`CoalescingHttpToolsProtocol` gives each connection's response cycle a
transport that holds a write while nothing is pending and sends it together with the
next one, or at the end of the event loop's current iteration, whichever comes first:
the headers go out with the body, and nothing waits longer than one loop iteration
(a streamed response's chunks still go out as they come). Order is kept: every write
of the connection passes through the one holder, and ``close`` sends what is held first.

Used through uvicorn's documented ``http=`` setting (a protocol class); without
httptools the server keeps uvicorn's own choice.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol", "CoalescingTransport"]


class CoalescingTransport:
    """A transport whose writes are held until the next write or the loop's next turn."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # The response cycles write through self.transport; flow control, peer
        # addresses and close keep the real transport behind it.
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
