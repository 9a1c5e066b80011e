"""A small HTTP/1.1 load generator, used by `make bench` only when ``wrk`` is not installed.

``python bench/load.py URL CONNECTIONS SECONDS [HEADER ...]`` keeps CONNECTIONS keep-alive
connections busy with ``POST URL`` for SECONDS and prints ``{"requests", "seconds",
"errors"}`` as JSON. Raw asyncio streams and a prebuilt request, not an HTTP client library:
the point is to cost the server's CPU as little as possible.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def connection(host: str, port: int, request: bytes, stop: float, out: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop:
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            out[0 if status.split(b" ", 2)[1][:1] == b"2" else 1] += 1
    finally:
        writer.close()


async def main(url: str, connections: int, seconds: float, headers: list[str]) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Length: 0", *headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    out = [0, 0]
    start = time.perf_counter()
    stop = start + seconds
    await asyncio.gather(*(connection(host, port, request, stop, out) for _ in range(connections)))
    elapsed = time.perf_counter() - start
    print(json.dumps({"requests": out[0], "seconds": elapsed, "errors": out[1]}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]))
