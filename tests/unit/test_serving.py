"""`idmanager serve`: a listener that says it is TCP (uvicorn #3149), a response in one send."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from idmanager.api.serving import HttpProtocol, OneSendPerTurn, _tcp_listener


def test_the_listener_uvicorn_binds_is_tcp_so_workers_turn_nagle_off() -> None:
    config = uvicorn.Config("idmanager.api.app:create_app", host="127.0.0.1", port=0)
    with _tcp_listener(uvicorn.Config):
        sock = config.bind_socket()
    try:
        # asyncio sets TCP_NODELAY on accepted connections only when the listener's proto
        # is IPPROTO_TCP; uvicorn's own bind leaves it 0.
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


# A response in one send: uvicorn's protocol, with ours on top, over a transport that records.


class Recorder(asyncio.Transport):
    """A connection's transport that records what is written to it, and when it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


# What the app's /later waits for before it sends its body.
LATER: dict[str, asyncio.Event] = {}


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with its request's body, or the path; on /later, a body streamed once the test
    lets it."""
    body = b""
    more = scope["type"] == "http" and scope["method"] == "POST"
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    answer = body or scope["path"].encode()
    length = [(b"content-length", str(len(answer)).encode())]
    later = scope["path"] == "/later"
    await send({"type": "http.response.start", "status": 200, "headers": [] if later else length})
    if later:
        await LATER["body"].wait()  # the first chunk is a while coming: the head goes first
    await send({"type": "http.response.body", "body": answer})


async def connected(transport: Recorder) -> HttpProtocol:
    HttpProtocol.header_timeout = 10.0
    config = uvicorn.Config(hello, lifespan="off", proxy_headers=False)
    config.load()
    protocol = HttpProtocol(config, ServerState(), app_state={})
    protocol.connection_made(transport)
    return protocol


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_response_head_and_body_go_out_in_one_write() -> None:
    transport = Recorder()
    protocol = await connected(transport)
    for path in (b"/one", b"/two"):  # keep-alive: each response in one write
        protocol.data_received(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await turns()
        assert transport.writes[-1].startswith(b"HTTP/1.1 200 OK\r\n")
        assert transport.writes[-1].endswith(b"\r\n\r\n" + path)
    assert len(transport.writes) == 2
    protocol.connection_lost(None)


async def test_a_head_waits_for_its_body_one_turn_at_most() -> None:
    transport = Recorder()
    protocol = await connected(transport)
    LATER["body"] = asyncio.Event()
    protocol.data_received(b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n")
    await turns()
    # The body is not ready; the head is out already.
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in transport.writes[0]
    LATER["body"].set()
    await turns()
    assert b"/later" in b"".join(transport.writes[1:])
    protocol.connection_lost(None)


async def test_100_continue_is_sent_before_the_body_is_awaited() -> None:
    transport = Recorder()
    protocol = await connected(transport)
    protocol.data_received(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    await turns()
    # The client sends its body only once it has this: it must not be held back.
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    protocol.data_received(b"hello")
    await turns()
    assert len(transport.writes) == 2
    assert transport.writes[1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[1].endswith(b"\r\n\r\nhello")
    protocol.connection_lost(None)


async def test_what_is_held_is_written_before_the_connection_closes() -> None:
    transport = Recorder()
    protocol = await connected(transport)
    protocol.data_received(b"HEAD /gone HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await turns()
    # A HEAD response is its head alone: written, then the connection closed.
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.closed


async def test_nothing_is_written_to_a_connection_lost_meanwhile() -> None:
    transport = Recorder()
    loop = asyncio.get_running_loop()
    one = OneSendPerTurn(transport, loop)
    one.write(b"head")
    assert one.get_write_buffer_size() == 4  # held, counted as the transport's buffer
    transport.closed = True  # the peer went away before the loop's next turn
    await turns()
    assert transport.writes == []
    transport.closed = False
    one.write(b"head")
    one.abort()  # an abort drops what is held, as the transport drops its buffer
    await turns()
    assert transport.writes == []
