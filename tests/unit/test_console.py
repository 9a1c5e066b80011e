"""The operator console in-process: HTML over an ASGI client, on the in-memory fake.

The breadth of cases lives here (every page with real data, the access rules of each role and
scope, CSRF, sessions that expire or are forged, headers, forms without JavaScript, htmx
fragments); the browser journeys are ``tests/console``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from idmanager.api.app import create_app
from idmanager.api.console.session import COOKIE
from idmanager.application.use_cases import IdManagerUseCases
from idmanager.domain.errors import StorageError
from idmanager.settings import Settings

from .fakes import AsyncFakeTransactions

ADMIN = "admin-key-" + "a" * 16
READ = "read-key-" + "r" * 16
ACME = "acme-admin-" + "c" * 16  # an admin bound to scope acme
SHOPS = "shops-read-" + "s" * 16  # a read key bound to shop-*
KEYS = f"{ADMIN}:admin,{READ}:read,{ACME}:admin:acme,{SHOPS}:read:shop-*"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
BASE = "http://127.0.0.1"
HTMX = Path(__file__).parents[2] / "src/idmanager/api/console/static/htmx-2.0.11.min.js"
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"


def actor(key: str) -> str:
    return "api-key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def settings(**changes: Any) -> Settings:
    """Settings from ``changes`` and the defaults only: no environment, no ``.env``."""
    defaults = {
        name: info.get_default(call_default_factory=True)
        for name, info in Settings.model_fields.items()
    }
    return Settings(_env_file=None, **{**defaults, **changes})


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found.group(1)


def text_of(html: str) -> str:
    """Return a page's text without tags, white space collapsed: what a person reads."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


@dataclass
class Console:
    """An app over the fake, and a client that keeps its cookies like a browser."""

    app: FastAPI
    store: AsyncFakeTransactions
    http: httpx.AsyncClient
    now: list[float] = field(default_factory=lambda: [1_800_000_000.0])

    async def login(self, key: str = ADMIN) -> httpx.Response:
        page = await self.http.get("/console/login")
        return await self.http.post(
            "/console/login", data={"csrf": csrf_of(page.text), "api_key": key, "next": "/console"}
        )

    async def post(self, path: str, data: dict[str, str], *, token_from: str = "/console"):
        """Post a form with the CSRF token of a page of the current session."""
        page = await self.http.get(token_from)
        return await self.http.post(path, data={"csrf": csrf_of(page.text), **data})

    async def allocate(self, prefix: str, count: int = 1, **params: str) -> list[str]:
        response = await self.http.post(
            f"/api/v1/prefixes/{prefix}/ids",
            params={"count": count, **params},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert response.status_code == 201, response.text
        ids: list[str] = response.json()["ids"]
        return ids


async def _console(
    keys: str = KEYS, store: AsyncFakeTransactions | None = None, base: str = BASE, **changes: Any
) -> AsyncIterator[Console]:
    store = store or AsyncFakeTransactions()
    app = create_app(settings(api_keys=keys, **changes), use_cases=IdManagerUseCases(store))
    console_now = [1_800_000_000.0]
    app.state.console.clock = lambda: console_now[0]
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=base) as http,
    ):
        yield Console(app, store, http, console_now)


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    async for running in _console():
        yield running


@pytest.fixture
async def admin(console: Console) -> Console:
    response = await console.login(ADMIN)
    assert response.status_code == 303, response.text
    return console


# -- logging in and out ------------------------------------------------------------------------


async def test_a_visitor_is_led_to_the_login_and_back(console: Console) -> None:
    home = await console.http.get("/")
    assert (home.status_code, home.headers["location"]) == (307, "/console")
    first = await console.http.get("/console/audit?prefix=CUS")
    assert first.status_code == 303
    # Back to the same page, its query too (a scope, the filters).
    assert first.headers["location"] == "/console/login?next=%2Fconsole%2Faudit%3Fprefix%3DCUS"
    page = await console.http.get(first.headers["location"])
    assert page.status_code == 200 and "Paste an API key" in page.text
    assert "Database:" not in page.text and "Health:" not in page.text  # nothing for strangers
    assert 'name="next" value="/console/audit?prefix=CUS"' in page.text
    done = await console.http.post(
        "/console/login",
        data={"csrf": csrf_of(page.text), "api_key": ADMIN, "next": "/console/audit?prefix=CUS"},
    )
    assert (done.status_code, done.headers["location"]) == (303, "/console/audit?prefix=CUS")
    assert (await console.http.get("/console/audit")).status_code == 200


