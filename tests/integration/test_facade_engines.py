"""``IdGeneratorUtil`` given engines: what it sets up per engine goes when the engine goes."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import idmanager
from idmanager import IdGeneratorUtil


async def test_engines_handed_to_the_facade_are_not_kept_alive(tmp_path: Path) -> None:
    gone: list[weakref.ref[object]] = []
    for n in range(3):
        url = f"sqlite:///{tmp_path / f'{n}.db'}"
        idmanager.migrate(url)
        engine = idmanager.create_engine(url)
        assert IdGeneratorUtil.generate_id("CUS", engine) == "CUS-AAA0001"
        assert IdGeneratorUtil.generate_id("CUS", engine) == "CUS-AAA0002"  # set up once
        gone.append(weakref.ref(engine))
        engine.dispose()
        del engine
    async_engine = idmanager.create_async_engine(f"sqlite+aiosqlite:///{tmp_path / '0.db'}")
    assert await IdGeneratorUtil.generate_id("CUS", async_engine) == "CUS-AAA0003"
    gone.append(weakref.ref(async_engine.sync_engine))
    await async_engine.dispose()
    del async_engine
    gc.collect()
    assert [ref() for ref in gone] == [None] * 4
