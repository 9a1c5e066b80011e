"""The block cache (opt-in): reserve blocks of IDs in one statement, hand them out from memory.

Faster than a statement per ID by orders of magnitude, at a price the caller must accept:
IDs are unique but increase only per process (two processes interleave their blocks), and a
crash loses the rest of its blocks (gaps, never duplicates). It is never the default.

The next block is fetched before the current one runs out (double buffer); the block size
doubles while blocks last less than ``grow_below`` seconds and halves when they last more
than ``shrink_above``; :meth:`close` hands the unused tail back when no other process has
allocated since (compare-and-set on ``last_value``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from typing import Any

from ..domain.format import IdRange
from ..domain.period import resolve_prefix
from .service import SyncIdManagerService, check_scope

Key = tuple[str, str]
Operation = Callable[[SyncIdManagerService], object]

# IDs of a block formatted at once; the rest of the block stays two integers until reached.
# A reservation then holds about 10 KB, not its whole letter block formatted (72 KB for the
# first block of 1,000 IDs, 600 KB from 9,999 on): 10,000 hot prefixes take about 100 MiB,
# not 700. Single IDs go as fast; a bulk of 100 takes its IDs a chunk at a time (2/3 the
# speed of one slice, still about 10 million IDs per second).
CHUNK = 128


@dataclass(slots=True)
class CacheStats:
    """What the cache has done so far (exported as metrics by the HTTP service)."""

    blocks_fetched: int = 0
    ids_fetched: int = 0
    ids_handed_back: int = 0
    ids_lost: int = 0


@dataclass(slots=True)
class _Reservation:
    """The IDs reserved for one ``(scope, prefix)``: the block in use and the one fetched ahead."""

    key: Key
    size: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    current: IdRange | None = None
    spare: IdRange | None = None
    chunks: Iterator[list[str]] = field(default_factory=lambda: iter(()))
    chunk: list[str] = field(default_factory=list)
    pos: int = 0
    # IDs of the current block after ``chunk``.
    after: int = 0
    # The fast path takes ``chunk[pos]`` while ``pos < ready``: no chunk to change, no fetch
    # to start. Recomputed by ``arm`` whenever anything it depends on changes.
    ready: int = 0
    installed_at: float = 0.0
    # The fetch of the next block in flight: an asyncio task, or an event for threads.
    fetch: asyncio.Task[None] | threading.Event | None = None
    # Evicted (idle, or past the bound): whoever still holds it starts a fresh one.
    evicted: bool = False

    @property
    def left(self) -> int:
        """Return how many IDs of the current block are still unissued."""
        return len(self.chunk) - self.pos + self.after

    def take(self) -> str | None:
        """Return the next reserved ID, or None when both blocks are used up (hold the lock)."""
        while True:
            pos = self.pos
            if pos < len(self.chunk):
                self.pos = pos + 1
                return self.chunk[pos]
            chunk = next(self.chunks, None)
            if chunk is not None:
                self.chunk, self.pos = chunk, 0
                self.after -= len(chunk)
                continue
            if self.spare is None:
                return None
            self.install(self.spare)
            self.spare = None

    def wants_block(self) -> bool:
        """Return True when the next block should be fetched now (hold the lock)."""
        return self.fetch is None and self.spare is None and self.left <= self.size // 2

    def arm(self) -> None:
        """Set how far the fast path may go: the chunk's end, or where a fetch falls due."""
        end = len(self.chunk)
        if self.fetch is None and self.spare is None:
            # Taking chunk[p] leaves end - p - 1 + after IDs; a fetch is due at size // 2.
            end = min(end, end + self.after - 1 - self.size // 2)
        self.ready = max(end, 0)

    def install(self, block: IdRange) -> None:
        self.current, self.chunks, self.chunk, self.pos = block, block.chunks(CHUNK), [], 0
        self.after, self.installed_at = block.size, time.monotonic()

    def empty(self) -> None:
        self.current = self.spare = None
        self.chunk, self.chunks, self.pos, self.after, self.ready = [], iter(()), 0, 0, 0

    def unused(self) -> list[tuple[int, int]]:
        """Return the reserved but unissued ordinals as ``(first, last)`` ranges."""
        ranges = []
        left = self.left
        if self.current is not None and left:
            ranges.append((self.current.last - left + 1, self.current.last))
        if self.spare is not None:
            ranges.append((self.spare.first, self.spare.last))
        return ranges


class _Blocks:
    """What both caches share: keys, block sizes, and the arithmetic of handing back."""

    def __init__(
        self,
        *,
        initial_block: int = 1_000,
        min_block: int = 100,
        max_block: int = 100_000,
        grow_below: float = 5.0,
        shrink_above: float = 60.0,
        fiscal_year_start: int = 1,
        max_prefixes: int = 10_000,
        idle_after: float = 600.0,
    ) -> None:
        if not 1 <= min_block <= initial_block <= max_block:
            raise ValueError(
                "Block sizes must satisfy 1 <= min_block <= initial_block <= max_block"
            )
        self.initial_block, self.min_block, self.max_block = initial_block, min_block, max_block
        self.grow_below, self.shrink_above = grow_below, shrink_above
        self.fiscal_year_start = fiscal_year_start
        self.max_prefixes, self.idle_after = max_prefixes, idle_after
        self.stats = CacheStats()
        self._reservations: dict[Key, _Reservation] = {}
        # (scope, prefix) as the caller wrote it -> its reservation; periods resolve each time.
        # Bounded: spellings are many (case, spaces), reservations are per normalized name.
        self._known: dict[Key, _Reservation] = {}
        self._closed = False
        self._swept_at = time.monotonic()

    def _reservation(self, prefix: str, scope: str, on: date | None) -> _Reservation:
        if self._closed:
            raise RuntimeError("The block cache is closed")
        reservation = self._known.get((scope, prefix))
        if reservation is not None:
            return reservation
        key = (
            check_scope(scope),
            resolve_prefix(prefix, on, fiscal_year_start=self.fiscal_year_start),
        )
        reservation = self._reservations.get(key)
        if reservation is None:
            reservation = self._reservations.setdefault(key, _Reservation(key, self.initial_block))
        if "{" not in prefix:  # a period template resolves anew each time: the date moves
            if len(self._known) >= 4 * self.max_prefixes:
                self._known.clear()  # a lookup aid only: spellings in use come back at once
            self._known[(scope, prefix)] = reservation
        return reservation

    def holds(self, prefix: str, scope: str = "", on: date | None = None) -> bool:
        """Return True when this cache reserves IDs of the sequence (so it exists)."""
        if (scope, prefix) in self._known:
            return True
        key = (scope, resolve_prefix(prefix, on, fiscal_year_start=self.fiscal_year_start))
        return key in self._reservations

    def admit(self, prefix: str, scope: str = "", on: date | None = None) -> None:
        """Hold the sequence from now on: its next ID comes from a block fetched for it."""
        self._reservation(prefix, scope, on)

    def _idle(self) -> list[_Reservation]:
        """Take out the reservations to evict: idle too long, or the oldest past the bound.

        An evicted prefix hands back its unused tail, as at shutdown, and is reserved anew
        on its next use. Looked at, at most, once a minute or when the bound is passed.
        """
        now = time.monotonic()
        over = len(self._reservations) - self.max_prefixes
        if over <= 0 and now - self._swept_at < 60:
            return []
        self._swept_at = now
        by_age = sorted(self._reservations.values(), key=lambda r: r.installed_at)
        evicted = [
            r
            for i, r in enumerate(by_age)
            if (i < over or now - r.installed_at > self.idle_after) and r.fetch is None
        ]
        for reservation in evicted:
            reservation.evicted = True
            self._reservations.pop(reservation.key, None)
        if evicted:
            gone = {id(r) for r in evicted}
            self._known = {k: r for k, r in self._known.items() if id(r) not in gone}
        return evicted

    def _ready(self, prefix: str, scope: str, count: int) -> list[str]:
        """Return up to ``count`` IDs already formatted in a known prefix's chunk (maybe none).

        The fast path: no resolution, no fetch, one lock and a slice.
        """
        reservation = self._known.get((scope, prefix))
        if reservation is None:
            return []
        with reservation.lock:
            pos = reservation.pos
            end = min(pos + count, reservation.ready)
            if end <= pos:
                return []
            reservation.pos = end
            return reservation.chunk[pos:end]

    def _take(self, reservation: _Reservation) -> str | None:
        """Take an ID the slow way (hold the lock): change chunk or block, note a fetch due."""
        if self._closed:
            raise RuntimeError("The block cache is closed")
        return reservation.take()

    def _current(self, reservation: _Reservation) -> _Reservation:
        """Return ``reservation``, or the one that replaced it if it was evicted."""
        if not reservation.evicted:
            return reservation
        fresh = _Reservation(reservation.key, self.initial_block)
        return self._reservations.setdefault(reservation.key, fresh)

    def _fetch_operation(self, reservation: _Reservation) -> tuple[int, Operation]:
        scope, prefix = reservation.key
        size = reservation.size
        if reservation.current is not None:
            lasted = time.monotonic() - reservation.installed_at
            if lasted < self.grow_below:
                size = min(size * 2, self.max_block)
            elif lasted > self.shrink_above:
                size = max(size // 2, self.min_block)
        return size, lambda s: s.generate_range(prefix, size, scope=scope)

    def _store(self, reservation: _Reservation, size: int, block: object) -> None:
        assert isinstance(block, IdRange)
        with reservation.lock:
            self.stats.blocks_fetched += 1
            self.stats.ids_fetched += block.size
            reservation.size = size
            if reservation.left == 0 and reservation.spare is None:
                reservation.install(block)
            else:
                reservation.spare = block
            reservation.arm()

    @staticmethod
    def _fetched(reservation: _Reservation) -> None:
        with reservation.lock:
            reservation.fetch = None
            reservation.arm()

    def _releases(self) -> Iterator[tuple[int, Operation | None]]:
        """Yield, per prefix, the unused count and the operation that hands back its tail."""
        self._closed = True
        self._known.clear()
        reservations = list(self._reservations.values())
        self._reservations.clear()
        return self._hand_back(reservations)

    @staticmethod
    def _hand_back(reservations: list[_Reservation]) -> Iterator[tuple[int, Operation | None]]:
        for reservation in reservations:
            scope, prefix = reservation.key
            with reservation.lock:
                ranges = sorted(reservation.unused())
                reservation.empty()
            if not ranges:
                continue
            # Only the top of the sequence can go back, and only as one contiguous run.
            first, last = ranges[-1]
            for lower_first, lower_last in reversed(ranges[:-1]):
                if lower_last + 1 != first:
                    break
                first = lower_first
            unused = sum(b - a + 1 for a, b in ranges)
            yield unused, partial(_release, prefix, scope, first, last)

    def _account(self, unused: int, returned: object) -> None:
        assert isinstance(returned, int)
        self.stats.ids_handed_back += returned
        self.stats.ids_lost += unused - returned


def _release(prefix: str, scope: str, first: int, last: int, service: SyncIdManagerService) -> int:
    return last - first + 1 if service.release_range(prefix, first, last, scope=scope) else 0


class BlockCache(_Blocks):
    """The block cache for asyncio: ``await cache.generate_id("CUS")``.

    ``run`` runs a service operation in its own committed transaction, e.g.
    ``IdManagerUseCases(engine).run``. Use one cache per event loop and :meth:`close` it on
    shutdown to hand back what was not used.
    """

    def __init__(self, run: Callable[[Operation], Awaitable[object]], **options: Any) -> None:
        super().__init__(**options)
        self._run = run
        self._evicting: set[asyncio.Future[None]] = set()

    async def generate_id(self, prefix: str, *, scope: str = "", on: date | None = None) -> str:
        """Return the next ID of ``prefix`` from the reserved block, fetching one if needed.

        A period template resolves from ``on``, the document's date (default: today, UTC).
        """
        # The fast path, inlined: a call to a shared helper costs a fifth of the throughput.
        reservation = self._known.get((scope, prefix))
        if reservation is not None:
            with reservation.lock:
                pos = reservation.pos
                if pos < reservation.ready:
                    reservation.pos = pos + 1
                    return reservation.chunk[pos]
        reservation = self._reservation(prefix, scope, on)
        evicted = self._idle()
        if evicted:
            self._evicting.add(task := asyncio.ensure_future(self._give_back(evicted)))
            task.add_done_callback(self._evicting.discard)
        return await self._generate(reservation)

    async def _give_back(self, evicted: list[_Reservation]) -> None:
        for unused, operation in self._hand_back(evicted):
            try:
                returned = await self._run(operation) if operation else 0
            except Exception:  # the database is away: those IDs are a gap, as after a crash
                returned = 0
            self._account(unused, returned)

    async def _generate(self, reservation: _Reservation) -> str:
        while True:
            reservation = self._current(reservation)
            with reservation.lock:
                value = self._take(reservation)
                if reservation.wants_block():
                    reservation.fetch = asyncio.ensure_future(self._fetch(reservation))
                reservation.arm()
                fetch = reservation.fetch
            if value is not None:
                return value
            assert isinstance(fetch, asyncio.Task)
            await asyncio.shield(fetch)

    async def bulk_generate_ids(
        self, prefix: str, count: int, *, scope: str = "", on: date | None = None
    ) -> list[str]:
        """Return ``count`` IDs of ``prefix`` (increasing; consecutive within a block)."""
        # What the current chunk holds in one slice, then one ID the slow way (the next
        # chunk, block or fetch), and so on.
        ids = self._ready(prefix, scope, count)
        while len(ids) < count:
            ids.append(await self.generate_id(prefix, scope=scope, on=on))
            ids += self._ready(prefix, scope, count - len(ids))
        return ids

    async def _fetch(self, reservation: _Reservation) -> None:
        try:
            size, operation = self._fetch_operation(reservation)
            self._store(reservation, size, await self._run(operation))
        finally:
            self._fetched(reservation)

    async def close(self) -> None:
        """Stop, and hand back each prefix's unused tail where nobody allocated since."""
        if self._evicting:
            await asyncio.gather(*self._evicting, return_exceptions=True)
        for reservation in list(self._reservations.values()):
            if isinstance(reservation.fetch, asyncio.Task):
                await asyncio.gather(reservation.fetch, return_exceptions=True)
        for unused, operation in self._releases():
            self._account(unused, await self._run(operation) if operation else 0)


class SyncBlockCache(_Blocks):
    """The block cache for threads: ``cache.generate_id("CUS")``.

    ``run`` runs a service operation in its own committed transaction, e.g.
    ``SyncIdManagerUseCases(engine).run``. The thread that finds the block half used fetches
    the next one while the others go on from the current block.
    """

    def __init__(self, run: Callable[[Operation], object], **options: Any) -> None:
        super().__init__(**options)
        self._run = run

    def generate_id(self, prefix: str, *, scope: str = "", on: date | None = None) -> str:
        """Return the next ID of ``prefix`` from the reserved block, fetching one if needed.

        A period template resolves from ``on``, the document's date (default: today, UTC).
        """
        # The fast path, inlined: a call to a shared helper costs a fifth of the throughput.
        reservation = self._known.get((scope, prefix))
        if reservation is not None:
            with reservation.lock:
                pos = reservation.pos
                if pos < reservation.ready:
                    reservation.pos = pos + 1
                    return reservation.chunk[pos]
        reservation = self._reservation(prefix, scope, on)
        for unused, operation in self._hand_back(self._idle()):
            self._account(unused, self._run(operation) if operation else 0)
        return self._generate(reservation)

    def _generate(self, reservation: _Reservation) -> str:
        while True:
            reservation = self._current(reservation)
            with reservation.lock:
                value = self._take(reservation)
                mine = reservation.wants_block()
                if mine:
                    reservation.fetch = threading.Event()
                reservation.arm()
                fetch = reservation.fetch
            assert fetch is None or isinstance(fetch, threading.Event)
            if mine and fetch is not None:
                try:
                    size, operation = self._fetch_operation(reservation)
                    self._store(reservation, size, self._run(operation))
                except Exception:
                    # The next block could not be had (the database away, say): a caller that
                    # already holds an ID gets it, as the async cache's fetch in the background
                    # leaves its callers theirs; the next caller with none left tries again.
                    if value is None:
                        raise
                finally:
                    self._fetched(reservation)
                    fetch.set()
            if value is not None:
                return value
            if fetch is not None:
                fetch.wait()

    def bulk_generate_ids(
        self, prefix: str, count: int, *, scope: str = "", on: date | None = None
    ) -> list[str]:
        """Return ``count`` IDs of ``prefix`` (increasing; consecutive within a block)."""
        # What the current chunk holds in one slice, then one ID the slow way (the next
        # chunk, block or fetch), and so on.
        ids = self._ready(prefix, scope, count)
        while len(ids) < count:
            ids.append(self.generate_id(prefix, scope=scope, on=on))
            ids += self._ready(prefix, scope, count - len(ids))
        return ids

    def close(self) -> None:
        """Stop, and hand back each prefix's unused tail where nobody allocated since."""
        for unused, operation in self._releases():
            self._account(unused, self._run(operation) if operation else 0)
