"""Run the service under uvicorn, with Nagle's algorithm off in every worker.

uvicorn's ``--workers N`` binds the listening socket itself with ``proto`` 0; the accepted
connections inherit it, and asyncio turns ``TCP_NODELAY`` on only for sockets that say
``IPPROTO_TCP``. Each keep-alive response then waits for the client's delayed ACK: about
40 ms per request on Linux, a 20-fold loss of throughput (uvicorn issue #3149). One worker is
not affected (asyncio builds that listener itself). :func:`run` hands uvicorn's supervisor a
socket created as TCP.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

APP_FACTORY = "idmanager.api.app:create_app"


def run(app: str = APP_FACTORY, *, workers: int = 1, **options: Any) -> None:
    """Serve ``app`` (an import string) with ``uvicorn.run``; TCP_NODELAY in every worker."""
    import uvicorn

    with _tcp_listener(uvicorn.Config):
        uvicorn.run(app, workers=workers, **options)


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