async def test_behind_a_root_path_the_forms_work() -> None:
    """Served under ``--root-path /ids`` (uvicorn puts the root path in front of the path)."""
    app = create_app(settings(api_keys=KEYS), use_cases=IdManagerUseCases(AsyncFakeTransactions()))

    async def under_ids(scope: Any, receive: Any, send: Any) -> None:
        await app(
            ({**scope, "root_path": "/ids"} if scope["type"] == "http" else scope), receive, send
        )

    transport = httpx.ASGITransport(app=under_ids)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE + "/ids") as http,
    ):
        page = await http.get("/console/login")  # the client's base URL ends in /ids
        assert 'action="/ids/console/login"' in page.text
        done = await http.post(
            "/console/login",
            data={"csrf": csrf_of(page.text), "api_key": ADMIN, "next": "/ids/console"},
        )
        assert (done.status_code, done.headers["location"]) == (303, "/ids/console")
        assert "Sequences" in text_of((await http.get("/console")).text)


async def test_the_redirect_never_names_the_host_it_was_sent_to(console: Console) -> None:
    for path, expected in (("/", "/console"), ("/console/", "/console")):
        response = await console.http.get(path, headers={"Host": "evil.example"})
        if response.status_code in (301, 302, 303, 307, 308):
            assert response.headers["location"] == expected


async def test_login_may_only_lead_to_a_console_page(console: Console) -> None:
    for target in ("https://evil.example/", "//evil.example/console", "/api/v1/audit"):
        page = await console.http.get("/console/login")
        response = await console.http.post(
            "/console/login", data={"csrf": csrf_of(page.text), "api_key": ADMIN, "next": target}
        )
        assert response.headers["location"] == "/console"


async def test_an_unknown_key_is_refused_in_plain_words(console: Console) -> None:
    response = await console.login("not-a-key-of-this-service")
    assert response.status_code == 401
    assert "That key is not one this service knows" in response.text
    assert "not-a-key-of-this-service" not in response.text
    assert (await console.http.get("/console")).status_code == 303


async def test_the_cookie_is_signed_http_only_strict_and_holds_no_key(console: Console) -> None:
    response = await console.login(ADMIN)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "Path=/console", "SameSite=strict", "Max-Age=28800"):
        assert attribute.lower() in cookie.lower()
    assert "secure" not in cookie.lower()  # plain http: a Secure cookie would never come back
    value = console.http.cookies[COOKIE]
    assert ADMIN not in value
    payload = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
    assert payload["f"] == actor(ADMIN).removeprefix("api-key:")
    assert payload["e"] == 1_800_000_000 + 480 * 60


async def test_over_https_the_cookie_is_secure() -> None:
    async for console in _console(base="https://127.0.0.1"):
        response = await console.login(ADMIN)
        assert "secure" in response.headers["set-cookie"].lower()


async def test_logout_ends_the_session(admin: Console) -> None:
    page = await admin.http.get("/console")
    assert "Log out" in page.text
    out = await admin.http.post("/console/logout", data={"csrf": csrf_of(page.text)})
    assert (out.status_code, out.headers["location"]) == (303, "/console/login?out=1")
    assert "You are logged out" in (await admin.http.get(out.headers["location"])).text
    assert (await admin.http.get("/console")).status_code == 303
    # The old page's token belonged to the old session: it changes nothing now.
    stale = await admin.http.post(
        "/console/register", data={"csrf": csrf_of(page.text), "prefix": "OLD"}
    )
    assert stale.status_code == 403


