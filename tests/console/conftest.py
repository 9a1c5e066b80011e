"""Browser fixtures: a real server on SQLite, Debian's Chromium driven by Playwright.

The browser is the system's ``chromium`` (CI installs it with apt; ``playwright install``
downloads builds, which this environment cannot). A missing browser FAILS the tests, with how
to install it: a skipped journey would let a broken console pass.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api_keys import Keys

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ConsoleServer:
    """``idmanager serve`` serving the app on a fresh SQLite database, with a key per role."""

    url: str
    keys: Keys
    log: Path
    process: subprocess.Popen[bytes]

    def api(self, role: str = "admin") -> httpx.Client:
        """Return a JSON API client with the key of ``role``."""
        return httpx.Client(base_url=self.url, headers=self.keys.header(role), timeout=30)


@pytest.fixture(scope="session")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    workdir = tmp_path_factory.mktemp("console")
    keys = Keys()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")}
    env |= {
        "IDMANAGER_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'console.db'}",
        "IDMANAGER_API_KEYS": keys.env(),
    }
    # As `make run` serves it: `idmanager serve` (its own HTTP protocol over uvicorn's).
    idmanager = str(Path(sys.executable).with_name("idmanager"))
    command = [idmanager, "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=out)
    server = ConsoleServer(f"http://127.0.0.1:{port}", keys, log, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited:\n{log.read_text()}")
            try:
                if httpx.get(server.url + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer within 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium, for the journeys of one module.

    Module scope, not session: while Playwright's sync API is open, the main thread counts as
    running an event loop, and every asyncio test collected after the console (tests/e2e,
    tests/integration) would fail with "Runner.run() cannot be called from a running event
    loop"."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "Chromium is not installed: the console's browser tests need Debian's browser "
            "(`apt-get install chromium chromium-driver`; .ci/run does this). "
            "Never `playwright install`: it downloads builds.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the journeys save their screenshots: docs/console/ when asked
    (``IDMANAGER_CONSOLE_SCREENSHOTS=1``), else a temporary folder, so that a test run does
    not rewrite the documentation's pictures."""
    if os.environ.get("IDMANAGER_CONSOLE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")
