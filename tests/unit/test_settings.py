"""Settings: API keys from the environment and from a file (secrets mounted as files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from idmanager.settings import Role, Settings


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDMANAGER_API_KEYS", "k-admin:admin, k-read:read")
    assert Settings(_env_file=None).api_keys == {"k-admin": Role.ADMIN, "k-read": Role.READ}


def test_keys_from_a_file_join_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "keys"
    secret.write_text("# mounted secret\nk-gen:generate\nk-ops:admin,k-ro:read\n")
    monkeypatch.setenv("IDMANAGER_API_KEYS", "k-env:read")
    monkeypatch.setenv("IDMANAGER_API_KEYS_FILE", str(secret))
    settings = Settings(_env_file=None)
    assert settings.api_keys == {
        "k-env": Role.READ,
        "k-gen": Role.GENERATE,
        "k-ops": Role.ADMIN,
        "k-ro": Role.READ,
    }
    assert not settings.loopback_only


def test_bad_keys_are_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IDMANAGER_API_KEYS", "very-secret:root")
    with pytest.raises(ValueError, match="unknown role 'root'") as caught:
        Settings(_env_file=None)
    assert "very-secret" not in str(caught.value)
    monkeypatch.delenv("IDMANAGER_API_KEYS")
    monkeypatch.setenv("IDMANAGER_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot read the API keys file"):
        Settings(_env_file=None)