async def test_an_expired_session_asks_to_log_in_again(admin: Console) -> None:
    admin.now[0] += 480 * 60 + 1
    response = await admin.http.get("/console")
    assert response.status_code == 303
    assert "ended=1" in response.headers["location"]
    page = await admin.http.get(response.headers["location"])
    assert "Your session has ended" in page.text


async def test_htmx_requests_get_fragments_for_errors_and_a_redirect_to_log_in(
    admin: Console,
) -> None:
    htmx = {"HX-Request": "true"}
    refused = await admin.http.post("/console/register", data={"step": "preview"}, headers=htmx)
    assert refused.status_code == 200 and "<html" not in refused.text
    assert "did not carry the security token" in refused.text
    admin.now[0] += 480 * 60 + 1
    ended = await admin.http.get("/console/register/preview?prefix=X", headers=htmx)
    assert ended.status_code == 200 and ended.text == ""
    assert ended.headers["hx-redirect"].startswith("/console/login?next=")


async def test_a_forged_or_altered_cookie_is_refused(admin: Console) -> None:
    value = admin.http.cookies[COOKIE]
    payload, signature = value.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["e"] += 10**6  # a longer session, signed with the old signature
    longer = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    for forged in (f"{longer}.{signature}", f"{payload}.{'A' * len(signature)}", "garbage"):
        admin.http.cookies.clear()
        admin.http.cookies.set(COOKIE, forged, domain="127.0.0.1", path="/console")
        response = await admin.http.get("/console")
        assert response.status_code == 303, forged


async def test_removing_a_key_ends_its_sessions() -> None:
    store = AsyncFakeTransactions()
    secret = "s" * 32
    async for before in _console(store=store, console_secret=secret):
        await before.login(ADMIN)
        cookie = before.http.cookies[COOKIE]
        assert (await before.http.get("/console")).status_code == 200
    # The service restarts without that key, with the same signing secret.
    async for after in _console(keys=f"{READ}:read", store=store, console_secret=secret):
        after.http.cookies.set(COOKIE, cookie, domain="127.0.0.1", path="/console")
        response = await after.http.get("/console")
        assert response.status_code == 303 and "ended=1" in response.headers["location"]


async def test_with_no_keys_the_console_is_open_but_forms_need_their_token() -> None:
    async for console in _console(keys=""):
        page = await console.http.get("/console")
        assert page.status_code == 200
        assert "No API keys configured" in page.text and "anonymous" in page.text
        assert (await console.http.get("/console/login")).status_code == 303
        refused = await console.http.post("/console/register", data={"prefix": "OPEN"})
        assert refused.status_code == 403
        done = await console.post(
            "/console/register",
            {"prefix": "OPEN", "step": "register"},
            token_from="/console/register",
        )
        assert done.status_code == 303
        audit = await console.http.get("/console/audit")
        assert "OPEN" in audit.text and "anonymous" in audit.text


# -- what every page shows -------------------------------------------------------------------


async def test_the_list_shows_each_sequence_in_plain_words(admin: Console) -> None:
    await admin.allocate("CUS", 42)
    await admin.allocate("INV", 3, scope="acme")
    page = await admin.http.get("/console")
    assert page.status_code == 200
    words = text_of(page.text)
    for expected in ("Latest ID issued", "Next ID", "IDs issued", "Capacity used"):
        assert expected in words
    assert "CUS CUS-AAA0042 CUS-AAA0043 42 active '-', 3 letters, 4 digits" in words
    assert "acme INV INV-AAA0003 INV-AAA0004 3 active" in words
    assert "Health: healthy" in words and "Database: SQLite" in words
    assert "gaps possible" not in words


