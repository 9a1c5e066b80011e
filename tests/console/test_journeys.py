"""The console as operators live it, in real Chromium against a real server on SQLite.

Each journey takes the screenshots of docs/console.md as it goes. Every page also passes an
axe-core check (no serious or critical violation) and runs without a Content-Security-Policy
violation in the browser's console.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect

from .conftest import ConsoleServer

_axe = Axe()


def actor(key: str) -> str:
    return "api-key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


class Operator:
    """A browser tab of the console that checks every page it reaches."""

    def __init__(self, browser: Browser, server: ConsoleServer, shots: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 860})
        self.page = self.context.new_page()
        self.server = server
        self.shots = shots
        self.csp_errors: list[str] = []
        self.page.on("console", self._console)
        self.checked: set[str] = set()

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.csp_errors.append(message.text)

    def goto(self, path: str) -> Page:
        self.page.goto(self.server.url + path)
        return self.page

    def login(self, role: str) -> None:
        self.goto("/console")
        expect(self.page).to_have_url(re.compile(r"/console/login"))
        self.page.get_by_label("API key").fill(getattr(self.server.keys, role))
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page.get_by_role("heading", name="Sequences", exact=True)).to_be_visible()

    def check(self, name: str) -> None:
        """Run axe on the page as it is now; once per kind of page."""
        if name in self.checked:
            return
        self.checked.add(name)
        results = _axe.run(self.page)
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert not bad, f"{name}: " + "; ".join(bad)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def close(self) -> None:
        assert not self.csp_errors, self.csp_errors
        self.context.close()


@pytest.fixture
def operator(
    browser: Browser, console_server: ConsoleServer, screenshots: Path
) -> Iterator[Operator]:
    tab = Operator(browser, console_server, screenshots)
    yield tab
    tab.close()


def test_an_admin_registers_allocates_resets_deactivates_and_reads_the_audit(
    operator: Operator, console_server: ConsoleServer
) -> None:
    page = operator.page
    operator.goto("/console/login")
    operator.check("login")
    operator.shot("login")
    operator.login("admin")

    # Register PO with a format, watching the live preview (htmx) as the fields change.
    page.get_by_role("navigation", name="Main").get_by_role(
        "link", name="Register a prefix"
    ).click()
    page.get_by_label("Prefix", exact=True).fill("po")
    page.get_by_label("Separator").select_option("/")
    page.get_by_label("Letters (0 to 8)").fill("0")
    page.get_by_label("Digits (1 to 12)").fill("6")
    preview = page.locator("#preview")
    expect(preview).to_contain_text("PO/000001")
    expect(preview).to_contain_text("PO/1000000 (the digits grow)")
    operator.check("register")
    operator.shot("register-preview")
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_role("status")).to_contain_text("Registered.")
    expect(page.locator("dl.facts")).to_contain_text("PO/000001")

    # Allocate through the JSON API, as an application would.
    with console_server.api("generate") as api:
        response = api.post("/api/v1/prefixes/PO/ids", params={"count": 42})
        assert response.status_code == 201, response.text
    page.reload()
    expect(fact(page, "Latest ID issued")).to_contain_text("PO/000042")
    expect(fact(page, "Next ID")).to_contain_text("PO/000043")
    operator.check("sequence")
    operator.shot("sequence")

    # A forward reset: dry run first (an htmx fragment), then apply.
    page.get_by_role("link", name="Reset…").click()
    page.get_by_label("Make this the latest ID issued").fill("po/100")
    page.get_by_role("button", name="Dry run: show what would change").click()
    plan = page.locator("#plan")
    expect(plan).to_contain_text("Dry run: nothing has changed yet")
    expect(plan).to_contain_text("PO/000042")
    expect(plan).to_contain_text("PO/000101")
    expect(plan).to_contain_text("58 IDs will be skipped")
    operator.check("reset")
    operator.shot("reset-dry-run")
    page.get_by_role("button", name="Apply the reset").click()
    expect(page.get_by_role("status")).to_contain_text("The sequence is reset.")
    expect(fact(page, "Next ID")).to_contain_text("PO/000101")

    # Backwards: refused until the box is ticked and the prefix typed.
    page.get_by_role("link", name="Reset…").click()
    page.get_by_label("Make this the latest ID issued").fill("PO/000010")
    page.get_by_role("button", name="Dry run: show what would change").click()
    expect(plan).to_contain_text("This goes backwards. 90 IDs, from PO/000011 to PO/000100")
    page.get_by_role("button", name="Apply the reset").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "Not reset: going back would issue 90 IDs a second time"
    )
    operator.check("reset-refused")
    operator.shot("reset-backwards-refused")
    page.get_by_label("Yes, issue these 90 IDs again").check()
    page.get_by_label("Type PO to confirm").fill("PO")
    page.get_by_role("button", name="Apply the reset").click()
    expect(page.get_by_role("status")).to_contain_text("The sequence is reset.")
    expect(fact(page, "Latest ID issued")).to_contain_text("PO/000010")

    # Deactivate, after a confirmation.
    page.get_by_role("link", name="Deactivate…").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Deactivate PO")
    operator.check("activation")
    page.get_by_role("button", name="Yes, deactivate PO").click()
    expect(page.get_by_role("status")).to_contain_text("The sequence is inactive")
    with console_server.api("generate") as api:
        assert api.post("/api/v1/prefixes/PO/ids").status_code == 409

    # Everything is in the audit trail, with who did it.
    page.get_by_role("link", name="Audit trail").click()
    page.get_by_label("Prefix").fill("PO")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.data tbody tr")
    expect(rows).to_have_count(4)
    me = actor(console_server.keys.admin)
    expect(rows.nth(0)).to_contain_text("deactivated")
    expect(rows.nth(1)).to_contain_text("PO/000100 → PO/000010")
    expect(rows.nth(1)).to_contain_text("forced")
    expect(rows.nth(2)).to_contain_text("PO/000042 → PO/000100")
    expect(rows.nth(3)).to_contain_text("registered")
    for n in range(4):
        expect(rows.nth(n)).to_contain_text(me)
    operator.check("audit")
    operator.shot("audit")


def test_periods_the_list_and_the_lookup(operator: Operator, console_server: ConsoleServer) -> None:
    today = datetime.now(UTC).date()
    last_year = today - timedelta(days=366)
    with console_server.api("admin") as api:
        # A small format, nearly full: the list then warns that its letters grow next.
        small = {"format": {"separator": "-", "letter_width": 1, "digit_width": 2}}
        assert api.put("/api/v1/prefixes/TKT", json=small).status_code == 200
    with console_server.api("generate") as api:
        for prefix, count, params in (
            ("CUS", 1234, {}),
            ("CUS", 17, {"scope": "acme"}),
            ("INV{YYYY}", 310, {"date": last_year.isoformat()}),
            ("INV{YYYY}", 12, {"date": today.isoformat()}),
            ("ORD", 9_998, {}),
            ("TKT", 2_400, {}),
        ):
            response = api.post(f"/api/v1/prefixes/{prefix}/ids", params={"count": count, **params})
            assert response.status_code == 201, response.text
    page = operator.page
    operator.login("admin")
    expect(page.get_by_role("row", name=re.compile("TKT"))).to_contain_text("nearly full")
    operator.check("sequences")
    operator.shot("sequences")

    # A period template's family, from one of its periods.
    page.get_by_role("link", name=f"INV{today.year}", exact=True).first.click()
    family = page.locator("section", has=page.get_by_role("heading", name="Periods of INV{YYYY}"))
    expect(family).to_contain_text(f"INV{last_year.year}-AAA0310")
    expect(family).to_contain_text(f"INV{today.year}-AAA0012")
    operator.shot("sequence-periods")

    # The preview of a template: the ID a document of a given date would get.
    operator.goto("/console/register")
    page.get_by_label("Prefix", exact=True).fill("INV{YYYY}")
    page.get_by_label("Document date").fill(last_year.isoformat())
    expect(page.locator("#preview")).to_contain_text(
        f"is numbered in INV{last_year.year} and would get INV{last_year.year}-AAA0311"
    )
    operator.shot("register-template")

    # The lookup box: a sloppy ID, read and placed.
    operator.goto("/console")
    page.get_by_label("Look up an ID").fill(" cus-aaa12 ")
    page.get_by_role("button", name="Look up").click()
    result = page.locator("#lookup-result")
    expect(result).to_contain_text("written in full it is CUS-AAA0012")
    expect(result).to_contain_text("It has been issued")
    operator.check("lookup")
    operator.shot("lookup")

    # An error page, in plain words.
    operator.goto("/console/sequences/NOPE")
    expect(page.get_by_role("alert")).to_contain_text("There is no sequence NOPE")
    operator.check("error")


def test_a_read_key_sees_no_buttons_and_its_posts_are_refused(
    operator: Operator, console_server: ConsoleServer
) -> None:
    with console_server.api("admin") as api:
        assert api.post("/api/v1/prefixes/RO/ids", params={"count": 5}).status_code == 201
    page = operator.page
    operator.login("read")
    expect(page.get_by_role("link", name="Register a prefix")).to_have_count(0)
    page.get_by_role("link", name="RO", exact=True).click()
    expect(page.locator("dl.facts")).to_contain_text("RO-AAA0005")
    for name in ("Reset…", "Deactivate…", "Change format…"):
        expect(page.get_by_role("link", name=name)).to_have_count(0)
    operator.shot("sequence-read-only")
    # Posting anyway, with the session's own token, from the page itself.
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    _submit(page, "/console/sequences/RO/deactivate", {"csrf": token or ""})
    expect(page.get_by_role("heading", level=1)).to_have_text("Forbidden")
    expect(page.get_by_role("alert")).to_contain_text("needs an admin key")
    operator.shot("refused-read-key")
    with console_server.api("read") as api:
        assert api.get("/api/v1/prefixes/RO").json()["is_active"] is True


def test_a_form_without_its_token_is_refused_and_logout_ends_the_session(
    operator: Operator, console_server: ConsoleServer
) -> None:
    with console_server.api("admin") as api:
        assert api.post("/api/v1/prefixes/TOK/ids").status_code == 201
    page = operator.page
    operator.login("admin")
    operator.goto("/console/sequences/TOK/deactivate")
    page.locator("input[name=csrf]").evaluate_all("nodes => nodes.forEach(n => n.remove())")
    page.get_by_role("button", name="Yes, deactivate TOK").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Form refused")
    expect(page.get_by_role("alert")).to_contain_text("Nothing was changed")
    operator.shot("refused-csrf")
    with console_server.api("read") as api:
        assert api.get("/api/v1/prefixes/TOK").json()["is_active"] is True

    operator.goto("/console")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("status")).to_contain_text("You are logged out")
    operator.goto("/console/sequences/TOK")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))


def fact(page: Page, name: str) -> Any:
    """Return the value of one fact of a sequence page ("Next ID")."""
    return (
        page.locator("dl.facts > div")
        .filter(has=page.get_by_role("term").filter(has_text=re.compile(f"^{name}$")))
        .get_by_role("definition")
    )


def _submit(page: Page, action: str, fields: dict[str, str]) -> None:
    """Build and submit a form in the page, as a crafted request from the console would."""
    page.evaluate(
        """([action, fields]) => {
            const form = document.createElement("form");
            form.method = "post";
            form.action = action;
            for (const [name, value] of Object.entries(fields)) {
                const input = document.createElement("input");
                input.type = "hidden"; input.name = name; input.value = value;
                form.appendChild(input);
            }
            document.body.appendChild(form);
            form.submit();
        }""",
        [action, fields],
    )
    page.wait_for_load_state()
