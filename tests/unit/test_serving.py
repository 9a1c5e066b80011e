"""`idmanager serve --workers N` hands uvicorn a listener that says it is TCP (uvicorn #3149)."""

from __future__ import annotations

import socket

import uvicorn

from idmanager.api.serving import _tcp_listener


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
