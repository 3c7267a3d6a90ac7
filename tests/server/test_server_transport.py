"""server/transport.py: each HTTP response in one socket write, nothing reordered or
held longer than one turn of the event loop. The transport below is the socket's
stand-in (it records what would be sent); the whole server suite runs through the
real one."""

from __future__ import annotations

import asyncio
import socket

from icn_mcp.server.transport import CoalescingTransport


class _Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_headers_and_body_go_out_in_one_write() -> None:
    async def run() -> list[bytes]:
        recorder = _Recorder()
        transport = CoalescingTransport(recorder, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert recorder.writes == []  # held for the body
        transport.write(b"{}")
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        await asyncio.sleep(0)  # the flush scheduled for the headers finds nothing held
        return recorder.writes

    assert asyncio.run(run()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


def test_a_lone_write_goes_out_at_the_next_turn_of_the_loop_in_order() -> None:
    async def run() -> list[bytes]:
        recorder = _Recorder()
        transport = CoalescingTransport(recorder, asyncio.get_running_loop())
        transport.write(b"headers;")
        await asyncio.sleep(0)
        assert recorder.writes == [b"headers;"]  # a streamed response is not held up
        transport.write(b"chunk 1;")
        transport.write(b"chunk 2;")
        transport.write(b"chunk 3;")
        await asyncio.sleep(0)
        return recorder.writes

    assert b"".join(asyncio.run(run())) == b"headers;chunk 1;chunk 2;chunk 3;"


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def run() -> tuple[_Recorder, _Recorder]:
        loop = asyncio.get_running_loop()
        closing, aborting = _Recorder(), _Recorder()
        one, two = CoalescingTransport(closing, loop), CoalescingTransport(aborting, loop)
        one.write(b"400 Bad Request")
        one.close()
        two.write(b"partial")
        two.abort()
        await asyncio.sleep(0)
        return closing, aborting

    closing, aborting = asyncio.run(run())
    assert (closing.writes, closing.closed) == ([b"400 Bad Request"], True)
    assert (aborting.writes, aborting.aborted) == ([], True)


def test_everything_else_is_the_real_transport() -> None:
    async def run() -> object:
        transport = CoalescingTransport(_Recorder(), asyncio.get_running_loop())
        return transport.get_extra_info("peername")

    assert asyncio.run(run()) == ("127.0.0.1", 1)


def test_a_real_server_answers_keep_alive_requests_whole(server) -> None:  # noqa: ANN001 - fixture
    """Many requests on one keep-alive connection: each answer complete, in order."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        conn.sendall(request * 20)
        received = b""
        while received.count(b'{"ok":true}') < 20:
            chunk = conn.recv(65536)
            assert chunk, f"connection closed after {received.count(b'HTTP/1.1 200')} answers"
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 20
