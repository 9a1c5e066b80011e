"""The access matrix: each route x no key / wrong key / read / generate / admin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import Keys, Server

RANK = {"read": 0, "generate": 1, "admin": 2}
CREDENTIALS = (None, "wrong", "read", "generate", "admin")

# (method, path, JSON body, least role; None = open to all)
ROUTES: list[tuple[str, str, Any, str | None]] = [
    ("POST", "/api/v1/prefixes/{prefix}/ids", None, "generate"),
    ("GET", "/api/v1/prefixes", None, "read"),
    ("GET", "/api/v1/prefixes/{prefix}", None, "read"),
    ("PUT", "/api/v1/prefixes/{prefix}", {"is_active": True}, "admin"),
    ("POST", "/api/v1/prefixes/{prefix}/reset", {"force": True, "dry_run": True}, "admin"),
    ("GET", "/api/v1/ids/{prefix}-AAA0001", None, "read"),
    ("GET", "/health", None, None),
    ("GET", "/health/live", None, None),
    ("GET", "/metrics", None, None),
    ("GET", "/docs", None, None),
    ("GET", "/openapi.json", None, None),
]


@pytest.fixture
def active_prefix(http: httpx.Client, keys: Keys, prefix: str) -> str:
    """A registered, active prefix, so that allowed reads answer 200."""
    response = http.put(f"/api/v1/prefixes/{prefix}", json={}, headers=keys.header("admin"))
    assert response.status_code == 200, response.text
    return prefix


@pytest.mark.parametrize("credential", CREDENTIALS, ids=lambda c: c or "none")
@pytest.mark.parametrize(
    ("method", "path", "body", "needed"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES]
)
def test_access(
    http: httpx.Client,
    keys: Keys,
    active_prefix: str,
    method: str,
    path: str,
    body: Any,
    needed: str | None,
    credential: str | None,
) -> None:
    url = path.format(prefix=active_prefix)
    headers = keys.header(credential)
    response = http.request(method, url, json=body, headers=headers)
    if needed is None:
        expected = 200
    elif credential in (None, "wrong"):
        expected = 401
    elif RANK[credential] < RANK[needed]:
        expected = 403
    else:
        expected = 201 if method == "POST" and url.endswith("/ids") else 200
    assert response.status_code == expected, response.text
    if expected in (401, 403):
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == expected
        if expected == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
        else:
            assert needed in problem["detail"]
        # The key the request carried is never echoed.
        if credential is not None:
            assert headers["Authorization"].split(" ", 1)[1] not in response.text


@pytest.mark.parametrize(
    "authorization", ["Basic dXNlcjpwYXNz", "Bearer", "bearer nope", "Token x", "Bearer a b"]
)
def test_malformed_credentials_are_401(http: httpx.Client, authorization: str) -> None:
    response = http.get("/api/v1/prefixes", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def test_keys_are_never_logged(http: httpx.Client, keys: Keys, server: Server) -> None:
    for role in CREDENTIALS:
        http.get("/api/v1/prefixes", headers=keys.header(role))
    log = server.log()
    assert "GET /api/v1/prefixes" in log
    for key in (keys.read, keys.generate, keys.admin):
        assert key not in log
