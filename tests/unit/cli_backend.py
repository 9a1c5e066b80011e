"""A :class:`Backend` for the command line over the in-memory fake: commands run in-process.

``CliRunner().invoke(app, args, obj=FakeBackend())`` runs a command exactly as the shell
would, except that its use cases work on a :class:`FakeTransactions` instead of a database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from idmanager.application.options import ServiceOptions
from idmanager.application.use_cases import SyncIdManagerUseCases
from idmanager.cli.base import Backend

from .fakes import FakeRepository, FakeTransactions


class FakeBackend(Backend):
    """Storage in memory; remembers which database each command was pointed at.

    Set ``repository.fail`` to make storage (and ``migrate``) raise, as a database that is
    down, busy or failing would.
    """

    def __init__(self, repository: FakeRepository | None = None) -> None:
        self.transactions = FakeTransactions(repository)
        self.urls: list[str] = []
        self.options: list[ServiceOptions] = []
        self.migrated: list[str] = []

    @property
    def repository(self) -> FakeRepository:
        return self.transactions.repository

    @contextmanager
    def use_cases(
        self, database_url: str, options: ServiceOptions
    ) -> Iterator[SyncIdManagerUseCases]:
        """Yield use cases on the fake, recording the URL and the options asked for."""
        self.urls.append(database_url)
        self.options.append(options)
        yield SyncIdManagerUseCases(self.transactions, options)

    def migrate(self, database_url: str) -> None:
        """Record the migration (raising ``repository.fail`` when set)."""
        if self.repository.fail is not None:
            raise self.repository.fail
        self.migrated.append(database_url)

    def direct(self, actor: str | None = None) -> SyncIdManagerUseCases:
        """Return use cases on the same storage, to arrange a test or compute what to expect."""
        return SyncIdManagerUseCases(self.transactions, ServiceOptions(actor=actor))
