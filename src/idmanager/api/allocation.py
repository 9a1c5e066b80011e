"""How the service allocates: chosen once at start-up, so the route never branches on it.

:class:`DatabaseAllocator` commits every allocation before it answers; :class:`CachedAllocator`
(``IDMANAGER_BLOCK_CACHE``) serves small ones from blocks reserved ahead by this process and
the rest from the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

from ..application.block_cache import BlockCache
from ..application.service import sequence_key
from ..application.use_cases import IdManagerUseCases, Once
from ..domain.errors import IdempotencyKeyReusedError
from ..domain.period import resolve_prefix
from ..domain.repository import Claim

logger = logging.getLogger("idmanager.api")

Allocated = tuple[str, Sequence[str]]  # the resolved prefix, and its IDs in order
REUSED = "This Idempotency-Key was used with another request; send a new key for a new request"


class Allocator(Protocol):
    """Allocates IDs for the HTTP route."""

    async def allocate(
        self,
        prefix: str,
        count: int,
        scope: str,
        on: date | None,
        actor: str | None = None,
        create: bool = True,
    ) -> Allocated:
        """Return the resolved prefix and ``count`` new IDs.

        ``actor`` is named as the creator of a sequence this creates; ``create`` False
        refuses to create one (``PrefixNotFoundError``).
        """

    async def allocate_once(
        self,
        prefix: str,
        count: int,
        scope: str,
        on: date | None,
        actor: str | None,
        create: bool,
        claim: Claim,
    ) -> Once[Allocated]:
        """Allocate as :meth:`allocate`, once per claim: a repeat gets the same IDs."""

    async def close(self) -> None:
        """Release what the allocator holds (at shutdown)."""


class DatabaseAllocator:
    """Each allocation is one statement, committed before the answer."""

    def __init__(self, use_cases: IdManagerUseCases) -> None:
        self.use_cases = use_cases

    async def allocate(
        self,
        prefix: str,
        count: int,
        scope: str,
        on: date | None,
        actor: str | None = None,
        create: bool = True,
    ) -> Allocated:
        ids = await self.use_cases.allocate(
            prefix, count, scope=scope, on=on, actor=actor, create=create
        )
        return ids.prefix, ids

    async def allocate_once(
        self,
        prefix: str,
        count: int,
        scope: str,
        on: date | None,
        actor: str | None,
        create: bool,
        claim: Claim,
    ) -> Once[Allocated]:
        # The answer is stored with the allocation, in the same transaction.
        once = await self.use_cases.allocate_once(
            prefix, count, claim, scope=scope, on=on, actor=actor, create=create
        )
        return Once((once.value.prefix, once.value), once.replayed)

    async def close(self) -> None:
        return None


@dataclass
class _Admitting:
    """A sequence's first request in flight, and how many requests wait behind it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class CachedAllocator:
    """Up to ``max_count`` IDs from the block cache; larger requests from the database.

    Answers to requests with an idempotency key are remembered in this process's memory
    (bounded, expiring): a repeat that reaches this process gets the same IDs; one that
    reaches another worker or replica does not (the block cache trades that for speed).
    Requests too large for the cache are the database's, keys and answers included.
    """

    def __init__(
        self,
        cache: BlockCache,
        database: DatabaseAllocator,
        max_count: int,
        *,
        remember: int = 100_000,
        ttl: float = 86_400.0,
    ) -> None:
        self.cache: BlockCache | None = cache
        self.database = database
        self.max_count = max_count
        self.served = 0  # IDs handed out from the cache, for the metrics
        self.remember, self.ttl = remember, ttl
        # (owner, key) -> (when, fingerprint, the answer, or its future while in flight)
        self._answers: OrderedDict[
            tuple[str, str], tuple[float, str, asyncio.Future[Allocated]]
        ] = OrderedDict()
        # Sequences whose first request is on its way through the database (:meth:`_first_use`).
        self._admitting: dict[tuple[str, str], _Admitting] = {}

    async def allocate(
        self,
        prefix: str,
        count: int,
        scope: str,
        on: date | None,
        actor: str | None = None,
        create: bool = True,
    ) -> Allocated:
        cache = self.cache
        # A sequence the cache does not hold yet is reached through the database once: its
        # creation, if any, is then checked and audited under the caller's name, and blocks
        # are fetched only for sequences that exist.
        if cache is None or count > self.max_count:
            return await self.database.allocate(prefix, count, scope, on, actor, create)
        if on is not None and "{" in prefix:
            # The document date's window holds here as in the database's path.
            sequence_key(prefix, scope, on, self.database.use_cases.options)
        if not cache.holds(prefix, scope, on):
            first = await self._first_use(cache, prefix, count, scope, on, actor, create)
            if first is not None:
                return first
        try:
            if count == 1:
                ids = [await cache.generate_id(prefix, scope=scope, on=on)]
            else:
                ids = await cache.bulk_generate_ids(prefix, count, scope=scope, on=on)
        except RuntimeError:
            if self.cache is not None:
                raise
            # Closed meanwhile: the database serves the last requests while the tails go back.
            return await self.database.allocate(prefix, count, scope, on, actor, create)
        self.served += count
        return resolve_prefix(prefix, on, fiscal_year_start=cache.fiscal_year_start), ids

    async def _first_use(
        self,
        cache: BlockCache,
        prefix: str,
        count: int,
        scope: str,
        on: date | None,
        actor: str | None,
        create: bool,
    ) -> Allocated | None:
        """Serve a sequence's first request here through the database, then admit it to the
        cache; return None when another request admitted it meanwhile (take a block then).

        One request at a time per sequence: were a second one's statement still on its way
        to the database when the first one's admission let blocks be fetched, it could take
        an ID past the next block, and a later request of this process a lower one from it.
        """
        key = sequence_key(prefix, scope, on, self.database.use_cases.options)
        entry = self._admitting.get(key)
        if entry is None:
            entry = self._admitting[key] = _Admitting()
        entry.users += 1
        try:
            async with entry.lock:
                if cache.holds(prefix, scope, on):
                    return None
                allocated = await self.database.allocate(prefix, count, scope, on, actor, create)
                cache.admit(prefix, scope, on)  # it exists: the next requests take blocks
                return allocated
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._admitting[key]

    async def allocate_once(
        self,
        prefix: str,
        count: int,
        scope: str,
        on: date | None,
        actor: str | None,
        create: bool,
        claim: Claim,
    ) -> Once[Allocated]:
        if count > self.max_count:
            # Served by the database: its answer is kept there too, for every process.
            return await self.database.allocate_once(prefix, count, scope, on, actor, create, claim)
        key = (claim.owner, claim.key)
        now = time.monotonic()
        found = self._answers.get(key)
        while found is not None and now - found[0] <= self.ttl:
            if found[1] != claim.fingerprint:
                raise IdempotencyKeyReusedError(REUSED)
            # A repeat (even one racing the first): the first request's answer.
            try:
                return Once(await asyncio.shield(found[2]), True)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not found[2].cancelled() or (task is not None and task.cancelling()):
                    raise  # this request itself was cancelled
            # The first was cancelled, having given nothing: this one takes the key over
            # (or waits for the repeat that took it first).
            now = time.monotonic()
            found = self._answers.get(key)
        answer: asyncio.Future[Allocated] = asyncio.get_running_loop().create_future()
        self._answers[key] = (now, claim.fingerprint, answer)
        while len(self._answers) > self.remember:
            self._answers.popitem(last=False)
        try:
            allocated = await self.allocate(prefix, count, scope, on, actor, create)
        except Exception as exc:
            # Nothing was given: the key is free again, and waiting repeats learn why.
            self._answers.pop(key, None)
            answer.set_exception(exc)
            answer.exception()  # retrieved: no "never retrieved" warning when none waits
            raise
        except BaseException:  # cancelled: the repeats waiting for it try again
            self._answers.pop(key, None)
            answer.cancel()
            raise
        answer.set_result(allocated)
        return Once(allocated, False)

    async def close(self) -> None:
        """Hand back the unused tails of the blocks; new requests go to the database."""
        cache, self.cache = self.cache, None
        if cache is None:
            return
        try:
            await cache.close()
        except Exception as exc:  # the process is stopping: report, never hang or crash
            logger.error("block cache: could not hand back the unused IDs: %s", exc)
            return
        stats = cache.stats
        logger.info(
            "block cache closed: %d blocks fetched, %d IDs handed back, %d IDs lost (gaps)",
            stats.blocks_fetched,
            stats.ids_handed_back,
            stats.ids_lost,
        )
