"""The block cache over an in-memory repository: order, double buffer, sizes, hand-back."""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc
from collections.abc import Callable

import pytest

from idmanager import (
    BlockCache,
    PrefixInactiveError,
    StorageError,
    SyncBlockCache,
    SyncIdManagerService,
)
from idmanager.application.block_cache import Operation

from .fakes import FakeRepository


def runners(repo: FakeRepository) -> tuple[Callable[[Operation], object], list[int]]:
    service = SyncIdManagerService(repo)
    fetched: list[int] = []

    def run(operation: Operation) -> object:
        result = operation(service)
        if hasattr(result, "size"):
            fetched.append(result.size)
        return result

    return run, fetched


async def test_ids_are_consecutive_and_blocks_are_fetched_ahead() -> None:
    repo = FakeRepository()
    run, fetched = runners(repo)

    async def arun(operation: Operation) -> object:
        await asyncio.sleep(0)
        return run(operation)

    cache = BlockCache(arun, initial_block=10, min_block=10, max_block=40)
    ids = [await cache.generate_id("CUS") for _ in range(100)]
    assert ids == [f"CUS-AAA{n:04d}" for n in range(1, 101)]
    # Blocks double while they last less than grow_below, up to max_block.
    assert fetched[:3] == [10, 20, 40] and set(fetched[3:]) == {40}
    # Double buffer: a block was reserved before the previous one ran out.
    assert repo.rows[("", "CUS")].last_value > 100
    await cache.close()
    assert repo.rows[("", "CUS")].last_value == 100
    assert cache.stats.ids_lost == 0
    assert cache.stats.ids_handed_back == cache.stats.ids_fetched - 100


async def test_concurrent_tasks_get_distinct_ids() -> None:
    repo = FakeRepository()
    run, _ = runners(repo)

    async def arun(operation: Operation) -> object:
        await asyncio.sleep(0.001)
        return run(operation)

    cache = BlockCache(arun, initial_block=7, min_block=7, max_block=7)

    async def worker() -> list[str]:
        return [await cache.generate_id("INV") for _ in range(50)]

    results = await asyncio.gather(*(worker() for _ in range(20)))
    ids = [i for r in results for i in r]
    assert len(ids) == len(set(ids)) == 1000
    await cache.close()
    # No gap either: every ID of 1 … 1000 was handed out, the unused tail handed back.
    assert sorted(ids) == [f"INV-AAA{n:04d}" for n in range(1, 1001)]
    assert repo.rows[("", "INV")].last_value == 1000


async def test_hand_back_is_refused_when_someone_allocated_after() -> None:
    repo = FakeRepository()
    run, _ = runners(repo)

    async def arun(operation: Operation) -> object:
        return run(operation)

    cache = BlockCache(arun, initial_block=100)
    await cache.generate_id("REC")
    SyncIdManagerService(repo).generate_id("REC")  # another process, after our block
    await cache.close()
    assert repo.rows[("", "REC")].last_value == 101
    assert cache.stats.ids_handed_back == 0
    assert cache.stats.ids_lost == 99


async def test_errors_reach_the_caller_and_the_cache_recovers() -> None:
    repo = FakeRepository()
    run, _ = runners(repo)

    async def arun(operation: Operation) -> object:
        return run(operation)

    service = SyncIdManagerService(repo)
    service.generate_id("VEN")
    service.deactivate_prefix("VEN")
    cache = BlockCache(arun, initial_block=5, min_block=5)
    with pytest.raises(PrefixInactiveError):
        await cache.generate_id("VEN")
    service.activate_prefix("VEN")
    assert await cache.generate_id("VEN") == "VEN-AAA0002"
    await cache.close()
    with pytest.raises(RuntimeError, match="closed"):
        await cache.generate_id("VEN")