async def test_the_list_filters_and_pages(admin: Console) -> None:
    for n in range(55):
        await admin.allocate(f"P{n:02d}")
    await admin.allocate("OTHER")
    await admin.allocate("SHOP", scope="shop-a")
    first = text_of((await admin.http.get("/console")).text)  # by scope, then prefix
    assert "OTHER" in first and "P48" in first and "P49" not in first and "SHOP" not in first
    assert "Next page" in first
    second = await admin.http.get("/console?skip=50")
    assert "P48" not in text_of(second.text)
    assert "P49" in text_of(second.text) and "SHOP" in text_of(second.text)
    assert "Previous page" in second.text
    found = text_of((await admin.http.get("/console?search=oth")).text)
    assert "OTHER" in found and "P01" not in found
    scoped = text_of((await admin.http.get("/console?scope=shop-a")).text)
    assert "SHOP" in scoped and "OTHER" not in scoped
    await admin.post("/console/sequences/OTHER/deactivate", {})
    inactive = text_of((await admin.http.get("/console?status=inactive")).text)
    assert "OTHER" in inactive and "P01" not in inactive
    none = await admin.http.get("/console?search=nothing")
    assert "No sequence matches these filters" in none.text


async def test_a_template_family_is_listed_and_shown(admin: Console) -> None:
    await admin.allocate("INV{YYYY}", 2, date="2026-03-01")
    await admin.allocate("INV{YYYY}", 5, date="2025-12-31")
    family = text_of((await admin.http.get("/console?template=inv{yyyy}")).text)
    assert "INV2025" in family and "INV2026" in family
    page = await admin.http.get("/console/sequences/INV2026")
    words = text_of(page.text)
    assert "Periods of INV{YYYY}" in words
    assert "INV2025 INV2025-AAA0005 INV2025-AAA0006 5" in words
    assert "INV2026 (this one) INV2026-AAA0002" in words


async def test_a_sequence_page_shows_stats_format_and_history(admin: Console) -> None:
    await admin.allocate("CUS", 42)
    page = await admin.http.get("/console/sequences/cus")
    assert page.status_code == 200
    words = text_of(page.text)
    assert "Latest ID issued CUS-AAA0042 the last ID handed out" in words
    assert "Next ID CUS-AAA0043 the ID the next request will get" in words
    assert "first ID CUS-AAA0001 (separator '-', 3 letters, 4 digits)" in words
    assert "The format is locked: CUS has issued 42 IDs" in words
    assert "created by its first ID" in words and actor(ADMIN) in words
    missing = await admin.http.get("/console/sequences/NOPE")
    assert missing.status_code == 404
    assert "There is no sequence NOPE" in missing.text and "Traceback" not in missing.text


async def test_the_lookup_reads_an_id_and_says_whether_it_was_issued(admin: Console) -> None:
    await admin.allocate("CUS", 42)
    issued = text_of((await admin.http.get("/console/lookup?id=cus-aaa12")).text)
    assert "written in full it is CUS-AAA0012" in issued
    assert "It is ID number 12 of prefix CUS" in issued and "It has been issued" in issued
    later = text_of((await admin.http.get("/console/lookup?id=CUS-AAB0001")).text)
    assert "ID number 10,000" in later and "It has not been issued yet" in later
    unknown = text_of((await admin.http.get("/console/lookup?id=ZZZ-AAA0001")).text)
    assert "There is no sequence ZZZ" in unknown
    bad = await admin.http.get("/console/lookup?id=CUS-A1")
    assert bad.status_code == 200 and 'class="error"' in bad.text
    fragment = await admin.http.get("/console/lookup?id=cus-aaa1", headers={"HX-Request": "true"})
    assert "<html" not in fragment.text and "CUS-AAA0001" in fragment.text


async def test_the_audit_trail_filters_by_prefix_actor_action_and_day(admin: Console) -> None:
    await admin.allocate("CUS", 5)
    await admin.allocate("ORD", 1)
    await admin.post("/console/sequences/CUS/deactivate", {})
    everything = text_of((await admin.http.get("/console/audit")).text)
    assert "CUS deactivated" in everything and "ORD created by its first ID" in everything
    only = text_of((await admin.http.get("/console/audit?action=deactivate")).text)
    assert "deactivated" in only and "ORD" not in only
    by_actor = await admin.http.get("/console/audit", params={"actor": actor(ADMIN)})
    assert "CUS" in by_actor.text
    nobody = await admin.http.get("/console/audit", params={"actor": "someone-else"})
    assert "No recorded change matches" in nobody.text
    today = await admin.http.get("/console/audit?since=2000-01-01&until=2999-12-31&prefix=ord")
    assert "ORD" in today.text and "CUS" not in text_of(today.text)
    bad = await admin.http.get("/console/audit?since=yesterday")
    assert bad.status_code == 422 and "is not a date written YYYY-MM-DD" in bad.text
    to_the_end = await admin.http.get("/console/audit?until=9999-12-31")  # the calendar's last
    assert to_the_end.status_code == 200 and "ORD" in to_the_end.text
    beyond = await admin.http.get("/console/audit", params={"before": 10**20})
    assert beyond.status_code == 422


