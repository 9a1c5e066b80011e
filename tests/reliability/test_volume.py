"""Volume: 4 processes × 16 tasks, 100,000 committed IDs, 30% of transactions rolled back.

Caller's-transaction mode: each transaction allocates a bulk (one statement), then commits
or rolls back. The committed IDs must be exactly ordinals 1..100,000: no duplicate, and no gap
even though thousands of transactions rolled their numbers back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_concurrency import last_value

WORKER = Path(__file__).with_name("volume_worker.py")
PROCESSES, TASKS, TOTAL = 4, 16, 100_000


@pytest.mark.parametrize("backend", ["postgresql"])
def test_100k_ids_4_processes_16_tasks_30_percent_rollbacks(url: str, prefix: str) -> None:
    share = TOTAL // PROCESSES
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), url, prefix, str(share), str(TASKS), str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(PROCESSES)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready", process.stderr
        started = time.perf_counter()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=240) for process in processes]
        elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    results = []
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [e for r in results for e in r["errors"]] == []
    ranges = sorted(tuple(r) for result in results for r in result["committed"])
    rolled_back = sum(result["rolled_back"] for result in results)
    issued = sum(last - first + 1 for first, last in ranges)
    # Contiguous ranges that touch end to start: 1..TOTAL, no overlap (duplicate), no hole.
    expected_first = 1
    for first, last in ranges:
        assert first == expected_first, f"gap or duplicate at ordinal {expected_first}"
        expected_first = last + 1
    assert issued == TOTAL and expected_first == TOTAL + 1
    assert last_value(url, prefix) == TOTAL
    transactions = len(ranges) + rolled_back
    assert rolled_back / transactions > 0.2  # the rollbacks really happened
    print(
        f"[reliability] volume: {issued} IDs in {len(ranges)} committed and {rolled_back} "
        f"rolled-back transactions, 0 duplicates, 0 gaps, {elapsed:.1f} s"
    )
