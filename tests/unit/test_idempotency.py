"""Exactly once over HTTP, in-process: the Idempotency-Key from the use cases to the client.

The use cases over the fake, the app over ASGI (database mode and block cache mode), the
client's retries over ``httpx.MockTransport`` and over the app itself with answers dropped on
the way back, and ``idmanager next --idempotency-key`` through Typer's runner. The real
databases are in ``tests/integration/test_idempotency.py``, killed servers in
``tests/reliability/test_exactly_once.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from api_keys import Keys
from idmanager.api import allocation
from idmanager.api.allocation import CachedAllocator, DatabaseAllocator
from idmanager.api.app import create_app
from idmanager.application.block_cache import BlockCache
from idmanager.application.options import ServiceOptions
from idmanager.application.results import ResetResult, from_json, to_json
from idmanager.application.use_cases import (
    IdManagerUseCases,
    Once,
    SyncIdManagerUseCases,
)
from idmanager.cli import app as cli_app
from idmanager.client import AsyncIdManagerClient, IdManagerClient, ServiceUnreachableError
from idmanager.domain.errors import (
    IdempotencyKeyReusedError,
    PrefixInactiveError,
    StorageError,
)
from idmanager.domain.repository import Claim, IdManagerRepository
from idmanager.problems import EXIT_INPUT, PROBLEM_JSON, kind

from .asgi import assert_problem, settings
from .cli_backend import FakeBackend
from .fakes import AsyncFakeTransactions, FakeRepository, FakeTransactions

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
BASE = "http://localhost"


def claim(key: str = "k-1", request: str = "r-1", owner: str = "api-key:0123456789ab") -> Claim:
    return Claim(owner, key, hashlib.sha256(request.encode()).hexdigest())


def last_value(repository: FakeRepository, prefix: str, scope: str = "") -> int:
    return repository.rows[scope, prefix].last_value


# -- the use cases ------------------------------------------------------------------------------


async def test_a_repeat_gets_the_first_ids_and_allocates_nothing() -> None:
    store = AsyncFakeTransactions()
    use_cases = IdManagerUseCases(store, ServiceOptions())
    first = await use_cases.allocate_once("CUS", 3, claim())
    assert (list(first.value), first.replayed) == (
        ["CUS-AAA0001", "CUS-AAA0002", "CUS-AAA0003"],
        False,
    )
    again = await use_cases.allocate_once("CUS", 3, claim())
    assert (list(again.value), again.replayed) == (list(first.value), True)
    assert last_value(store.repository, "CUS") == 3
    # Without a key, the next allocation goes on from there.
    assert list(await use_cases.allocate("CUS")) == ["CUS-AAA0004"]


async def test_the_same_key_with_another_request_is_refused_and_takes_nothing() -> None:
    store = AsyncFakeTransactions()
    use_cases = IdManagerUseCases(store, ServiceOptions())
    await use_cases.allocate_once("CUS", 1, claim(request="CUS x1"))
    with pytest.raises(IdempotencyKeyReusedError, match="another request"):
        await use_cases.allocate_once("CUS", 2, claim(request="CUS x2"))
    assert last_value(store.repository, "CUS") == 1


async def test_keys_are_apart_per_owner() -> None:
    store = AsyncFakeTransactions()
    use_cases = IdManagerUseCases(store, ServiceOptions())
    mine = await use_cases.allocate_once("CUS", 1, claim(owner="api-key:aaaaaaaaaaaa"))
    theirs = await use_cases.allocate_once("CUS", 1, claim(owner="api-key:bbbbbbbbbbbb"))
    assert (list(mine.value), list(theirs.value)) == (["CUS-AAA0001"], ["CUS-AAA0002"])
    assert not theirs.replayed


async def test_a_refused_first_attempt_leaves_the_key_free() -> None:
    store = AsyncFakeTransactions()
    use_cases = IdManagerUseCases(store, ServiceOptions())
    await use_cases.allocate("CUS")
    await use_cases.run(lambda s: s.deactivate_prefix("CUS"))
    with pytest.raises(PrefixInactiveError):
        await use_cases.allocate_once("CUS", 1, claim())
    assert store.repository.answers == {}
    await use_cases.run(lambda s: s.activate_prefix("CUS"))
    done = await use_cases.allocate_once("CUS", 1, claim())
    assert (list(done.value), done.replayed) == (["CUS-AAA0002"], False)


async def test_a_repeat_after_the_sequence_changed_still_gets_the_first_answer() -> None:
    """A client whose answer was lost retries after an operator deactivated the prefix: its
    IDs were allocated, and the repeat must say which, not that it was refused."""
    store = AsyncFakeTransactions()
    use_cases = IdManagerUseCases(store, ServiceOptions())
    first = await use_cases.allocate_once("CUS", 2, claim())
    await use_cases.run(lambda s: s.deactivate_prefix("CUS"))
    again = await use_cases.allocate_once("CUS", 2, claim())
    assert (list(again.value), again.replayed) == (list(first.value), True)
    with pytest.raises(PrefixInactiveError):  # a new request is refused, as it should be
        await use_cases.allocate_once("CUS", 2, claim(key="k-2"))
    with pytest.raises(IdempotencyKeyReusedError):  # and the key stays bound to its request
        await use_cases.allocate_once("CUS", 3, claim(request="r-2"))


def test_a_rolled_back_change_leaves_the_key_free() -> None:
    transactions = FakeTransactions()
    use_cases = SyncIdManagerUseCases(transactions, ServiceOptions())
    use_cases.allocate("CUS", 5)

    def fails_after_the_reset(s: Any) -> ResetResult:
        s.reset_sequence("CUS", "CUS-AAA0100")
        raise StorageError("the connection dropped before the commit")

    encode, decode = _reset_codec()
    with pytest.raises(StorageError):
        use_cases.run_once(fails_after_the_reset, claim(), encode, decode)
    assert (transactions.repository.answers, last_value(transactions.repository, "CUS")) == ({}, 5)
    done = use_cases.run_once(
        lambda s: s.reset_sequence("CUS", "CUS-AAA0100"), claim(), encode, decode
    )
    assert (done.value.latest_id, done.replayed) == ("CUS-AAA0100", False)


def _reset_codec() -> tuple[Callable[[ResetResult], str], Callable[[str], ResetResult]]:
    """Return how the reset route stores a reset's answer, and reads it back."""
    return (lambda r: json.dumps(to_json(r))), (lambda t: from_json(ResetResult, json.loads(t)))


