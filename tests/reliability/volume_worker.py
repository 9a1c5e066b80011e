"""One OS process of the volume test: TASKS tasks, each running transactions in the caller's
mode that allocate a bulk of IDs and then commit, or roll back 30% of the time.

Usage: ``python volume_worker.py URL PREFIX IDS TASKS SEED``. It prints ``ready``, waits for a
line on stdin, and prints one JSON object: the committed ``(first, last)`` ordinal ranges,
the number of rolled-back transactions and the errors.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from sqlalchemy.ext.asyncio import AsyncSession

import idmanager
from idmanager import IdManagerRepositoryImpl, IdManagerService, parse_id

ROLLBACK_SHARE = 0.3
MAX_BULK = 60


async def main(url: str, prefix: str, ids: int, tasks: int, seed: int) -> None:
    # Tasks share a pool of 8 connections: 4 such processes stay well within the server's limit.
    engine = idmanager.create_async_engine(url, pool_size=8, max_overflow=0)
    async with engine.connect():
        pass
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    rng = random.Random(seed)
    committed: list[tuple[int, int]] = []
    errors: list[str] = []
    rolled_back = 0
    remaining = ids

    async def task() -> None:
        nonlocal remaining, rolled_back
        while remaining > 0:
            count = min(rng.randint(1, MAX_BULK), remaining)
            roll_back = rng.random() < ROLLBACK_SHARE
            if not roll_back:
                remaining -= count  # claimed before the await: the total is exact
            try:
                async with AsyncSession(engine) as session:
                    service = IdManagerService(IdManagerRepositoryImpl(session))
                    issued = await service.bulk_generate_ids(prefix, count)
                    if roll_back:
                        await session.rollback()
                        rolled_back += 1
                        continue
                    await session.commit()
                committed.append((parse_id(issued[0]).ordinal, parse_id(issued[-1]).ordinal))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return

    await asyncio.gather(*(task() for _ in range(tasks)))
    await engine.dispose()
    print(json.dumps({"committed": committed, "rolled_back": rolled_back, "errors": errors}))


if __name__ == "__main__":
    url, prefix, ids, tasks, seed = sys.argv[1:6]
    asyncio.run(main(url, prefix, int(ids), int(tasks), int(seed)))