# -- changes, through forms without JavaScript -------------------------------------------------


async def test_register_with_a_preview_then_for_real(admin: Console) -> None:
    form = {"prefix": "po", "separator": "/", "letters": "0", "digits": "6", "step": "preview"}
    preview = await admin.post("/console/register", form)
    assert preview.status_code == 200
    words = text_of(preview.text)
    assert "1 PO/000001" in words and "999,999 PO/999999" in words and "the digits grow" in words
    assert admin.store.repository.rows == {}  # a preview registers nothing
    done = await admin.post("/console/register", {**form, "step": "register"})
    assert (done.status_code, done.headers["location"]) == (
        303,
        "/console/sequences/PO?done=registered",
    )
    page = text_of((await admin.http.get(done.headers["location"])).text)
    assert "Registered." in page and "Next ID PO/000001" in page
    assert "registered" in page and actor(ADMIN) in page
    assert "none → none" in page and "starts over" not in page  # nothing issued yet, no reset


async def test_the_live_preview_is_a_fragment_and_shows_a_templates_date(admin: Console) -> None:
    await admin.allocate("INV{YYYY}", 7, date="2026-03-01")
    fragment = await admin.http.get(
        "/console/register/preview",
        params={"prefix": "INV{YYYY}", "date": "2026-05-05"},
        headers={"HX-Request": "true"},
    )
    assert fragment.status_code == 200 and "<html" not in fragment.text
    words = text_of(fragment.text)
    assert (
        "A document dated 2026-05-05 is numbered in INV2026 and would get INV2026-AAA0008" in words
    )
    assert "already exists and has issued 7 IDs: its format is fixed" in words
    fresh = text_of(
        (
            await admin.http.get(
                "/console/register/preview",
                params={"prefix": "INV{YYYY}", "date": "2027-01-02", "separator": "."},
            )
        ).text
    )
    assert "numbered in INV2027 and would get INV2027.AAA0001" in fresh
    wrong = await admin.http.get("/console/register/preview", params={"prefix": "in v"})
    assert "Prefix can only contain" in wrong.text
    widths = await admin.http.get(
        "/console/register/preview", params={"prefix": "X", "letters": "9"}
    )
    assert "Letter width must be between 0 and 8" in widths.text


async def test_a_used_format_is_locked_with_its_reason(admin: Console) -> None:
    await admin.allocate("CUS", 1)
    page = await admin.http.get("/console/sequences/CUS/format")
    words = text_of(page.text)
    assert "The format is locked: CUS has issued 1 ID" in words
    assert '<fieldset id="format-fields" disabled' in page.text
    assert "Save the format" not in page.text
    refused = await admin.post(
        "/console/register", {"prefix": "CUS", "letters": "2", "step": "register"}
    )
    assert refused.status_code == 409
    assert "its format can no longer change" in refused.text


async def test_an_unused_format_can_change(admin: Console) -> None:
    await admin.post("/console/register", {"prefix": "NEW", "step": "register"})
    page = await admin.http.get("/console/sequences/NEW/format")
    assert "Save the format" in page.text and "readonly" in page.text
    done = await admin.post(
        "/console/register", {"prefix": "NEW", "separator": "", "letters": "2", "step": "x"}
    )
    assert done.status_code == 303
    assert "Next ID NEWAA0001" in text_of((await admin.http.get("/console/sequences/NEW")).text)


