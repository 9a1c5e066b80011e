"""A separate OS process that allocates IDs, for the multi-process tests.

Usage: ``python allocator.py URL PREFIX COUNT MODE`` (MODE: ``sync``, ``async``, ``cache``
or ``cache-stream``, which prints each ID as the block cache hands it out). It connects,
prints ``ready``, waits for a line on stdin so that all processes start together, then
allocates COUNT IDs, each in a transaction of its own that it commits, and prints one JSON
object: ``{"ids": [...], "errors": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import idmanager


def run_sync(url: str, prefix: str, count: int) -> tuple[list[str], list[str]]:
    engine = idmanager.create_engine(url)
    with engine.connect():
        pass  # connect before the start signal
    print("ready", flush=True)
    sys.stdin.readline()
    issued, errors = [], []
    for _ in range(count):
        try:
            with Session(engine) as session:
                issued.append(idmanager.IdGeneratorUtil.generate_id(prefix, session))
                session.commit()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    engine.dispose()
    return issued, errors


async def run_async(url: str, prefix: str, count: int) -> tuple[list[str], list[str]]:
    engine = idmanager.create_async_engine(url)
    async with engine.connect():
        pass
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    issued, errors = [], []
    for _ in range(count):
        try:
            async with AsyncSession(engine) as session:
                issued.append(await idmanager.IdGeneratorUtil.generate_id(prefix, session))
                await session.commit()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    await engine.dispose()
    return issued, errors


async def run_cache(url: str, prefix: str, count: int, stream: bool) -> tuple[list[str], list[str]]:
    """Allocate through a block cache; with ``stream``, print each ID as it is handed out."""
    engine = idmanager.create_async_engine(url)
    cache = idmanager.BlockCache(
        idmanager.connect(engine).run, initial_block=50, min_block=50, max_block=400
    )
    async with engine.connect():
        pass
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    issued, errors = [], []
    for _ in range(count):
        try:
            issued.append(await cache.generate_id(prefix))
            if stream:
                print(issued[-1], flush=True)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    await cache.close()
    await engine.dispose()
    return issued, errors


def main() -> None:
    url, prefix, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if mode == "async":
        issued, errors = asyncio.run(run_async(url, prefix, count))
    elif mode in ("cache", "cache-stream"):
        issued, errors = asyncio.run(run_cache(url, prefix, count, mode == "cache-stream"))
    else:
        issued, errors = run_sync(url, prefix, count)
    print(json.dumps({"ids": issued, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
