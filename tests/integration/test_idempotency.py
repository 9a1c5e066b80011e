"""Exactly once on real databases (SQLite, PostgreSQL, MariaDB): idempotency keys under
concurrency, rollbacks, lock waits and expiry, and what a keyed allocation costs in statements.

Each test uses its own prefixes and its own key owner, so tests sharing a database never see
each other's answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from harness import Traced
from sqlalchemy.orm import Session

import idmanager
from idmanager import BusyError, IdManagerRepositoryImpl, SyncIdManagerService
from idmanager.api.app import build_engine
from idmanager.application.use_cases import Once, SyncIdManagerUseCases
from idmanager.domain.errors import IdempotencyKeyReusedError
from idmanager.domain.format import IdRange
from idmanager.domain.repository import Claim, allocation_answer
from idmanager.infrastructure.database import sync_url
from idmanager.settings import Settings

IDEM = "id_manager_idempotency"


def owner_of(prefix: str) -> str:
    return f"test:{prefix}"[:64]


def claim(prefix: str, key: str, request: str = "the request") -> Claim:
    return Claim(owner_of(prefix), key, hashlib.sha256(request.encode()).hexdigest())


def ordinals(ids: IdRange) -> list[int]:
    return list(range(ids.first, ids.last + 1))


@contextmanager
def plain_engine(url: str) -> Iterator[sa.Engine]:
    """An engine outside idmanager's use: to look at and arrange the tables directly."""
    engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def last_value(url: str, prefix: str) -> int | None:
    with plain_engine(url) as engine, engine.connect() as connection:
        value = connection.execute(
            sa.text("SELECT last_value FROM id_managers WHERE scope = '' AND prefix = :p"),
            {"p": prefix},
        ).scalar()
    return None if value is None else int(value)


def stored_keys(url: str, owner: str) -> list[str]:
    with plain_engine(url) as engine, engine.connect() as connection:
        rows = connection.execute(
            sa.text(f"SELECT idem_key FROM {IDEM} WHERE owner = :o ORDER BY idem_key"),
            {"o": owner},
        )
        return [row[0] for row in rows]


def check_once(answers: list[Once[IdRange]], count: int) -> IdRange:
    """Check that every repeat got the first answer and that exactly one did the work."""
    assert len({tuple(a.value) for a in answers}) == 1, {tuple(a.value) for a in answers}
    assert [a.replayed for a in answers].count(False) == 1
    value = answers[0].value
    assert value.size == count
    return value


# -- concurrent repeats --------------------------------------------------------------------------