async def test_an_invalid_registration_shows_the_form_again_with_the_reason(admin: Console) -> None:
    response = await admin.post("/console/register", {"prefix": "in v", "step": "register"})
    assert response.status_code == 422
    assert "Prefix can only contain uppercase letters" in response.text
    assert 'value="in v"' in response.text  # what was typed is kept
    numbers = await admin.post("/console/register", {"prefix": "X", "digits": "many"})
    assert numbers.status_code == 422 and "Digits: &#39;many&#39; is not a whole number" in (
        numbers.text
    )


async def test_a_reset_is_dry_run_first_then_applied(admin: Console) -> None:
    await admin.allocate("CUS", 42)
    form = {"reset_to": "cus-aaa0100", "step": "preview"}
    dry = await admin.post(
        "/console/sequences/CUS/reset", form, token_from="/console/sequences/CUS/reset"
    )
    words = text_of(dry.text)
    assert "Dry run: nothing has changed yet" in words
    assert "Latest ID issued CUS-AAA0042 CUS-AAA0100" in words
    assert "Next ID CUS-AAA0043 CUS-AAA0101" in words
    assert "58 IDs will be skipped" in words
    assert admin.store.repository.rows[("", "CUS")].last_value == 42
    done = await admin.post("/console/sequences/CUS/reset", {**form, "step": "apply"})
    assert done.status_code == 303 and done.headers["location"].endswith("done=reset")
    assert admin.store.repository.rows[("", "CUS")].last_value == 100
    history = text_of((await admin.http.get("/console/sequences/CUS")).text)
    assert f"reset {actor(ADMIN)} CUS-AAA0042 → CUS-AAA0100" in history


async def test_a_backwards_reset_needs_force_and_the_typed_prefix(admin: Console) -> None:
    await admin.allocate("CUS", 42)
    form = {"reset_to": "CUS-AAA0010", "step": "preview"}
    dry = text_of((await admin.post("/console/sequences/CUS/reset", form)).text)
    assert "This goes backwards. 32 IDs, from CUS-AAA0011 to CUS-AAA0042" in dry
    assert "Type CUS to confirm" in dry
    apply = {**form, "step": "apply"}
    for extra in ({}, {"force": "yes"}, {"confirm": "CUS"}, {"force": "yes", "confirm": "CU"}):
        refused = await admin.post("/console/sequences/CUS/reset", {**apply, **extra})
        assert refused.status_code == 409, extra
        assert "Not reset: going back would issue 32 IDs a second time" in refused.text
        assert admin.store.repository.rows[("", "CUS")].last_value == 42
    done = await admin.post(
        "/console/sequences/CUS/reset", {**apply, "force": "yes", "confirm": " cus "}
    )
    assert done.status_code == 303
    assert admin.store.repository.rows[("", "CUS")].last_value == 10
    audit = text_of((await admin.http.get("/console/audit?action=reset")).text)
    assert "CUS-AAA0042 → CUS-AAA0010 forced" in audit


