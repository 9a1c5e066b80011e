"""HTTP servers that a test may kill, clients that load them, and the counting of what came back.

Every server is a ``uvicorn idmanager.api.app:create_app --factory`` process on 127.0.0.1,
configured only through ``IDMANAGER_*`` variables, its stdout and stderr kept in a file so a
test can read what it logged. Every client request is recorded as a :class:`Call` (when it
started and ended, what it asked, what came back), and :func:`tally` counts IDs, duplicates,
gaps and order violations from the calls and the database's ``last_value``.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

import idmanager
from api_keys import Keys
from idmanager import parse_id

from .throwaway import free_port

PROBLEM = "application/problem+json"
# A request that takes longer than this is a hang: every call is bounded by it.
CLIENT_TIMEOUT_S = 5.0
FIGURES_ENV = "IDMANAGER_RELIABILITY_FIGURES"


def server_env(database_url: str, keys: Keys | None, **settings: str) -> dict[str, str]:
    """Return the environment of a server: ours without IDMANAGER_*, plus its settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")}
    env["IDMANAGER_DATABASE_URL"] = database_url
    env.setdefault("IDMANAGER_POOL_SIZE", "4")
    if keys is not None:
        env["IDMANAGER_API_KEYS"] = keys.env()
    env.update({f"IDMANAGER_{name.upper()}": value for name, value in settings.items()})
    return env


class ServerProcess:
    """One uvicorn process; it can be killed and started again on the same port."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        workdir: Path,
        *,
        command: list[str] | None = None,
        log_level: str = "info",
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # cwd is a folder of the test's: no stray .env or ./idmanager.db is picked up.
        self.workdir = workdir
        self.log_path = self.workdir / f"{name}.log"
        self.env = env
        # ``command`` may name the port as "{port}".
        self.command = [
            part.format(port=self.port)
            for part in command
            or [
                sys.executable,
                "-m",
                "uvicorn",
                "idmanager.api.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--log-level",
                log_level,
            ]
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, wait: bool = True, timeout: float = 30) -> float:
        """Start the process; with ``wait``, return how long until /health/live answered."""
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=log
            )
        self.starts += 1
        if wait:
            try:
                self.wait_live(timeout)
            except BaseException:
                self.stop()  # never left running by a failed start
                raise
        return time.monotonic() - began

    def wait_live(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.log()}"
                )
            try:
                if httpx.get(self.url + "/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not answer within {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the process: no shutdown, no cleanup, connections cut mid-request."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        assert self.process.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Call:
    """One HTTP request a load client made, and what came of it."""

    client: int
    server: str
    prefix: str
    count: int
    start: float
    end: float = 0.0
    status: int | None = None
    content_type: str = ""
    retry_after: str | None = None
    body: str = ""
    ids: list[str] = field(default_factory=list)
    error: str | None = None  # a transport error or timeout: the outcome is unknown

    @property
    def unknown_outcome(self) -> bool:
        """True when the IDs may have been committed without the client seeing them.

        A refused connection never reached a server; a 503 or a connection lost after the
        request was sent may hide a commit whose answer never came back.
        """
        if self.error is not None:
            return self.error not in ("ConnectError", "ConnectTimeout")
        return self.status == 503


class LoadClients:
    """Threads that allocate IDs over HTTP until told to stop (or a bound is reached).

    Client ``i`` sends each request to a server and for a prefix drawn at random (seeded by
    ``i``: runs repeat), asking for 1 to 3 IDs, with the key of ``roles[i]``.
    """

    def __init__(
        self,
        servers: list[ServerProcess],
        keys: Keys,
        prefixes: list[str],
        roles: list[str | None],
        *,
        max_calls: int = 10_000,
        max_seconds: float = 60,
        pause: float = 0.0,
    ) -> None:
        self.servers = servers
        self.keys = keys
        self.prefixes = prefixes
        self.roles = roles
        self.max_calls = max_calls
        self.max_seconds = max_seconds
        self.pause = pause
        self.calls: list[list[Call]] = [[] for _ in roles]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(roles))
        ]

    def start(self) -> LoadClients:
        for thread in self._threads:
            thread.start()
        return self

    def snapshot(self) -> list[Call]:
        """Return the calls made so far (the clients keep going)."""
        return [call for calls in self.calls for call in list(calls)]

    def stop(self) -> list[Call]:
        """Stop every client, wait for it, and return all calls."""
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT_S + 10)
            assert not thread.is_alive(), "a load client hung"
        return [call for calls in self.calls for call in calls]

    def wait(self) -> list[Call]:
        """Wait until every client made its calls (or ran out of time); return all calls."""
        for thread in self._threads:
            thread.join(self.max_seconds + CLIENT_TIMEOUT_S + 10)
        return self.stop()

    def _run(self, i: int) -> None:
        headers = self.keys.header(self.roles[i])
        rng = random.Random(i)
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=CLIENT_TIMEOUT_S, headers=headers) as client:
            for _ in range(self.max_calls):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                server = rng.choice(self.servers)
                prefix = rng.choice(self.prefixes)
                count = rng.randint(1, 3)
                call = Call(i, server.name, prefix, count, time.monotonic())
                try:
                    response = client.post(
                        f"{server.url}/api/v1/prefixes/{prefix}/ids", params={"count": count}
                    )
                except httpx.HTTPError as exc:
                    call.end = time.monotonic()
                    call.error = type(exc).__name__
                    time.sleep(0.05)  # the server is away: do not spin
                else:
                    call.end = time.monotonic()
                    call.status = response.status_code
                    call.content_type = response.headers.get("content-type", "")
                    call.retry_after = response.headers.get("retry-after")
                    call.body = response.text
                    if response.status_code == 201:
                        call.ids = response.json()["ids"]
                    elif response.status_code == 503:
                        time.sleep(0.02)
                self.calls[i].append(call)
                if self.pause:
                    time.sleep(self.pause)


def last_values(url: str, prefixes: Iterable[str], scope: str = "") -> dict[str, int]:
    """Return ``last_value`` of each prefix (0 for a prefix with no row)."""
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT prefix, last_value FROM id_managers WHERE scope = :s"),
                {"s": scope},
            ).all()
    finally:
        engine.dispose()
    found = {prefix: int(value) for prefix, value in rows}
    return {prefix: found.get(prefix, 0) for prefix in prefixes}


@dataclass
class Tally:
    """What a run handed out, counted per prefix against the database."""

    calls: int
    statuses: dict[str, int]
    ids: int
    duplicates: int
    gaps: int
    unknown_outcome_ids: int
    order_violations: int
    per_prefix: dict[str, dict[str, int]]

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.calls,
            "statuses": self.statuses,
            "ids": self.ids,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "ids_of_requests_with_unknown_outcome": self.unknown_outcome_ids,
            "order_violations": self.order_violations,
        }


def order_violations(calls: list[Call]) -> int:
    """Count calls that got an ID not above every ID of a call that ended before they began.

    This is "never backwards" in real time: whichever client, server or replica, once a
    response with ``X`` has been received, no later request receives anything below ``X``.
    It implies that each client, and each replica, sees every prefix increase.
    """
    violations = 0
    by_prefix: dict[str, list[tuple[float, float, int, int]]] = defaultdict(list)
    for call in calls:
        if call.ids:
            ordinals = [parse_id(i).ordinal for i in call.ids]
            by_prefix[call.prefix].append((call.start, call.end, min(ordinals), max(ordinals)))
    for spans in by_prefix.values():
        ended = sorted(spans, key=lambda s: s[1])
        ends = [s[1] for s in ended]
        running_max, highest = [], 0
        for span in ended:
            highest = max(highest, span[3])
            running_max.append(highest)
        for start, _, low, _ in spans:
            before = bisect.bisect_left(ends, start)  # calls that ended before this began
            if before and running_max[before - 1] >= low:
                violations += 1
    return violations


def tally(calls: list[Call], database: dict[str, int]) -> Tally:
    """Count IDs, duplicates and gaps per prefix; ``database`` is each prefix's last_value."""
    per_prefix: dict[str, dict[str, int]] = {}
    total_ids = total_dups = total_gaps = total_unknown = 0
    for prefix, issued in database.items():
        received = [i for c in calls if c.prefix == prefix for i in c.ids]
        ordinals = {parse_id(i).ordinal for i in received}
        assert {parse_id(i).prefix for i in received} <= {prefix}
        duplicates = len(received) - len(ordinals)
        assert not ordinals or max(ordinals) <= issued, "an ID beyond the database's last_value"
        gaps = issued - len(ordinals)
        unknown = sum(c.count for c in calls if c.prefix == prefix and c.unknown_outcome)
        per_prefix[prefix] = {
            "ids": len(received),
            "duplicates": duplicates,
            "last_value": issued,
            "gaps": gaps,
            "ids_of_requests_with_unknown_outcome": unknown,
        }
        total_ids += len(received)
        total_dups += duplicates
        total_gaps += gaps
        total_unknown += unknown
    statuses = Counter(str(c.status) if c.status else c.error or "?" for c in calls)
    return Tally(
        calls=len(calls),
        statuses=dict(sorted(statuses.items())),
        ids=total_ids,
        duplicates=total_dups,
        gaps=total_gaps,
        unknown_outcome_ids=total_unknown,
        order_violations=order_violations(calls),
        per_prefix=per_prefix,
    )


