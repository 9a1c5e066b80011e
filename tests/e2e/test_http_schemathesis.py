"""Schemathesis over ``/openapi.json`` against the live server: no server error, and every
response (status, content type, headers, body) as the schema documents it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Keys, PostgresDatabases, Server

# Bounded so the run takes seconds; raise it locally to search harder.
MAX_EXAMPLES = os.environ.get("IDMANAGER_TEST_SCHEMATHESIS_EXAMPLES", "25")
SEED = os.environ.get("IDMANAGER_TEST_SCHEMATHESIS_SEED", "1")


def test_schemathesis_finds_nothing(
    backend: str,
    start_server: Callable[..., Server],
    pg_databases: PostgresDatabases,
    keys: Keys,
    workdir: Path,
) -> None:
    # A server of its own: the fuzzer deactivates and resets whatever prefixes it finds.
    url = (
        pg_databases.create()
        if backend == "postgresql"
        else f"sqlite+aiosqlite:///{workdir / 'schemathesis.db'}"
    )
    server = start_server(f"schemathesis-{backend}", url, keys)
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [
        str(schemathesis),
        "run",
        f"{server.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {keys.admin}",
        # Every check except "valid input must succeed": a well-formed request may still
        # name an unknown prefix (404) or an inactive one (409), as documented.
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        "--no-shrink",
        "--request-timeout",
        "30",
    ]
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=300, check=False
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout or "passed" in result.stdout, report