async def test_a_reset_dry_run_is_a_fragment_for_htmx(admin: Console) -> None:
    await admin.allocate("CUS", 3)
    page = await admin.http.get("/console/sequences/CUS/reset")
    response = await admin.http.post(
        "/console/sequences/CUS/reset",
        data={"csrf": csrf_of(page.text), "reset_to": "", "step": "preview"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200 and "<html" not in response.text
    words = text_of(response.text)
    assert "none (starts over)" in words and "This goes backwards" in words
    wrong = await admin.http.post(
        "/console/sequences/CUS/reset",
        data={"csrf": csrf_of(page.text), "reset_to": "ORD-AAA0001", "step": "preview"},
        headers={"HX-Request": "true"},
    )
    # 200: htmx swaps in only successful answers; the fragment says what is wrong.
    assert wrong.status_code == 200 and "Reset ID must start with 'CUS-'" in text_of(wrong.text)


async def test_deactivate_and_activate_after_a_confirmation(admin: Console) -> None:
    await admin.allocate("CUS", 2)
    ask = text_of((await admin.http.get("/console/sequences/CUS/deactivate")).text)
    assert "will refuse new IDs until it is activated again" in ask
    assert admin.store.repository.rows[("", "CUS")].is_active  # asking changes nothing
    done = await admin.post("/console/sequences/CUS/deactivate", {})
    assert done.headers["location"] == "/console/sequences/CUS?done=deactivated"
    page = text_of((await admin.http.get(done.headers["location"])).text)
    assert "This sequence is inactive" in page and "Activate…" in page
    refused = await admin.http.post(
        "/api/v1/prefixes/CUS/ids", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert refused.status_code == 409
    await admin.post("/console/sequences/CUS/activate", {})
    assert admin.store.repository.rows[("", "CUS")].is_active


# -- access: roles, CSRF, scopes --------------------------------------------------------------


async def test_a_read_key_sees_no_change_buttons(console: Console) -> None:
    await console.allocate("CUS", 2)
    await console.login(READ)
    for path in ("/console", "/console/sequences/CUS", "/console/audit"):
        page = await console.http.get(path)
        assert page.status_code == 200
        for button in ("Register a prefix", "Reset…", "Deactivate…", "Change format"):
            assert button not in page.text, (path, button)
    for path in (
        "/console/register",
        "/console/sequences/CUS/reset",
        "/console/sequences/CUS/deactivate",
    ):
        refused = await console.http.get(path)
        assert refused.status_code == 403 and "needs an admin key" in refused.text


async def test_a_read_keys_crafted_posts_are_refused(console: Console) -> None:
    await console.allocate("CUS", 42)
    await console.login(READ)
    before = console.store.repository.snapshot()
    posts = (
        ("/console/register", {"prefix": "EVIL", "step": "register"}),
        (
            "/console/sequences/CUS/reset",
            {"reset_to": "", "step": "apply", "force": "yes", "confirm": "CUS"},
        ),
        ("/console/sequences/CUS/deactivate", {}),
    )
    for path, data in posts:
        response = await console.post(path, data)  # with its own valid CSRF token
        assert response.status_code == 403, path
        assert "needs an admin key; this key has the 'read' role" in text_of(response.text)
    assert console.store.repository.snapshot() == before


async def test_a_form_without_its_token_is_refused(admin: Console) -> None:
    await admin.allocate("CUS", 42)
    other: list[str] = []
    async for elsewhere in _console():  # a token of another app's session
        other.append(csrf_of((await elsewhere.http.get("/console/login")).text))
    for token in (None, "", "not-a-token", other[0]):
        data = {"step": "apply", "reset_to": "", "force": "yes", "confirm": "CUS"}
        if token is not None:
            data["csrf"] = token
        response = await admin.http.post("/console/sequences/CUS/reset", data=data)
        assert response.status_code == 403
        assert "did not carry the security token" in response.text
    assert admin.store.repository.rows[("", "CUS")].last_value == 42
    login = await admin.http.post("/console/login", data={"api_key": ADMIN})
    assert login.status_code == 403


async def test_a_same_origin_form_post_passes_a_cross_site_one_does_not(console: Console) -> None:
    # Chromium sends these on a form post from a console page: the pages' Referrer-Policy
    # (no-referrer) makes the Origin "null", and Sec-Fetch-Site still says where it came from.
    page = await console.http.get("/console/login")
    data = {"csrf": csrf_of(page.text), "api_key": ADMIN}
    own = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    assert (await console.http.post("/console/login", data=data, headers=own)).status_code == 303
    page = await console.http.get("/console/register")
    foreign = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    data = {"csrf": csrf_of(page.text), "prefix": "EVIL", "step": "register"}
    response = await console.http.post("/console/register", data=data, headers=foreign)
    assert response.status_code == 403
    assert console.store.repository.rows == {}


async def test_a_scope_bound_key_sees_and_changes_only_its_scopes(console: Console) -> None:
    await console.allocate("CUS", 1)
    await console.allocate("CUS", 2, scope="acme")
    await console.allocate("CUS", 3, scope="shop-a")
    await console.allocate("ORD", 4, scope="shop-b")
    await console.login(ACME)
    page = text_of((await console.http.get("/console")).text)
    assert "acme CUS CUS-AAA0002" in page and "shop-a" not in page and "CUS-AAA0001" not in page
    assert (await console.http.get("/console/sequences/CUS")).status_code == 403
    assert (await console.http.get("/console?scope=shop-a")).status_code == 403
    assert (await console.http.get("/console/sequences/CUS?scope=acme")).status_code == 200
    refused = await console.post("/console/sequences/CUS/deactivate", {"scope": ""})
    assert refused.status_code == 403
    assert console.store.repository.rows[("", "CUS")].is_active
    done = await console.post("/console/sequences/CUS/deactivate", {"scope": "acme"})
    assert done.status_code == 303
    audit = text_of((await console.http.get("/console/audit")).text)
    assert "acme" in audit and "shop-a" not in audit and "(shop-b)" not in audit
    lookup = await console.http.get("/console/lookup?id=CUS-AAA0001&scope=shop-a")
    assert "may not use scope" in lookup.text
    own = text_of((await console.http.get("/console/lookup?id=CUS-AAA0001")).text)
    assert "of prefix CUS in scope acme" in own and "It has been issued" in own
    await console.login(SHOPS)
    shops = text_of((await console.http.get("/console")).text)
    assert "shop-a CUS" in shops and "shop-b ORD" in shops and "acme" not in shops
    assert "Deactivate…" not in (await console.http.get("/console/sequences/CUS?scope=shop-a")).text


# -- headers, files and errors ----------------------------------------------------------------


async def test_every_console_answer_carries_the_security_headers(admin: Console) -> None:
    await admin.allocate("CUS", 1)
    paths = (
        "/console",
        "/console/login",
        "/console/sequences/CUS",
        "/console/sequences/NOPE",
        "/console/register",
        "/console/audit",
        "/console/lookup?id=x",
        "/console/no/such/page",
        "/console/static/console.css",
        "/console/static/htmx-2.0.11.min.js",
    )
    for path in paths:
        response = await admin.http.get(path)
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert (await admin.http.get("/console/no/such/page")).status_code == 404
    assert "no-store" in (await admin.http.get("/console")).headers["cache-control"]


async def test_pages_have_no_inline_script_or_style(admin: Console) -> None:
    await admin.allocate("INV{YYYY}", 1)
    await admin.allocate("CUS", 1)
    for path in ("/console", "/console/sequences/CUS", "/console/register", "/console/audit"):
        html = (await admin.http.get(path)).text
        assert "<style" not in html and " style=" not in html
        assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
        assert re.findall(r"<[^>]+\son[a-z]+=", html) == []
        assert "cdn" not in html.lower() and "https://" not in html


async def test_a_database_outage_is_a_page_in_plain_words(admin: Console) -> None:
    # Logged in, no page shown yet: the banner's first probe meets the outage.
    admin.store.repository.fail = StorageError("connection to server at 10.0.0.5 refused")
    response = await admin.http.get("/console")
    assert response.status_code == 503
    words = text_of(response.text)
    assert "Database unavailable" in words and "try again shortly" in words
    assert "Health: unhealthy" in words
    assert "10.0.0.5" not in response.text and "Traceback" not in response.text


async def test_the_banner_says_gaps_are_possible_with_the_block_cache() -> None:
    async for console in _console(block_cache=True):
        await console.login(ADMIN)
        words = text_of((await console.http.get("/console")).text)
        assert "Block cache on" in words and "gaps are possible" in words


def test_the_vendored_htmx_is_the_pinned_release() -> None:
    content = HTMX.read_bytes()
    assert hashlib.sha256(content).hexdigest() == HTMX_SHA256
    assert b'version:"2.0.11"' in content
    templates = Path(__file__).parents[2] / "src/idmanager/api/console/templates"
    assert HTMX.name in (templates / "base.html").read_text()
    assert sorted(p.name for p in HTMX.parent.glob("*.js")) == [HTMX.name]  # one script only