def assert_no_secret(secrets_: Iterable[str], **texts: str) -> None:
    """Fail if any secret appears in any of the texts (logs, bodies), naming where."""
    for name, text in texts.items():
        for secret in secrets_:
            assert secret not in text, f"a secret appears in {name}"


def assert_problem(call_or_response: Call | httpx.Response, status: int) -> dict[str, Any]:
    """Check a problem+json answer of ``status`` and return its body."""
    if isinstance(call_or_response, Call):
        got, content_type, body = (
            call_or_response.status,
            call_or_response.content_type,
            call_or_response.body,
        )
    else:
        got = call_or_response.status_code
        content_type = call_or_response.headers.get("content-type", "")
        body = call_or_response.text
    assert got == status, (got, body[:300])
    assert content_type == PROBLEM, (content_type, body[:300])
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == status and problem["title"] and problem["type"], problem
    return problem


def record(scenario: str, figures: dict[str, Any]) -> None:
    """Print a scenario's figures and keep them in the figures file of the last run.

    The file is ``$IDMANAGER_RELIABILITY_FIGURES``, else ``reliability-figures.json`` in the
    system's temp folder; docs/reliability.md quotes it.
    """
    path = Path(
        os.environ.get(FIGURES_ENV) or Path(tempfile.gettempdir()) / "reliability-figures.json"
    )
    print(f"\n[reliability] {scenario}: {json.dumps(figures, sort_keys=True)}")
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        data = {}
    data[scenario] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Poll ``condition`` until true; return the seconds it took (fail after ``timeout``)."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)
    return time.monotonic() - began