def test_a_change_is_done_once_and_its_answer_given_again() -> None:
    transactions = FakeTransactions()
    use_cases = SyncIdManagerUseCases(transactions, ServiceOptions(actor="ops"))
    use_cases.allocate("CUS", 5)
    encode, decode = _reset_codec()

    def reset(steps: Any) -> Any:
        return steps.reset_sequence("CUS", "CUS-AAA0100")

    first = use_cases.run_once(reset, claim(), encode, decode)
    use_cases.allocate("CUS", 2)  # the sequence moves on meanwhile
    again = use_cases.run_once(reset, claim(), encode, decode)
    assert again == Once(first.value, True)
    assert [e.action.value for e in transactions.repository.entries()] == ["create", "reset"]
    assert last_value(transactions.repository, "CUS") == 102  # not reset a second time


def test_the_sync_use_cases_allocate_once_too() -> None:
    transactions = FakeTransactions()
    use_cases = SyncIdManagerUseCases(transactions, ServiceOptions())
    first = use_cases.allocate_once("INV{YYYY}", 2, claim(), on=date(2026, 12, 31))
    again = use_cases.allocate_once("INV{YYYY}", 2, claim(), on=date(2027, 1, 1))
    assert list(first.value) == ["INV2026-AAA0001", "INV2026-AAA0002"]
    assert (list(again.value), again.replayed) == (list(first.value), True)
    assert ("", "INV2027") not in transactions.repository.rows


def test_forget_answers_deletes_the_old_ones_a_batch_at_a_time() -> None:
    transactions = FakeTransactions()
    use_cases = SyncIdManagerUseCases(transactions, ServiceOptions())
    for i in range(7):
        use_cases.allocate_once("OLD", 1, claim(key=f"old-{i}"))
    long_ago = datetime.now(UTC) - timedelta(days=2)
    repository = transactions.repository
    repository.answers = {k: (long_ago, v) for k, (_, v) in repository.answers.items()}
    use_cases.allocate_once("NEW", 1, claim(key="recent"))
    commits = transactions.commits
    cutoff = datetime.now(UTC) - timedelta(days=1)
    assert use_cases.forget_answers(cutoff, batch=3, pause=0) == 7
    # 3 + 3 + 1: short transactions, none holding more than a batch.
    assert transactions.commits - commits == 3
    assert list(repository.answers) == [("api-key:0123456789ab", "recent")]
    # A forgotten key names a new request: it allocates again.
    again = use_cases.allocate_once("OLD", 1, claim(key="old-0"))
    assert (list(again.value), again.replayed) == (["OLD-AAA0008"], False)


def test_forget_answers_of_one_owner_leaves_the_others() -> None:
    """The command line cleans up its own answers only: never an HTTP client's."""
    transactions = FakeTransactions()
    use_cases = SyncIdManagerUseCases(transactions, ServiceOptions())
    use_cases.allocate_once("CUS", 1, claim(key="k1"))
    use_cases.allocate_once("CUS", 1, claim(key="k1", owner="cli"))
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert use_cases.forget_answers(later, owner="cli", pause=0) == 1
    assert list(transactions.repository.answers) == [("api-key:0123456789ab", "k1")]