async def test_concurrent_repeats_of_one_key_make_one_allocation(
    backend: str, url: str, prefix: str
) -> None:
    """30 tasks and 8 threads send one keyed request at once (with unkeyed and other-keyed
    traffic beside them): one allocation, one answer for all."""
    engine = idmanager.create_async_engine(url)
    sync_engine = idmanager.create_engine(url)
    try:
        use_cases = idmanager.connect(engine)
        # A sequence that does not exist yet: the repeats race to create it as well.
        tasks: list[Any] = [
            use_cases.allocate_once(prefix, 3, claim(prefix, "k-1")) for _ in range(30)
        ]
        tasks += [use_cases.allocate_once(prefix, 1, claim(prefix, f"o-{i}")) for i in range(10)]
        tasks += [use_cases.allocate(prefix) for _ in range(5)]
        results = await asyncio.gather(*tasks)
        shared = check_once(list(results[:30]), 3)
        others = [list(r.value) for r in results[30:40]] + [list(r) for r in results[40:]]
        assert all(not r.replayed for r in results[30:40])

        # Threads, on the sequence that now exists (one statement on PostgreSQL).
        sync_use_cases = idmanager.connect(sync_engine)
        answers: list[Once[IdRange]] = []
        extra: list[list[str]] = []
        start = threading.Barrier(8)

        failed: list[BaseException] = []

        def repeat(i: int) -> None:
            start.wait()
            try:
                answers.append(sync_use_cases.allocate_once(prefix, 2, claim(prefix, "k-2")))
                alone = sync_use_cases.allocate_once(prefix, 1, claim(prefix, f"t-{i}"))
                extra.append(list(alone.value))
            except BaseException as exc:
                failed.append(exc)

        threads = [threading.Thread(target=repeat, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failed == [] and len(answers) == len(extra) == 8
        threaded = check_once(answers, 2)
    finally:
        await engine.dispose()
        sync_engine.dispose()

    every = [*shared, *threaded, *(i for ids in others + extra for i in ids)]
    assert len(every) == len(set(every)), "a duplicate ID"
    # 3 + 2 for the two keys (once each), 10 + 5 + 8 single IDs: no gap, nothing twice.
    assert sorted(idmanager.parse_id(i).ordinal for i in every) == list(range(1, 29))
    assert last_value(url, prefix) == 28
    assert stored_keys(url, owner_of(prefix)) == sorted(
        ["k-1", "k-2", *(f"o-{i}" for i in range(10)), *(f"t-{i}" for i in range(8))]
    )


async def test_the_same_key_with_another_request_is_refused(
    backend: str, url: str, prefix: str
) -> None:
    engine = idmanager.create_async_engine(url)
    try:
        use_cases = idmanager.connect(engine)
        first = await use_cases.allocate_once(prefix, 2, claim(prefix, "k-1", "two IDs"))
        with pytest.raises(IdempotencyKeyReusedError, match="another request"):
            await use_cases.allocate_once(prefix, 3, claim(prefix, "k-1", "three IDs"))
        assert last_value(url, prefix) == 2
        # Keys are compared exactly (MySQL's default collation would not tell these apart).
        other_case = await use_cases.allocate_once(prefix, 3, claim(prefix, "K-1", "three IDs"))
        assert not other_case.replayed and last_value(url, prefix) == 5
        # At the same time: one of the two requests wins the key, the other is refused.
        racing = [
            use_cases.allocate_once(prefix, n, claim(prefix, "k-2", f"{n} IDs")) for n in (1, 5) * 5
        ]
        results = await asyncio.gather(*racing, return_exceptions=True)
    finally:
        await engine.dispose()
    assert list(first.value) == [f"{prefix}-AAA0001", f"{prefix}-AAA0002"]
    won = [r for r in results if isinstance(r, Once)]
    refused = [r for r in results if isinstance(r, IdempotencyKeyReusedError)]
    assert len(won) == 5 and len(refused) == 5, results
    winner = check_once(won, won[0].value.size)
    assert last_value(url, prefix) == 5 + winner.size


# -- a first attempt rolled back, or still in flight ---------------------------------------------


def hold_the_key(
    url: str, prefix: str, key: Claim, outcome: str, waiter: SyncIdManagerUseCases
) -> tuple[IdRange, Once[IdRange], float]:
    """Take ``key`` in an open transaction (as a first request in flight), start a repeat in a
    thread, end the transaction with ``outcome``; return the held IDs, the repeat's answer,
    and how long the repeat waited after the first ended."""
    engine = idmanager.create_engine(url)
    got: list[Once[IdRange]] = []
    try:
        with Session(engine) as session:
            repository = IdManagerRepositoryImpl(session)
            held = SyncIdManagerService(repository).generate_range(prefix, 2)
            repository.remember(key, 201, allocation_answer(held))
            thread = threading.Thread(
                target=lambda: got.append(waiter.allocate_once(prefix, 2, key)), daemon=True
            )
            thread.start()
            thread.join(0.5)
            assert thread.is_alive(), "the repeat did not wait for the request in flight"
            ended = time.monotonic()
            session.commit() if outcome == "commit" else session.rollback()
        thread.join(30)
        waited = time.monotonic() - ended
        assert got, "the repeat never finished"
    finally:
        engine.dispose()
    return held, got[0], waited


@pytest.mark.parametrize("outcome", ["rollback", "commit"])
def test_a_repeat_waits_for_the_first_and_a_rollback_leaves_the_key_free(
    backend: str, url: str, prefix: str, outcome: str
) -> None:
    engine = idmanager.create_engine(url)
    try:
        idmanager.connect(engine).allocate(prefix)  # the sequence exists
        waiter = idmanager.connect(engine)
        held, repeat, waited = hold_the_key(url, prefix, claim(prefix, "k-1"), outcome, waiter)
    finally:
        engine.dispose()
    assert waited < 5
    assert list(held) == [f"{prefix}-AAA0002", f"{prefix}-AAA0003"]
    if outcome == "commit":
        # The first request's answer: nothing allocated a second time.
        assert (list(repeat.value), repeat.replayed) == (list(held), True)
    else:
        # Nothing of the first survived, the key with it: the repeat did the work, and got
        # the same numbers back (the rolled-back ones were never given).
        assert (list(repeat.value), repeat.replayed) == (list(held), False)
    assert last_value(url, prefix) == 3
    assert stored_keys(url, owner_of(prefix)) == ["k-1"]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_a_repeat_waits_for_the_first_at_most_the_lock_timeout(
    backend: str, url: str, prefix: str
) -> None:
    """As the service runs (IDMANAGER_LOCK_TIMEOUT_MS): a repeat stuck behind its first
    request gives up with BusyError (503, retryable), takes nothing, and its retry after the
    first committed gets the first's answer."""
    timeout_ms = 600
    engine = build_engine(Settings(_env_file=None, database_url=url, lock_timeout_ms=timeout_ms))
    sync_engine = idmanager.create_engine(url)
    key = claim(prefix, "k-1")
    other = prefix + "_HELD"
    try:
        use_cases = idmanager.connect(engine)  # as the service does
        await use_cases.allocate(prefix)
        with Session(sync_engine) as session:
            # The first request, in flight: its allocation (of another prefix, so that the
            # repeat waits on the key itself, not on the sequence's row) and its answer.
            repository = IdManagerRepositoryImpl(session)
            held = SyncIdManagerService(repository).generate_range(other, 2)
            repository.remember(key, 201, allocation_answer(held))
            began = time.monotonic()
            with pytest.raises(BusyError):
                await use_cases.allocate_once(prefix, 2, key)
            waited = time.monotonic() - began
            session.commit()
        assert last_value(url, prefix) == 1  # the refused repeat took nothing
        retry = await use_cases.allocate_once(prefix, 2, key)
    finally:
        await engine.dispose()
        sync_engine.dispose()
    least = timeout_ms / 1000 if backend == "postgresql" else 1.0  # InnoDB: whole seconds
    assert least <= waited < least + 3, waited
    assert (list(retry.value), retry.replayed) == (list(held), True)


# -- the answer survives, then expires -----------------------------------------------------------


async def test_the_answer_survives_a_restart_and_expires(
    backend: str, url: str, prefix: str
) -> None:
    key = claim(prefix, "k-1")
    engine = idmanager.create_async_engine(url)
    try:
        first = await idmanager.connect(engine).allocate_once(prefix, 2, key)
    finally:
        await engine.dispose()
    engine = idmanager.create_async_engine(url)  # a new process, say
    try:
        use_cases = idmanager.connect(engine)
        again = await use_cases.allocate_once(prefix, 2, key)
        assert (list(again.value), again.replayed) == (list(first.value), True)
        fresh = claim(prefix, "k-fresh")
        await use_cases.allocate_once(prefix, 1, fresh)
        with plain_engine(url) as plain, plain.begin() as connection:
            connection.execute(
                sa.text(f"UPDATE {IDEM} SET created_at = :at WHERE owner = :o AND idem_key = :k"),
                {"at": datetime(2026, 1, 1), "o": key.owner, "k": key.key},
            )
        # Another owner's clean-up (the command line's) leaves this owner's answers alone.
        cutoff = datetime.now(UTC) - timedelta(minutes=10)
        await use_cases.forget_answers(cutoff, owner=key.owner + "-other")
        assert stored_keys(url, key.owner) == ["k-1", "k-fresh"]
        # Kept while younger than the cut-off (here ten minutes: the fresh one is seconds old).
        forgotten = await use_cases.forget_answers(cutoff)
        assert forgotten >= 1
        assert stored_keys(url, key.owner) == ["k-fresh"]
        # Forgotten, the key names a new request: it allocates again.
        later = await use_cases.allocate_once(prefix, 2, key)
        assert (list(later.value), later.replayed) == (
            [f"{prefix}-AAA0004", f"{prefix}-AAA0005"],
            False,
        )
    finally:
        await engine.dispose()


OLD_ANSWERS = 20_000


async def test_forgetting_old_answers_does_not_hold_up_allocations(
    backend: str, url: str, prefix: str
) -> None:
    """20,000 expired answers deleted in batches of 1,000 (a pause between them) while
    keyed allocations go on: none waits for more than a moment of the deletion."""
    old = owner_of("old" + prefix)
    with plain_engine(url) as plain, plain.begin() as connection:
        connection.execute(
            sa.text(
                f"INSERT INTO {IDEM} (owner, idem_key, fingerprint, status, answer, created_at) "
                "VALUES (:o, :k, 'f', 201, '{}', :at)"
            ),
            [{"o": old, "k": f"old-{i}", "at": datetime(2026, 1, 1)} for i in range(OLD_ANSWERS)],
        )
    engine = idmanager.create_async_engine(url)
    deletes: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        use_cases = idmanager.connect(engine)
        await use_cases.allocate(prefix)

        async def allocate(n: int) -> float:
            began = time.perf_counter()
            await use_cases.allocate_once(prefix, 1, claim(prefix, f"k-{n}"))
            return time.perf_counter() - began

        before = [await allocate(n) for n in range(20)]
        forgetting = asyncio.create_task(
            use_cases.forget_answers(datetime.now(UTC) - timedelta(hours=1))
        )
        began = time.perf_counter()
        during: list[float] = []
        while not forgetting.done():
            during.append(await allocate(100 + len(during)))
        forgotten = await forgetting
        took = time.perf_counter() - began
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
        await engine.dispose()

    figures = {
        "backend": backend,
        "forgotten": forgotten,
        "delete_statements": len(deletes),
        "forget_s": round(took, 2),
        "allocations_during": len(during),
        "before_median_ms": round(statistics.median(before) * 1000, 1),
        "during_median_ms": round(statistics.median(during) * 1000, 1) if during else None,
        "during_max_ms": round(max(during) * 1000, 1) if during else None,
    }
    print(f"\n[idempotency] forgetting old answers: {figures}")
    assert forgotten >= OLD_ANSWERS and stored_keys(url, old) == []
    assert len(deletes) >= OLD_ANSWERS // 1000  # short transactions, a batch each
    # The fresh answers stay; allocations went on while the old ones went, and none of them
    # waited for the whole deletion.
    assert len(stored_keys(url, owner_of(prefix))) == 20 + len(during)
    assert len(during) >= 20, figures
    assert max(during) < took / 4, figures


# -- what a key costs ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_a_keyed_allocation_is_one_statement_on_postgres_one_insert_more_elsewhere(
    backend: str, url: str, prefix: str, mode: str
) -> None:
    # Counted where the database receives them: the allocation runs on the driver connection.
    traced = Traced(backend, mode == "async", url)

    async def run(value: Any) -> Any:
        return await value if asyncio.iscoroutine(value) else value

    use_cases = idmanager.connect(traced.engine)
    await run(use_cases.allocate(prefix, 2))  # the sequence exists
    try:
        async with traced.received() as keyed:
            once = await run(use_cases.allocate_once(prefix, 2, claim(prefix, "k-1")))
        async with traced.received() as replayed:
            again = await run(use_cases.allocate_once(prefix, 2, claim(prefix, "k-1")))
    finally:
        await run(traced.engine.dispose())
    expected = [f"{prefix}-AAA0003", f"{prefix}-AAA0004"]
    assert list(once.value) == list(again.value) == expected
    control = ("BEGIN", "BEGIN IMMEDIATE", "COMMIT")  # the database sees COMMIT too
    work = [s for s in keyed if s.strip().upper() not in control]
    stored = [s for s in work if IDEM in s]
    if backend == "postgresql":
        # The allocation and its answer in ONE statement (a data-modifying CTE), committed
        # by itself, as an allocation without a key.
        assert len(keyed) == 1 and stored == keyed, keyed
        assert "id_managers" in keyed[0]
    else:
        # The allocation's statements, and one INSERT more in its transaction.
        assert len(stored) == 1 and stored[0] is work[-1], keyed
        assert stored[0].lstrip().upper().startswith(f"INSERT INTO {IDEM.upper()}")
        assert work[:-1] and all("id_managers" in s for s in work[:-1]), keyed
    # A repeat: the refused attempt, then the stored answer read back.
    assert any(IDEM in s and s.lstrip().upper().startswith("SELECT") for s in replayed)
    print(f"\n[idempotency] statements of a keyed allocation, {backend} {mode}: {len(keyed)}")
