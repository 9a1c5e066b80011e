"""Scopes and period templates under concurrency: independent sequences, 0 duplicates."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import idmanager
from idmanager import IdGeneratorUtil, parse_id

pytestmark = pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])


async def allocate(
    engine: AsyncEngine, prefix: str, count: int, *, scope: str = "", on: date | None = None
) -> list[str]:
    issued = []
    for _ in range(count):
        async with AsyncSession(engine) as session:
            issued.append(await IdGeneratorUtil.generate_id(prefix, session, scope=scope, on=on))
            await session.commit()
    return issued


def ordinals(issued: list[str], prefix: str) -> list[int]:
    parsed = [parse_id(text) for text in issued]
    assert {p.prefix for p in parsed} == {prefix}
    return sorted(p.ordinal for p in parsed)


async def test_tenants_are_isolated_under_concurrency(url: str, prefix: str) -> None:
    engine = idmanager.create_async_engine(url)
    tasks = [allocate(engine, prefix, 25, scope=scope) for scope in ("acme", "globex") * 8]
    results = await asyncio.gather(*tasks)
    await engine.dispose()
    for scope_results in (results[0::2], results[1::2]):
        issued = [i for r in scope_results for i in r]
        # Each tenant's sequence is complete on its own: 1..200, no duplicate, no gap.
        assert ordinals(issued, prefix) == list(range(1, 201))


async def test_one_period_under_concurrency_and_a_back_dated_document(
    url: str, prefix: str
) -> None:
    engine = idmanager.create_async_engine(url)
    template = prefix + "{YYYY}"
    december, january = date(2026, 12, 31), date(2027, 1, 1)
    results = await asyncio.gather(
        *(allocate(engine, template, 20, on=december if i % 2 else january) for i in range(12))
    )
    late = await allocate(engine, template, 1, on=date(2026, 3, 1))  # back-dated
    await engine.dispose()
    issued_2026 = [i for r in results[1::2] for i in r] + late
    issued_2027 = [i for r in results[0::2] for i in r]
    assert ordinals(issued_2026, prefix + "2026") == list(range(1, 122))
    assert ordinals(issued_2027, prefix + "2027") == list(range(1, 121))
    assert late == [f"{prefix}2026-AAA0121"]
