"""Run the service under uvicorn: Nagle's algorithm off in every worker, one send a response.

uvicorn's ``--workers N`` binds the listening socket itself with ``proto`` 0; the accepted
connections inherit it, and asyncio turns ``TCP_NODELAY`` on only for sockets that say
``IPPROTO_TCP``. Each keep-alive response then waits for the client's delayed ACK: about
40 ms per request on Linux, a 20-fold loss of throughput (uvicorn issue #3149). One worker is
not affected (asyncio builds that listener itself). :func:`run` hands uvicorn's supervisor a
socket created as TCP.

uvicorn writes a response's status line and headers, then its body: two sends, and with
Nagle's algorithm off two packets, each costing the server a system call and the client a
wake-up. :class:`HttpProtocol` joins the writes of one turn of the event loop into one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

APP_FACTORY = "idmanager.api.app:create_app"


def run(app: str = APP_FACTORY, *, workers: int = 1, **options: Any) -> None:
    """Serve ``app`` (an import string) with ``uvicorn.run``; TCP_NODELAY in every worker.

    Connections that send their headers too slowly are closed (:class:`HttpProtocol`).
    """
    import uvicorn

    with _tcp_listener(uvicorn.Config):
        uvicorn.run(app, workers=workers, http=HttpProtocol, **options)


@contextlib.contextmanager
def _tcp_listener(config_class: Any) -> Iterator[None]:
    """Make ``Config.bind_socket`` return its TCP socket with ``proto`` set, while inside."""
    original = config_class.bind_socket

    def bind_socket(config: Any) -> socket.socket:
        sock: socket.socket = original(config)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            # The same listening socket, described truthfully: workers rebuild it from this.
            tcp = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, sock.detach())
            tcp.set_inheritable(True)
            return tcp
        return sock

    config_class.bind_socket = bind_socket
    try:
        yield
    finally:
        config_class.bind_socket = original


def _header_timeout() -> float:
    from ..settings import Settings

    return Settings().header_timeout_s


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, sending a response in one write, and closing a connection
    whose request headers come too slowly.

    uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time
    a client takes to send one request's headers: 500 clients dribbling headers would hold
    500 connections forever. The bound is ``IDMANAGER_HEADER_TIMEOUT_S``. With plain
    uvicorn: ``--http idmanager.api.serving:HttpProtocol``.
    """

    header_timeout: float | None = None  # read from the settings by the first connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, transport))
        # Every write of the connection's responses goes through it (flow control stays on
        # the transport itself: it is the transport that pauses the protocol).
        self.transport = OneSendPerTurn(self.transport, self.loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if HttpProtocol.header_timeout is None:
            HttpProtocol.header_timeout = _header_timeout()
        self._header_timer = self.loop.call_later(HttpProtocol.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class OneSendPerTurn(asyncio.Transport):
    """A transport whose writes in one turn of the event loop go out together, in one send.

    A write is held until the next one, which goes out with it, or until the loop's next turn,
    whichever comes first: a response's head waits for its body, never for longer. Anything
    that ends the writing (close, EOF) sends what is held first; an abort drops it, as the
    transport drops its own buffer.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def flush(self) -> None:
        """Send what is held, if anything (not on a connection lost meanwhile)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        held = self._held
        return self._transport.get_write_buffer_size() + (0 if held is None else len(held))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()
