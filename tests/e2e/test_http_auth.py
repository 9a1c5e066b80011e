"""API keys as an operator configures them (``IDMANAGER_API_KEYS``), on a real server.

The access matrix of every route and role is the in-process tier's
(``tests/unit/test_http.py``); here: keys from the environment decide, and never reach the log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Keys, Server

import httpx


def test_keys_from_the_environment_decide_and_are_never_logged(
    servers: dict[str, Server], keys: Keys, new_prefix: Callable[[str], str]
) -> None:
    server = servers["sqlite"]
    prefix = new_prefix("A")
    allocate = f"/api/v1/prefixes/{prefix}/ids"
    reset = f"/api/v1/prefixes/{prefix}/reset"
    expected = {
        # credential: (allocate, read the stats, reset)
        None: (401, 401, 401),
        "wrong": (401, 401, 401),
        "read": (403, 404, 403),  # allowed to read; nothing allocated yet
        "generate": (201, 200, 403),
        "admin": (201, 200, 200),
    }
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for credential, statuses in expected.items():
            headers = keys.header(credential)
            got = (
                http.post(allocate, headers=headers).status_code,
                http.get(f"/api/v1/prefixes/{prefix}", headers=headers).status_code,
                http.post(
                    reset, json={"force": True, "dry_run": True}, headers=headers
                ).status_code,
            )
            assert got == statuses, credential
        refused = http.get("/api/v1/prefixes")
        assert refused.headers["www-authenticate"] == 'Bearer realm="idmanager"'
    log = server.log()
    assert f"POST {allocate}" in log
    for key in keys.all:
        assert key not in log
