"""Child processes a test starts are stopped by the test, whatever happens to it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def reaped(processes: list[subprocess.Popen[Any]]) -> Iterator[list[subprocess.Popen[Any]]]:
    """On the way out (a failure or a timeout included), SIGKILL whichever of ``processes``
    (as the list holds them then) still runs, and wait for it: none outlives the test to load
    the machine or hold a database open."""
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
