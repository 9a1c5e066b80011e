"""The block cache on real databases: tasks, threads, processes and SIGKILL, 0 duplicates."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading

import pytest

import idmanager
from idmanager import BlockCache, SyncBlockCache, connect, parse_id
from processes import reaped

from .test_concurrency import ALLOCATOR, last_value

pytestmark = pytest.mark.parametrize("backend", ["postgresql", "sqlite"])


def ordinals(issued: list[str]) -> list[int]:
    return [parse_id(text).ordinal for text in issued]


def assert_unique(issued: list[str]) -> None:
    duplicates = len(issued) - len(set(issued))
    assert duplicates == 0, f"{duplicates} duplicate IDs"


def start(url: str, prefix: str, count: int, mode: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(ALLOCATOR), url, prefix, str(count), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "ready", (line, process.stderr and process.stderr.read())
    except BaseException:
        with reaped([process]):
            raise
    return process


def go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


async def test_tasks_and_threads_share_nothing_twice(url: str, prefix: str) -> None:
    engine = idmanager.create_async_engine(url)
    cache = BlockCache(connect(engine).run, initial_block=100, min_block=100)

    async def worker() -> list[str]:
        return [await cache.generate_id(prefix) for _ in range(200)]

    task_ids = [i for r in await asyncio.gather(*(worker() for _ in range(32))) for i in r]
    await cache.close()
    await engine.dispose()

    sync_engine = idmanager.create_engine(url)
    sync_cache = SyncBlockCache(connect(sync_engine).run, initial_block=100)
    thread_ids: list[list[str]] = [[] for _ in range(8)]

    def thread_worker(out: list[str]) -> None:
        out.extend(sync_cache.generate_id(prefix) for _ in range(300))

    threads = [threading.Thread(target=thread_worker, args=(out,)) for out in thread_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sync_cache.close()
    sync_engine.dispose()

    issued = task_ids + [i for out in thread_ids for i in out]
    assert len(issued) == 32 * 200 + 8 * 300
    assert_unique(issued)
    for out in thread_ids:
        assert ordinals(out) == sorted(ordinals(out))
    # Clean closes handed back every unused tail: no gap at all in this run.
    assert sorted(ordinals(issued)) == list(range(1, len(issued) + 1))
    assert last_value(url, prefix) == len(issued)


def test_four_processes_unique_and_increasing_per_process(url: str, prefix: str) -> None:
    with reaped([]) as processes:
        processes.extend(start(url, prefix, 500, "cache") for _ in range(4))
        for process in processes:
            go(process)
        outputs = [process.communicate(timeout=120) for process in processes]
    results = []
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [e for r in results for e in r["errors"]] == []
    for result in results:
        assert ordinals(result["ids"]) == sorted(ordinals(result["ids"]))
    issued = [i for r in results for i in r["ids"]]
    assert len(issued) == 2000
    assert_unique(issued)
    # The hand-back never returns a range someone allocated after: the database is past
    # every ID that was handed out.
    assert last_value(url, prefix) >= max(ordinals(issued))


async def test_hand_back_only_when_nobody_allocated_since(url: str, prefix: str) -> None:
    engine = idmanager.create_async_engine(url)
    use_cases = connect(engine)
    cache = BlockCache(use_cases.run, initial_block=100, min_block=100)
    assert await cache.generate_id(prefix) == f"{prefix}-AAA0001"
    other = await use_cases.run(lambda s: s.generate_id(prefix))  # "another process"
    assert parse_id(other).ordinal > 100
    await cache.close()
    assert cache.stats.ids_handed_back == 0
    assert last_value(url, prefix) == parse_id(other).ordinal

    quiet = unique = prefix + "Q"
    cache = BlockCache(use_cases.run, initial_block=100, min_block=100)
    assert await cache.generate_id(quiet) == f"{unique}-AAA0001"
    await cache.close()
    assert cache.stats.ids_handed_back >= 99
    assert await use_cases.run(lambda s: s.generate_id(quiet)) == f"{unique}-AAA0002"
    await engine.dispose()


def test_sigkill_leaves_gaps_never_duplicates(url: str, prefix: str) -> None:
    with reaped([]) as processes:
        victim = start(url, prefix, 100_000, "cache-stream")
        processes.append(victim)
        go(victim)
        assert victim.stdout is not None
        seen = [victim.stdout.readline().strip() for _ in range(120)]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        survivor = start(url, prefix, 200, "cache")
        processes.append(survivor)
        go(survivor)
        out, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err
    after = json.loads(out.strip().splitlines()[-1])["ids"]
    issued = seen + after
    assert_unique(issued)
    # What the killed process had reserved is lost (a gap), never handed out again.
    assert min(ordinals(after)) > max(ordinals(seen))
