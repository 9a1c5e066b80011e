"""Settings: API keys from the environment and from a file (secrets mounted as files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from idmanager.settings import ApiKey, Role, Settings

ADMIN, READ, GEN, OPS, RO, ENV = (
    f"{name}-key-0123456789" for name in ("admin", "read", "gen", "ops", "ro", "env")
)


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDMANAGER_API_KEYS", f"{ADMIN}:admin, {READ}:read:acme|shop-*")
    assert Settings(_env_file=None).api_keys == {
        ADMIN: ApiKey(Role.ADMIN),
        READ: ApiKey(Role.READ, ("acme", "shop-*")),
    }


def test_keys_from_a_file_join_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "keys"
    secret.write_text(f"# mounted secret\n{GEN}:generate\n{OPS}:admin,{RO}:read\n")
    monkeypatch.setenv("IDMANAGER_API_KEYS", f"{ENV}:read")
    monkeypatch.setenv("IDMANAGER_API_KEYS_FILE", str(secret))
    settings = Settings(_env_file=None)
    assert settings.api_keys == {
        ENV: ApiKey(Role.READ),
        GEN: ApiKey(Role.GENERATE),
        OPS: ApiKey(Role.ADMIN),
        RO: ApiKey(Role.READ),
    }
    assert not settings.loopback_only


def test_bad_keys_are_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for given in ("very-secret-key-123:root", '{"very-secret-key-123": "root"}'):
        monkeypatch.setenv("IDMANAGER_API_KEYS", given)
        with pytest.raises(ValueError, match="#1: unknown role 'root'") as caught:
            Settings(_env_file=None)
        assert "very-secret" not in str(caught.value)
    for short in ("a:admin", '{"a": "admin"}', "short-key:read"):
        monkeypatch.setenv("IDMANAGER_API_KEYS", short)
        with pytest.raises(ValueError, match="#1 is shorter than 16 characters") as caught:
            Settings(_env_file=None)
        assert "short-key" not in str(caught.value)
    monkeypatch.setenv("IDMANAGER_API_KEYS", '{"very-secret-key-123": ')
    with pytest.raises(ValueError, match="cannot be read") as caught:
        Settings(_env_file=None)
    assert "very-secret" not in str(caught.value)
    monkeypatch.delenv("IDMANAGER_API_KEYS")
    monkeypatch.setenv("IDMANAGER_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot read the API keys file"):
        Settings(_env_file=None)