@pytest.mark.parametrize("threaded", [False, True], ids=["async", "sync"])
async def test_a_failed_fetch_ahead_costs_no_id_already_held(threaded: bool) -> None:
    """The database goes away after the first block: the IDs that block holds are still
    handed out, by both caches; the caller who finds none left gets the error."""
    repo = FakeRepository()
    run, _ = runners(repo)
    calls = [0]

    def first_block_only(operation: Operation) -> object:
        calls[0] += 1
        if calls[0] > 1:
            raise StorageError("Database unavailable: gone")
        return run(operation)

    async def arun(operation: Operation) -> object:
        return first_block_only(operation)

    got: list[str] = []
    if threaded:
        cache = SyncBlockCache(first_block_only, initial_block=4, min_block=4)
        with pytest.raises(StorageError):
            while True:
                got.append(cache.generate_id("CUS"))
    else:
        acache = BlockCache(arun, initial_block=4, min_block=4)
        with pytest.raises(StorageError):
            while True:
                got.append(await acache.generate_id("CUS"))
    assert got == [f"CUS-AAA{n:04d}" for n in range(1, 5)]


def test_threads_get_distinct_increasing_ids() -> None:
    repo = FakeRepository()
    run, _ = runners(repo)
    lock = threading.Lock()

    def locked_run(operation: Operation) -> object:
        with lock:  # the fake is not thread-safe; a database is
            return run(operation)

    cache = SyncBlockCache(locked_run, initial_block=16, min_block=16, max_block=64)
    results: list[list[str]] = [[] for _ in range(8)]

    def worker(out: list[str]) -> None:
        out.extend(cache.generate_id("PKG") for _ in range(500))

    threads = [threading.Thread(target=worker, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for r in results for i in r]
    assert len(ids) == len(set(ids)) == 4000
    for out in results:
        assert out == sorted(out)  # increasing per thread (and per process)
    cache.close()
    assert repo.rows[("", "PKG")].last_value == 4000


async def test_period_templates_resolve_from_the_date() -> None:
    repo = FakeRepository()
    run, _ = runners(repo)

    async def arun(operation: Operation) -> object:
        return run(operation)

    from datetime import date

    cache = BlockCache(arun, initial_block=10, min_block=10)
    assert await cache.generate_id("INV{YYYY}", on=date(2026, 12, 31)) == "INV2026-AAA0001"
    assert await cache.generate_id("INV{YYYY}", on=date(2027, 1, 1)) == "INV2027-AAA0001"
    assert await cache.generate_id("INV{YYYY}", on=date(2026, 6, 1)) == "INV2026-AAA0002"
    await cache.close()
    assert repo.rows[("", "INV2026")].last_value == 2


@pytest.mark.parametrize("threaded", [False, True])
async def test_bulks_across_chunks_and_blocks_are_consecutive(threaded: bool) -> None:
    repo = FakeRepository()
    run, fetched = runners(repo)

    async def arun(operation: Operation) -> object:
        return run(operation)

    options = {"initial_block": 1000, "min_block": 1000, "max_block": 1000}
    sync_cache = SyncBlockCache(run, **options)
    async_cache = BlockCache(arun, **options)
    got: list[str] = []
    for count in (1, 500, 3, 700, 1, 1500):  # past chunks of CHUNK, and past whole blocks
        if threaded:
            got += sync_cache.bulk_generate_ids("BLK", count)
        else:
            got += await async_cache.bulk_generate_ids("BLK", count)
    assert got == [f"BLK-AAA{n:04d}" for n in range(1, 2706)]
    assert len(fetched) >= 3
    sync_cache.close()
    await async_cache.close()
    assert repo.rows[("", "BLK")].last_value == 2705


def test_a_held_prefix_costs_a_chunk_of_strings_not_its_block() -> None:
    """10,000 hot prefixes once took 700 MiB: each held its first block of 1,000 IDs formatted."""
    repo = FakeRepository()
    run, _ = runners(repo)
    cache = SyncBlockCache(run, initial_block=5000, min_block=5000, max_block=5000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(500):
            cache.generate_id(f"MEM{n}")
        gc.collect()
        held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    per_prefix = held / 500
    # A block of 5,000 formatted at once is about 350 KB; a chunk of 128 IDs about 9 KB.
    assert per_prefix < 30_000, f"{per_prefix:,.0f} bytes per held prefix"
    cache.close()
