"""What a driver's error means: classified by its code, or by its class when it has none."""

from __future__ import annotations

import asyncpg
import pytest

from idmanager.domain.errors import BusyError, StorageError
from idmanager.infrastructure.errors import Failure, as_domain_error, classify


@pytest.mark.parametrize(
    "error",
    [
        # The server ended an idle backend; its FATAL message came before the closed socket.
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_connection_that_cannot_go_on_is_an_outage(error: Exception) -> None:
    assert classify(error) is Failure.UNAVAILABLE
    assert str(as_domain_error(error)).startswith("Database unavailable")


def test_a_server_error_keeps_its_meaning() -> None:
    timeout = asyncpg.exceptions.LockNotAvailableError("canceling statement due to lock timeout")
    assert classify(timeout) is Failure.LOCK_TIMEOUT
    assert isinstance(as_domain_error(timeout), BusyError)
    duplicate = asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert classify(duplicate) is Failure.DUPLICATE
    refused = asyncpg.exceptions.CheckViolationError("violates check constraint")
    assert classify(refused) is Failure.REFUSED
    assert isinstance(as_domain_error(refused), StorageError)
