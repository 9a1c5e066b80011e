"""HTTP allocation under load: IdManager's route vs a bare FastAPI endpoint on the same server.

The server is uvicorn serving ``http_app:create_bench_app`` (the service plus a bare endpoint)
with 1 or 2 workers, started by ``serve.py``, access log off, an API key as in production.
The load generator is ``wrk`` (C, event loop, keep-alive) when installed, else ``load.py`` in
its own process. The CPU time of the load generator, the server and PostgreSQL is measured
for every run from the kernel's accounting (``wait4`` for the load generator,
``/proc/<pid>/stat`` for the others).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

BENCH = Path(__file__).resolve().parent
KEY = "bench-key-0123456789abcdef"  # the service wants 16 characters at least
TICK = os.sysconf("SC_CLK_TCK")
STAGGER_S = 0.25


@dataclass(frozen=True)
class Load:
    """One run: requests per second and the CPU each party used (in cores, 1.0 = one core)."""

    rate: float
    errors: int
    generator_cpu: float
    server_cpu: float
    postgres_cpu: float

    def note(self, generator: str) -> str:
        return (
            f"CPU: {generator} {self.generator_cpu:.2f}, server {self.server_cpu:.2f}, "
            f"postgres {self.postgres_cpu:.2f} cores"
        )


def generator() -> str:
    """Name the load generator this machine has."""
    return "wrk" if shutil.which("wrk") else "load.py (asyncio, wrk not installed)"


def server_stack() -> str:
    """Describe what uvicorn runs on: its event loop and HTTP parser."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {_version('uvicorn')} ({loop}, {parser}), FastAPI {_version('fastapi')}"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _cpu(pids: list[int]) -> dict[int, float]:
    """Return the CPU seconds (user + system) each process has used so far."""
    used = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        used[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return used


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    # Processes that ended meanwhile are not counted; new ones are counted from their start.
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            pids += _tree(int(child))
    return pids


def _postgres() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Server:
    """uvicorn serving the bench app on a free port; a context manager."""

    def __init__(
        self, database_url: str, *, workers: int, block_cache: bool, stock: bool = False
    ) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.stock = stock
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")},
            "IDMANAGER_DATABASE_URL": database_url,
            "IDMANAGER_MIGRATE_ON_START": "false",
            "IDMANAGER_POOL_SIZE": str(max(8, 32 // workers)),
            "IDMANAGER_API_KEYS": f"{KEY}:generate",
            "IDMANAGER_BLOCK_CACHE": str(block_cache).lower(),
        }
        # Open for the server's lifetime (its stdout and stderr), closed in __exit__.
        self.log = tempfile.NamedTemporaryFile(prefix="idm-bench-", suffix=".log")  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        command = [sys.executable, str(BENCH / "serve.py"), str(self.port), str(self.workers)]
        command += ["--stock"] if self.stock else []
        self.process = subprocess.Popen(
            command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=BENCH
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the bench server exited:\n{self._log()}")
            try:
                if httpx.get(self.url + "/health/live", timeout=1).status_code == 200:
                    # Every worker answers once it has started: let the others catch up.
                    time.sleep(1.0 if self.workers > 1 else 0)
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the bench server did not answer within 60 s:\n{self._log()}")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def _log(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def drive(self, path: str, connections: int, seconds: float) -> Load:
        """POST ``path`` from ``connections`` keep-alive connections for ``seconds``.

        With several workers the connections open in one batch per worker, a moment apart:
        the first worker to wake accepts a whole burst of connections (asyncio accepts up to
        the backlog at once), so a single burst would all land on one worker.
        """
        assert self.process is not None
        server, postgres = _cpu(_tree(self.process.pid)), _cpu(_postgres())
        batches = min(self.workers, connections)
        with tempfile.TemporaryDirectory() as folder:
            runs = []
            for i in range(batches):
                share = connections // batches + (i < connections % batches)
                runs.append(_start(Path(folder), i, self.url + path, share, seconds))
                if i + 1 < batches:
                    time.sleep(STAGGER_S)
            results = [_finish(*run) for run in runs]
        return Load(
            rate=sum(r[0] for r in results),
            errors=sum(r[1] for r in results),
            generator_cpu=sum(r[2] for r in results) / seconds,
            server_cpu=_used(server, _cpu(_tree(self.process.pid))) / seconds,
            postgres_cpu=_used(postgres, _cpu(_postgres())) / seconds,
        )


Started = tuple[subprocess.Popen[bytes], list[str], Path]


POST = 'wrk.method = "POST"\n'


def _start(
    folder: Path,
    i: int,
    url: str,
    connections: int,
    seconds: float,
    lua: str = POST,
    api_key: str = KEY,
) -> Started:
    """Start the load generator on ``url`` (wrk: with the script ``lua``); its output goes to
    a file in ``folder``."""
    header = f"Authorization: Bearer {api_key}"
    if shutil.which("wrk"):
        script = folder / f"post-{i}.lua"
        script.write_text(lua)
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        command += ["-s", str(script), "-H", header, url]
    else:
        command = [sys.executable, str(BENCH / "load.py"), url, str(connections)]
        command += [str(seconds), header]
    out_path = folder / f"out-{i}"
    with out_path.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return process, command, out_path


def _finish(
    process: subprocess.Popen[bytes], command: list[str], out_path: Path
) -> tuple[float, int, float]:
    """Wait for a load generator; return requests per second, failures, its CPU seconds."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{text}")
    cpu = usage.ru_utime + usage.ru_stime
    if command[0] == "wrk":
        found = re.search(r"Requests/sec:\s+([\d.]+)", text)
        if found is None:
            raise RuntimeError(f"unexpected wrk output:\n{text}")
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        timeouts = re.search(r"timeout (\d+)", text)
        errors = (int(bad.group(1)) if bad else 0) + (int(timeouts.group(1)) if timeouts else 0)
        return float(found.group(1)), errors, cpu
    result = json.loads(text.strip().splitlines()[-1])
    return result["requests"] / result["seconds"], result["errors"], cpu
