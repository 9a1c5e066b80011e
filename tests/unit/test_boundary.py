"""One change, every edge: a field of a result, or a kind of error, is defined once.

The results (``idmanager.application.results``) and the error registry (``idmanager.problems``)
are the only places that say what a sequence's statistics hold or how an error is shown. These
tests walk them and check that the HTTP API, its OpenAPI document, the command line and the
Python client all follow, field by field and kind by kind: a field added to ``SequenceStats``
or a kind added to ``KINDS`` is checked here without a line of test to write.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from idmanager import IdManagerError
from idmanager.application.results import (
    AuditPage,
    AuditRecord,
    HealthReport,
    ResetResult,
    SequenceStats,
    from_json,
    to_json,
)
from idmanager.cli import app as cli
from idmanager.client import AsyncIdManagerClient
from idmanager.problems import EXIT_ACCESS, KINDS, ProblemKind, error_for

from .asgi import Api
from .cli_backend import FakeBackend

RESULTS = (SequenceStats, ResetResult, HealthReport, AuditRecord, AuditPage)
DOMAIN_KINDS = [k for k in KINDS if k.error is not None]


def names(result: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(result)]


def cli_json(backend: FakeBackend, *args: str) -> Any:
    outcome = CliRunner().invoke(cli, [*args, "--json", "--database-url", "x://"], obj=backend)
    assert outcome.exit_code == 0, outcome.output
    return json.loads(outcome.stdout)


@pytest.fixture
async def client(api: Api) -> Iterator[AsyncIdManagerClient]:
    transport = api.http._transport  # the ASGI transport of the in-process app
    async with AsyncIdManagerClient(
        "http://localhost", api_key=api.keys.admin, transport=transport
    ) as found:
        yield found


# --- a field is one change ------------------------------------------------------------------


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: r.__name__)
def test_the_openapi_document_has_every_field_with_its_description(
    api: Api, result: type[Any]
) -> None:
    schema = api.app.openapi()["components"]["schemas"][result.__name__]
    assert list(schema["properties"]) == names(result)
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{result.__name__}.{name} has no description"


async def test_statistics_every_edge_shows_every_field(
    api: Api, client: AsyncIdManagerClient
) -> None:
    await api.allocate("BND", 3)
    from_api = (await api.http.get("/api/v1/prefixes/BND", headers=api.headers("read"))).json()
    expected = to_json(api.store.sync.run(lambda r: SequenceStats.of(r.get("", "BND"))))
    assert from_api == expected
    assert list(from_api) == names(SequenceStats)
    assert await client.get_prefix_stats("BND") == from_json(SequenceStats, expected)
    backend = FakeBackend(api.repository)
    assert cli_json(backend, "show", "BND") == expected
    assert cli_json(backend, "list") == [expected]


async def test_reset_every_edge_shows_every_field(api: Api, client: AsyncIdManagerClient) -> None:
    await api.allocate("RST", 2)
    result = await client.reset_sequence("RST", "RST-AAA0009")
    assert list(to_json(result)) == names(ResetResult)
    again = cli_json(FakeBackend(api.repository), "reset", "RST", "--to", "RST-AAA0010")
    assert list(again) == names(ResetResult)
    assert from_json(ResetResult, again).previous_id == "RST-AAA0009"


async def test_health_and_audit_every_edge_shows_every_field(
    api: Api, client: AsyncIdManagerClient
) -> None:
    await api.allocate("AUD", 1)
    health = await client.health()
    assert list(to_json(health)) == names(HealthReport)
    backend = FakeBackend(api.repository)
    outcome = CliRunner().invoke(cli, ["health", "--json", "--database-url", "x://"], obj=backend)
    assert list(json.loads(outcome.stdout)) == names(HealthReport)
    page = await client.list_audit(prefix="AUD")
    assert page.items and list(to_json(page.items[0])) == names(AuditRecord)
    from_cli = cli_json(backend, "audit", "--prefix", "AUD")
    assert list(from_cli) == names(AuditPage)
    assert [list(item) for item in from_cli["items"]] == [names(AuditRecord)] * len(page.items)


# --- a kind of error is one change ---------------------------------------------------------


def _raised(found: ProblemKind) -> IdManagerError:
    assert found.error is not None
    return found.error(f"a {found.kind} happened")


@pytest.mark.parametrize("found", DOMAIN_KINDS, ids=lambda k: k.kind)
async def test_the_api_shows_each_kind_as_the_registry_says(api: Api, found: ProblemKind) -> None:
    api.repository.fail = _raised(found)
    response = await api.http.get("/api/v1/prefixes/ANY", headers=api.headers("read"))
    body = response.json()
    assert (response.status_code, body["type"], body["title"]) == (
        found.status,
        found.type,
        found.title,
    )
    if found.retry_after is not None:
        assert response.headers["retry-after"] == str(found.retry_after)


@pytest.mark.parametrize("found", DOMAIN_KINDS, ids=lambda k: k.kind)
def test_the_openapi_document_shows_each_kind(api: Api, found: ProblemKind) -> None:
    documented = [
        example["value"]
        for path in api.app.openapi()["paths"].values()
        for operation in path.values()
        for response in operation.get("responses", {}).values()
        for content in response.get("content", {}).values()
        for example in content.get("examples", {}).values()
        if example["value"]["type"] == found.type
    ]
    assert documented, f"no route documents {found.kind}"
    assert {(d["status"], d["title"]) for d in documented} == {(found.status, found.title)}


@pytest.mark.parametrize(
    "found", [k for k in DOMAIN_KINDS if k.exit_code != EXIT_ACCESS], ids=lambda k: k.kind
)
def test_the_command_line_exits_with_each_kinds_code(found: ProblemKind) -> None:
    backend = FakeBackend()
    backend.repository.fail = _raised(found)
    outcome = CliRunner().invoke(cli, ["show", "ANY", "--database-url", "x://"], obj=backend)
    assert outcome.exit_code == found.exit_code, outcome.output
    assert outcome.stderr.startswith("error: ")


@pytest.mark.parametrize("found", DOMAIN_KINDS, ids=lambda k: k.kind)
async def test_the_client_raises_each_kinds_exception(found: ProblemKind) -> None:
    body = {"type": found.type, "title": found.title, "status": found.status, "detail": "d"}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(found.status, json=body, headers={"content-type": "problem+json"})

    async with AsyncIdManagerClient(
        transport=httpx.MockTransport(answer), retries=0, sleep=_no_sleep
    ) as client:
        with pytest.raises(IdManagerError) as raised:
            await client.get_prefix_stats("ANY")
    assert type(raised.value) is found.error
    assert type(error_for(found.type, found.status, "d")) is found.error


async def _no_sleep(_seconds: float) -> None:
    return None


def test_every_error_class_is_importable_from_the_package() -> None:
    """The README's promise: ``from idmanager import <any error>``."""
    import inspect

    import idmanager
    from idmanager.domain import errors

    classes = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.IdManagerError)
    }
    assert classes - set(idmanager.__all__) == set()