async def test_async_forget_answers() -> None:
    store = AsyncFakeTransactions()
    use_cases = IdManagerUseCases(store, ServiceOptions())
    await use_cases.allocate_once("CUS", 1, claim())
    assert await use_cases.forget_answers(datetime.now(UTC) - timedelta(hours=24)) == 0
    assert await use_cases.forget_answers(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert store.repository.answers == {}


# -- the HTTP API over ASGI ---------------------------------------------------------------------


class SlowTransactions(AsyncFakeTransactions):
    """The fake, with every transaction waiting for ``gate`` (and a turn of the loop) first:
    requests are then really in flight together."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = 0

    async def run(self, work: Callable[[IdManagerRepository], Any], *, commit: bool = True) -> Any:
        self.started += 1
        await self.gate.wait()
        await asyncio.sleep(0.001)
        return await super().run(work, commit=commit)


def make_app(keys: Keys | None, store: AsyncFakeTransactions, **changes: Any) -> FastAPI:
    return create_app(
        settings(allowed_hosts=["*"], api_keys=keys.env() if keys else "", **changes),
        use_cases=IdManagerUseCases(store, ServiceOptions()),
    )


class Running:
    """An app over a fake, its lifespan running, and an ASGI client per role."""

    def __init__(self, app: FastAPI, store: AsyncFakeTransactions, keys: Keys) -> None:
        self.app, self.store, self.keys = app, store, keys
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        self.http = httpx.AsyncClient(transport=transport, base_url=BASE)

    @property
    def repository(self) -> FakeRepository:
        return self.store.repository

    async def post_ids(
        self, prefix: str, key: str | None, *, role: str = "generate", **params: Any
    ) -> httpx.Response:
        headers = self.keys.header(role) | ({KEY: key} if key is not None else {})
        return await self.http.post(
            f"/api/v1/prefixes/{prefix}/ids", params={"count": 1, **params}, headers=headers
        )

    async def admin(self, method: str, url: str, key: str | None, body: Any) -> httpx.Response:
        headers = self.keys.header("admin") | ({KEY: key} if key is not None else {})
        return await self.http.request(method, url, json=body, headers=headers)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def database_app(keys: Keys) -> tuple[FastAPI, SlowTransactions]:
    # Built once: building an app costs a tenth of a second; each test swaps in empty storage.
    store = SlowTransactions()
    return make_app(keys, store), store


@pytest.fixture
async def api(database_app: tuple[FastAPI, SlowTransactions], keys: Keys) -> AsyncIterator[Running]:
    """The app without the block cache, over empty storage, its lifespan running."""
    app, store = database_app
    store.sync = FakeTransactions()
    async with app.router.lifespan_context(app):
        running = Running(app, store, keys)
        async with running.http:
            yield running


def ids_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 201, response.text
    ids: list[str] = response.json()["ids"]
    return ids


async def test_http_a_repeat_gets_the_same_answer_and_says_so(api: Running) -> None:
    first = await api.post_ids("CUS", "order-4711", count=2)
    assert ids_of(first) == ["CUS-AAA0001", "CUS-AAA0002"]
    assert first.headers[REPLAYED] == "false"
    again = await api.post_ids("CUS", "order-4711", count=2)
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers[REPLAYED] == "true"
    assert last_value(api.repository, "CUS") == 2
    plain = await api.post_ids("CUS", None)
    assert ids_of(plain) == ["CUS-AAA0003"] and REPLAYED not in plain.headers


@pytest.mark.parametrize(
    "changed",
    [{"count": 3}, {"scope": "acme"}, {"date": "2026-01-02"}, {"prefix": "VEN"}],
    ids=["count", "scope", "date", "prefix"],
)
async def test_http_the_same_key_with_another_request_is_422(
    api: Running, changed: dict[str, Any]
) -> None:
    await api.post_ids("CUS", "k-1", count=2, date="2026-01-01")
    params = {"count": 2, "date": "2026-01-01", **changed}
    prefix = params.pop("prefix", "CUS")
    response = await api.post_ids(prefix, "k-1", **params)
    body = assert_problem(response, 422, "idempotency-key-reused")
    assert "another request" in body["detail"]
    assert {k: r.last_value for k, r in api.repository.rows.items()} == {("", "CUS"): 2}


async def test_http_keys_belong_to_the_api_key_that_sent_them(api: Running) -> None:
    mine = await api.post_ids("CUS", "shared-key", role="generate")
    theirs = await api.post_ids("CUS", "shared-key", role="admin")
    # The second caller cannot read the first's answer by sending its key: its own request.
    assert (ids_of(mine), ids_of(theirs)) == (["CUS-AAA0001"], ["CUS-AAA0002"])
    assert theirs.headers[REPLAYED] == "false"
    owners = {owner for owner, _ in api.repository.answers}
    digest = hashlib.sha256(api.keys.generate.encode()).hexdigest()[:12]
    assert f"api-key:{digest}" in owners and len(owners) == 2
    # Each one's repeat gets its own answer back.
    assert ids_of(await api.post_ids("CUS", "shared-key", role="generate")) == ["CUS-AAA0001"]
    assert ids_of(await api.post_ids("CUS", "shared-key", role="admin")) == ["CUS-AAA0002"]
    # A read key may not allocate, key or no key; and a wrong key learns nothing.
    assert_problem(await api.post_ids("CUS", "shared-key", role="read"), 403)
    assert_problem(await api.post_ids("CUS", "shared-key", role="wrong"), 401)


@pytest.mark.parametrize(
    "key",
    ["", " ", "a" * 256, "two words", "tab\there", "caf\xe9"],
    ids=["empty", "space", "256-chars", "inner-space", "tab", "latin-1"],
)
async def test_http_an_invalid_key_is_422_and_allocates_nothing(api: Running, key: str) -> None:
    # As bytes: httpx would refuse to send a header that is not ASCII.
    headers = [(k.encode(), v.encode()) for k, v in api.keys.header("generate").items()]
    headers.append((KEY.encode(), key.encode("latin-1")))
    response = await api.http.post("/api/v1/prefixes/CUS/ids", headers=headers)
    body = assert_problem(response, 422)
    assert "Idempotency-Key" in json.dumps(body)
    assert api.repository.rows == {} and api.repository.answers == {}


async def test_http_the_longest_key_and_uuids_are_accepted(api: Running) -> None:
    assert ids_of(await api.post_ids("CUS", "~" * 255)) == ["CUS-AAA0001"]
    assert ids_of(await api.post_ids("CUS", "3f2b8c1e-9d4a-4b7e-a1f0-8c7d6e5f4a3b")) == [
        "CUS-AAA0002"
    ]
    # Keys are compared exactly: another case is another key.
    assert ids_of(await api.post_ids("CUS", "Order-1")) == ["CUS-AAA0003"]
    assert ids_of(await api.post_ids("CUS", "order-1")) == ["CUS-AAA0004"]


async def test_http_a_refused_request_does_not_use_up_its_key(api: Running) -> None:
    await api.post_ids("CUS", None)
    await api.admin("PUT", "/api/v1/prefixes/CUS", None, {"is_active": False})
    refused = await api.post_ids("CUS", "k-1")
    assert_problem(refused, 409, "prefix-inactive")
    assert REPLAYED not in refused.headers
    await api.admin("PUT", "/api/v1/prefixes/CUS", None, {"is_active": True})
    done = await api.post_ids("CUS", "k-1")
    assert (ids_of(done), done.headers[REPLAYED]) == (["CUS-AAA0002"], "false")


async def test_http_a_repeat_after_a_deactivation_gets_its_ids(api: Running) -> None:
    first = await api.post_ids("CUS", "k-1", count=2)
    await api.admin("PUT", "/api/v1/prefixes/CUS", None, {"is_active": False})
    again = await api.post_ids("CUS", "k-1", count=2)
    assert (ids_of(again), again.headers[REPLAYED]) == (ids_of(first), "true")
    assert_problem(await api.post_ids("CUS", "k-2", count=2), 409, "prefix-inactive")


async def test_http_a_reset_is_done_once(api: Running) -> None:
    await api.post_ids("CUS", None, count=5)
    url = "/api/v1/prefixes/CUS/reset"
    first = await api.admin("POST", url, "reset-1", {"reset_to": "CUS-AAA0100"})
    assert (first.status_code, first.headers[REPLAYED]) == (200, "false")
    await api.post_ids("CUS", None, count=3)  # CUS-AAA0101 … 0103 handed out meanwhile
    again = await api.admin("POST", url, "reset-1", {"reset_to": "CUS-AAA0100"})
    assert (again.status_code, again.headers[REPLAYED]) == (200, "true")
    assert again.json() == first.json()
    # Done once: a second reset would have been refused as backwards, or re-issued 0101.
    assert last_value(api.repository, "CUS") == 103
    resets = [e for e in api.repository.entries() if e.action.value == "reset"]
    assert len(resets) == 1
    other = await api.admin("POST", url, "reset-1", {"reset_to": "CUS-AAA0200"})
    assert_problem(other, 422, "idempotency-key-reused")


async def test_http_a_configuration_is_done_once(api: Running) -> None:
    url = "/api/v1/prefixes/INV"
    body = {"format": {"separator": "/", "letter_width": 0, "digit_width": 6}}
    first = await api.admin("PUT", url, "conf-1", body)
    assert (first.status_code, first.headers[REPLAYED]) == (200, "false")
    again = await api.admin("PUT", url, "conf-1", body)
    assert (again.status_code, again.headers[REPLAYED], again.json()) == (200, "true", first.json())
    assert len(api.repository.entries()) == 1
    assert_problem(await api.admin("PUT", url, "conf-1", {"is_active": False}), 422)
    assert_problem(await api.admin("PUT", url, "x" * 256, body), 422)


async def test_http_a_dry_run_ignores_the_key(api: Running) -> None:
    await api.post_ids("CUS", None, count=5)
    url = "/api/v1/prefixes/CUS/reset"
    dry = await api.admin("POST", url, "reset-1", {"reset_to": "CUS-AAA0100", "dry_run": True})
    assert dry.status_code == 200 and dry.json()["dry_run"] is True
    assert REPLAYED not in dry.headers and api.repository.answers == {}
    # The key is still free for the real thing, which is not a replay of the dry run.
    real = await api.admin("POST", url, "reset-1", {"reset_to": "CUS-AAA0100"})
    assert (real.json()["dry_run"], real.headers[REPLAYED]) == (False, "false")
    assert last_value(api.repository, "CUS") == 100
    ignored = await api.admin("POST", url, "not a key", {"reset_to": None, "dry_run": True})
    assert ignored.status_code == 409  # a dry run of a backwards reset: the key plays no part


async def test_http_a_replay_is_not_counted_as_allocated_ids(api: Running) -> None:
    """idmanager_ids_allocated_total counts IDs allocated: a replay allocates none."""
    for _ in range(3):
        await api.post_ids("MTR", "k-1", count=2)
    metrics = await api.http.get("/metrics", headers=api.keys.header("read"))
    total = 'idmanager_ids_allocated_total{prefix="MTR"}'  # the app is shared: one prefix
    counted = [line for line in metrics.text.splitlines() if line.startswith(total)]
    assert counted == [f"{total} 2.0"], counted


async def test_http_the_header_is_documented_on_every_changing_route(api: Running) -> None:
    spec = (await api.http.get("/openapi.json")).json()
    for path, method in [
        ("/api/v1/prefixes/{prefix}/ids", "post"),
        ("/api/v1/prefixes/{prefix}/reset", "post"),
        ("/api/v1/prefixes/{prefix}", "put"),
    ]:
        operation = spec["paths"][path][method]
        names = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
        assert names == [KEY], (path, names)
        examples = operation["responses"]["422"]["content"][PROBLEM_JSON]["examples"]
        assert "idempotency-key-reused" in examples, path
    assert kind("idempotency-key-reused").status == 422


async def test_http_concurrent_repeats_in_database_mode_allocate_once(api: Running) -> None:
    await api.post_ids("CUS", None)
    answers = await asyncio.gather(*(api.post_ids("CUS", "same", count=2) for _ in range(12)))
    assert {tuple(ids_of(r)) for r in answers} == {("CUS-AAA0002", "CUS-AAA0003")}
    assert [r.headers[REPLAYED] for r in answers].count("false") == 1
    assert last_value(api.repository, "CUS") == 3


# -- the block cache: answers remembered in the process that gave them ---------------------------


@pytest.fixture
def cache_apps(keys: Keys) -> tuple[list[FastAPI], SlowTransactions]:
    # Built per test: a block cache app's lifespan runs once (its metrics register once).
    store = SlowTransactions()
    apps = [make_app(keys, store, block_cache=True, block_cache_initial_block=50) for _ in "ab"]
    return apps, store


@pytest.fixture
async def cached(
    cache_apps: tuple[list[FastAPI], SlowTransactions], keys: Keys
) -> AsyncIterator[tuple[Running, Running]]:
    """Two workers with the block cache (each a cache of its own), over one empty storage."""
    (first, second), store = cache_apps
    store.sync = FakeTransactions()
    store.gate.set()
    async with first.router.lifespan_context(first), second.router.lifespan_context(second):
        one, two = Running(first, store, keys), Running(second, store, keys)
        async with one.http, two.http:
            yield one, two


async def test_cache_a_repeat_to_the_same_worker_gets_the_same_ids(
    cached: tuple[Running, Running],
) -> None:
    one, _ = cached
    await one.post_ids("CUS", None)  # the sequence exists: the next ones come from blocks
    first = await one.post_ids("CUS", "k-1", count=3)
    again = await one.post_ids("CUS", "k-1", count=3)
    assert ids_of(first) == ids_of(again) == ["CUS-AAA0002", "CUS-AAA0003", "CUS-AAA0004"]
    assert (first.headers[REPLAYED], again.headers[REPLAYED]) == ("false", "true")
    assert ids_of(await one.post_ids("CUS", None)) == ["CUS-AAA0005"]
    assert_problem(await one.post_ids("CUS", "k-1", count=2), 422, "idempotency-key-reused")
    # Another API key's same key is its own request, in the cache too.
    assert ids_of(await one.post_ids("CUS", "k-1", count=3, role="admin")) == [
        "CUS-AAA0006",
        "CUS-AAA0007",
        "CUS-AAA0008",
    ]


async def test_cache_a_repeat_to_another_worker_is_a_new_allocation(
    cached: tuple[Running, Running],
) -> None:
    """What the docs say: the block cache remembers answers only in its own process."""
    one, two = cached
    first = await one.post_ids("CUS", "k-1", count=2)
    elsewhere = await two.post_ids("CUS", "k-1", count=2)
    assert elsewhere.headers[REPLAYED] == "false"
    assert set(ids_of(first)).isdisjoint(ids_of(elsewhere))  # new IDs: never a duplicate
    assert one.repository.answers == {}  # nothing went to the database's table


async def test_cache_concurrent_repeats_in_one_process_get_one_allocation(
    cached: tuple[Running, Running],
) -> None:
    one, _ = cached
    await one.post_ids("CUS", None)
    one.store.gate.clear()  # hold the storage: the first request is in flight
    pending = [asyncio.create_task(one.post_ids("CUS", "k-1", count=150)) for _ in range(10)]
    await asyncio.sleep(0.05)
    one.store.gate.set()
    answers = await asyncio.gather(*pending)
    assert len({tuple(ids_of(r)) for r in answers}) == 1
    assert [r.headers[REPLAYED] for r in answers].count("false") == 1
    # 150 IDs is above the cache's largest count: one database allocation, not ten.
    assert last_value(one.repository, "CUS") == 151
    # Small counts, served from blocks, the same.
    pending = [asyncio.create_task(one.post_ids("CUS", "k-2", count=2)) for _ in range(10)]
    answers = await asyncio.gather(*pending)
    assert len({tuple(ids_of(r)) for r in answers}) == 1
    assert ids_of(await one.post_ids("CUS", None)) != ids_of(answers[0])


def _cached_allocator(store: AsyncFakeTransactions, **options: Any) -> CachedAllocator:
    use_cases = IdManagerUseCases(store, ServiceOptions())
    return CachedAllocator(BlockCache(use_cases.run), DatabaseAllocator(use_cases), 100, **options)


async def test_cache_a_sequence_s_first_requests_go_to_the_database_one_at_a_time() -> None:
    """Two first requests for a sequence: the second waits for the first's admission and
    takes a block. Both through the database at once, the second one's statement could land
    after a block was fetched, past it: a later request would get a lower ID."""
    store = SlowTransactions()
    allocator = _cached_allocator(store)
    store.gate.clear()
    first = asyncio.create_task(allocator.allocate("CUS", 1, "", None))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(allocator.allocate("cus", 1, "", None))  # the same sequence
    await asyncio.sleep(0.01)
    assert store.started == 1  # the second waits for the first, not at the database
    store.gate.set()
    assert list((await first)[1]) == ["CUS-AAA0001"]
    assert list((await second)[1]) == ["CUS-AAA0002"]  # the first ID of the first block
    later = [(await allocator.allocate("CUS", 1, "", None))[1] for _ in range(3)]
    assert [list(ids) for ids in later] == [["CUS-AAA0003"], ["CUS-AAA0004"], ["CUS-AAA0005"]]
    assert allocator._admitting == {}  # nothing kept once admitted


async def test_cache_a_failed_first_attempt_frees_the_key_and_tells_its_repeats() -> None:
    store = SlowTransactions()
    allocator = _cached_allocator(store)
    store.repository.fail = StorageError("database unavailable")
    store.gate.clear()
    first = asyncio.create_task(allocator.allocate_once("CUS", 1, "", None, None, True, claim()))
    await asyncio.sleep(0.01)
    repeat = asyncio.create_task(allocator.allocate_once("CUS", 1, "", None, None, True, claim()))
    await asyncio.sleep(0.01)
    store.gate.set()
    for task in (first, repeat):
        with pytest.raises(StorageError):
            await task
    store.repository.fail = None
    done = await allocator.allocate_once("CUS", 1, "", None, None, True, claim())
    assert (list(done.value[1]), done.replayed) == (["CUS-AAA0001"], False)


async def test_cache_a_repeat_waiting_for_a_cancelled_first_attempt_allocates_itself() -> None:
    store = SlowTransactions()
    allocator = _cached_allocator(store)
    store.gate.clear()
    first = asyncio.create_task(allocator.allocate_once("CUS", 1, "", None, None, True, claim()))
    await asyncio.sleep(0.01)
    repeat = asyncio.create_task(allocator.allocate_once("CUS", 1, "", None, None, True, claim()))
    await asyncio.sleep(0.01)
    first.cancel()  # say, the server stopping
    await asyncio.sleep(0.01)
    store.gate.set()
    done = await repeat  # not cancelled itself: it must get an answer
    assert (list(done.value[1]), done.replayed) == (["CUS-AAA0001"], False)
    assert first.cancelled()


async def test_cache_answers_expire_after_the_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(allocation, "time", SimpleNamespace(monotonic=lambda: now[0]))
    allocator = _cached_allocator(AsyncFakeTransactions(), ttl=60.0)
    first = await allocator.allocate_once("CUS", 1, "", None, None, True, claim())
    now[0] += 60
    assert await allocator.allocate_once("CUS", 1, "", None, None, True, claim()) == Once(
        first.value, True
    )
    now[0] += 1
    later = await allocator.allocate_once("CUS", 1, "", None, None, True, claim())
    assert (list(later.value[1]), later.replayed) == (["CUS-AAA0002"], False)


async def test_cache_memory_is_bounded_oldest_answers_first() -> None:
    allocator = _cached_allocator(AsyncFakeTransactions(), remember=2)
    for key in ("a", "b", "c"):
        await allocator.allocate_once("CUS", 1, "", None, None, True, claim(key=key))
    kept = await allocator.allocate_once("CUS", 1, "", None, None, True, claim(key="c"))
    dropped = await allocator.allocate_once("CUS", 1, "", None, None, True, claim(key="a"))
    assert (list(kept.value[1]), kept.replayed) == (["CUS-AAA0003"], True)
    assert (list(dropped.value[1]), dropped.replayed) == (["CUS-AAA0004"], False)


# -- the client: one key per call, the same on every retry --------------------------------------


class Script:
    """A scripted server for ``httpx.MockTransport``: answers in turn, requests recorded."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, **options: Any) -> IdManagerClient:
        return IdManagerClient(
            BASE, transport=httpx.MockTransport(self.handle), sleep=self.sleeps.append, **options
        )

    def keys(self) -> list[str | None]:
        return [request.headers.get(KEY) for request in self.requests]


def busy() -> httpx.Response:
    found = kind("storage-unavailable")
    body = {"type": found.type, "title": found.title, "status": 503, "detail": "down"}
    return httpx.Response(
        503, json=body, headers={"content-type": PROBLEM_JSON, "Retry-After": "1"}
    )


def ok(*ids: str, replayed: bool = True) -> httpx.Response:
    body = {"prefix": "CUS", "ids": list(ids), "count": len(ids)}
    return httpx.Response(201, json=body, headers={REPLAYED: str(replayed).lower()})


LOST = [
    httpx.ReadTimeout("answer lost"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.ReadError("connection reset"),
    busy(),
]


def test_client_sends_one_key_per_call_and_repeats_it_on_every_retry() -> None:
    script = Script(*LOST, ok("CUS-AAA0001"), ok("CUS-AAA0002", replayed=False))
    with script.client(retries=4) as client:
        assert client.generate_id("CUS") == "CUS-AAA0001"
        assert client.generate_id("CUS") == "CUS-AAA0002"
    keys = script.keys()
    assert len(keys) == 6 and len(set(keys[:5])) == 1 and keys[5] not in keys[:5]
    assert all(key and len(key) == 32 for key in keys)  # a fresh random key per call
    assert len(script.sleeps) == 4


def test_client_sends_the_callers_own_key_unchanged() -> None:
    script = Script(httpx.ReadTimeout("lost"), ok("INV-AAA0001", "INV-AAA0002"))
    with script.client() as client:
        ids = client.bulk_generate_ids("INV", 2, idempotency_key="invoice-run-2026-11-30")
    assert ids == ["INV-AAA0001", "INV-AAA0002"]
    assert script.keys() == ["invoice-run-2026-11-30"] * 2


def test_client_keys_resets_and_configurations_but_not_reads() -> None:
    stats = {
        "prefix": "CUS",
        "scope": "",
        "exists": True,
        "latest_id": None,
        "next_id": "CUS-AAA0001",
        "count_issued": 0,
        "is_active": True,
        "format": {"separator": "-", "letter_width": 3, "digit_width": 4},
        "template": None,
        "created_at": "2026-11-30T00:00:00Z",
        "updated_at": "2026-11-30T00:00:00Z",
        "created_by": None,
        "width_usage": 0.0,
        "warning": None,
    }
    reset = {
        "prefix": "CUS",
        "scope": "",
        "previous_id": None,
        "latest_id": "CUS-AAA0009",
        "next_id": "CUS-AAA0010",
        "forced": False,
        "dry_run": False,
    }
    script = Script(
        httpx.ReadTimeout("lost"),
        httpx.Response(200, json=reset),
        httpx.ReadTimeout("lost"),
        httpx.Response(200, json=stats),
        httpx.Response(200, json=stats),
    )
    with script.client() as client:
        assert client.reset_sequence("CUS", "CUS-AAA0009").next_id == "CUS-AAA0010"
        assert client.configure_prefix("CUS", is_active=True).is_active
        client.get_prefix_stats("CUS")
    keys = script.keys()
    assert keys[0] == keys[1] and keys[2] == keys[3] and keys[0] != keys[2]
    assert keys[4] is None  # a read changes nothing: nothing to do once


def test_client_gives_up_after_its_retries_with_the_same_key_throughout() -> None:
    script = Script(httpx.ReadTimeout("lost"))
    with script.client(retries=3) as client, pytest.raises(ServiceUnreachableError):
        client.generate_id("CUS")
    assert len(script.requests) == 4 and len(set(script.keys())) == 1


def test_client_a_reused_key_is_the_librarys_error_and_not_retried() -> None:
    found = kind("idempotency-key-reused")
    body = {"type": found.type, "title": found.title, "status": 422, "detail": found.example}
    script = Script(httpx.Response(422, json=body, headers={"content-type": PROBLEM_JSON}))
    with script.client(retries=3) as client, pytest.raises(IdempotencyKeyReusedError):
        client.generate_id("CUS", idempotency_key="used-before")
    assert len(script.requests) == 1


class DroppingTransport(httpx.AsyncBaseTransport):
    """Carries requests to the app, and loses the answers of the first ``drop`` allocations
    on the way back (the app did the work; the client never hears of it)."""

    def __init__(self, app: FastAPI, drop: int, error: type[httpx.TransportError]) -> None:
        self.inner = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        self.drop, self.error = drop, error
        self.keys: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            self.keys.append(request.headers.get(KEY))
            if self.drop:
                self.drop -= 1
                await response.aclose()
                raise self.error("the answer was lost", request=request)
        return response


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
async def test_client_lost_answers_leave_neither_duplicates_nor_gaps(
    keys: Keys, error: type[httpx.TransportError]
) -> None:
    store = AsyncFakeTransactions()
    app = make_app(keys, store)
    transport = DroppingTransport(app, drop=2, error=error)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with (
        app.router.lifespan_context(app),
        AsyncIdManagerClient(
            BASE, api_key=keys.generate, transport=transport, sleep=sleep
        ) as client,
    ):
        first = await client.bulk_generate_ids("INV", 3)  # two answers lost, then given
        second = await client.generate_id("INV")
    assert first == ["INV-AAA0001", "INV-AAA0002", "INV-AAA0003"]
    assert second == "INV-AAA0004"
    assert last_value(store.repository, "INV") == 4  # no gap: nothing was allocated twice
    assert len(set(transport.keys[:3])) == 1 and transport.keys[3] != transport.keys[0]
    assert len(sleeps) == 2


# -- the command line ---------------------------------------------------------------------------


def next_ids(backend: FakeBackend, *args: str) -> Result:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("IDMANAGER_")}
    return CliRunner().invoke(
        cli_app, ["next", *args], obj=backend, env=env, catch_exceptions=False
    )


def test_cli_next_with_a_key_prints_the_same_ids_again_and_allocates_once() -> None:
    backend = FakeBackend()
    first = next_ids(backend, "CUS", "-n", "2", "--idempotency-key", "nightly-2026-11-30")
    assert (first.exit_code, first.stdout, first.stderr) == (0, "CUS-AAA0001\nCUS-AAA0002\n", "")
    again = next_ids(backend, "CUS", "-n", "2", "--idempotency-key", "nightly-2026-11-30")
    assert (again.exit_code, again.stdout) == (0, first.stdout)
    assert "used before" in again.stderr and "nothing was allocated" in again.stderr
    assert last_value(backend.repository, "CUS") == 2
    as_json = next_ids(
        backend, "CUS", "-n", "2", "--idempotency-key", "nightly-2026-11-30", "--json"
    )
    assert json.loads(as_json.stdout)["ids"] == ["CUS-AAA0001", "CUS-AAA0002"]
    # The command line's keys are its own, apart from any API key's.
    assert {owner for owner, _ in backend.repository.answers} == {"cli"}


def test_cli_next_deletes_only_its_own_expired_answers() -> None:
    """Where no server runs the command line cleans up after itself: its own answers older
    than IDMANAGER_IDEMPOTENCY_TTL_S, never an HTTP client's (its retry must still find it)."""
    backend = FakeBackend()
    answers = backend.repository.answers
    next_ids(backend, "CUS", "--idempotency-key", "old-run")
    answers[("api-key:0123456789ab", "client-retry")] = answers[("cli", "old-run")]
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    for key, (_, stored) in list(answers.items()):
        answers[key] = (two_days_ago, stored)
    week = str(7 * 86_400)
    kept = CliRunner().invoke(
        cli_app,
        ["next", "CUS", "--idempotency-key", "run-2"],
        obj=backend,
        env={"IDMANAGER_IDEMPOTENCY_TTL_S": week},
    )
    assert kept.exit_code == 0 and len(answers) == 3  # a week: nothing is old enough
    next_ids(backend, "CUS", "--idempotency-key", "run-3")  # the default: 24 hours
    assert sorted(answers) == [
        ("api-key:0123456789ab", "client-retry"),
        ("cli", "run-2"),
        ("cli", "run-3"),
    ]
    bad = next_ids(backend, "CUS", "--idempotency-key", "run-4", "--keys-kept", "5")
    assert bad.exit_code == 2 and "--keys-kept" in bad.stderr


def test_cli_next_the_same_key_with_another_request_is_an_input_error() -> None:
    backend = FakeBackend()
    next_ids(backend, "CUS", "--idempotency-key", "k-1")
    for other in (["CUS", "-n", "2"], ["VEN"], ["CUS", "--scope", "acme"]):
        result = next_ids(backend, *other, "--idempotency-key", "k-1")
        assert (result.exit_code, result.stdout) == (EXIT_INPUT, ""), result.stderr
        assert result.stderr.startswith("error: ") and "another request" in result.stderr
    assert {k: r.last_value for k, r in backend.repository.rows.items()} == {("", "CUS"): 1}


@pytest.mark.parametrize("key", ["", "two words", "x" * 256])
def test_cli_next_an_invalid_key_is_an_input_error(key: str) -> None:
    backend = FakeBackend()
    result = next_ids(backend, "CUS", "--idempotency-key", key)
    assert (result.exit_code, result.stdout) == (EXIT_INPUT, "")
    assert "--idempotency-key must be 1 to 255 visible ASCII characters" in result.stderr
    assert backend.repository.rows == {}


def test_cli_help_names_the_option() -> None:
    result = CliRunner().invoke(cli_app, ["next", "--help"], env={"COLUMNS": "200"})
    assert "--idempotency-key" in result.stdout
