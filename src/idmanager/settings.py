"""Settings from ``IDMANAGER_*`` environment variables and a ``.env`` file."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .infrastructure.database import DEFAULT_DATABASE_URL


def _parse_keys(text: str) -> dict[str, str]:
    """Read ``key:role,key:role`` (or a JSON object) into a mapping; never echo a key."""
    text = text.strip()
    if text.startswith("{"):
        loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError("API keys in JSON must be an object of key: role")
        return {str(k): str(v) for k, v in loaded.items()}
    keys: dict[str, str] = {}
    for pair in (item.strip() for item in text.split(",")):
        if not pair:
            continue
        key, sep, role = pair.rpartition(":")
        if not sep or not key:
            raise ValueError("API keys must look like 'key:role', separated by commas")
        if role not in {r.value for r in Role}:
            raise ValueError(f"unknown role {role!r}: use read, generate or admin")
        keys[key] = role
    return keys


class Role(StrEnum):
    """What an API key may do; each role includes the ones before it."""

    READ = "read"
    GENERATE = "generate"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


class Settings(BaseSettings):
    """Service configuration. Every field can be set as ``IDMANAGER_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="IDMANAGER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # A refused value may be a secret (a key, a database password): never print it.
        hide_input_in_errors=True,
    )

    database_url: str = Field(DEFAULT_DATABASE_URL, description="SQLAlchemy database URL.")
    pool_size: int = Field(10, ge=1, le=1000, description="Database connections per process.")
    api_keys: Annotated[dict[str, Role], NoDecode] = Field(
        default_factory=dict,
        description="API keys and roles: 'key1:admin,key2:read' (or a JSON object).",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file holding more API keys in the same form, one or more per line "
        "(for secrets mounted as files); its keys join IDMANAGER_API_KEYS.",
    )
    max_bulk: int = Field(10_000, ge=1, le=10_000_000, description="Most IDs per request.")
    create_missing: bool = Field(True, description="Create unknown prefixes on first use.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    log_format: str = Field("text", pattern="^(text|json)$", description="'text' or 'json'.")
    lock_timeout_ms: int = Field(
        5000, ge=0, description="How long an allocation waits for a locked sequence (0: forever)."
    )
    migrate_on_start: bool = Field(True, description="Apply migrations when the server starts.")
    block_cache: bool = Field(
        False,
        description="Serve small allocations from blocks of IDs reserved ahead by each process: "
        "unique, increasing per process only, gaps after a crash (opt-in).",
    )
    block_cache_max_count: int = Field(
        100, ge=1, le=10_000, description="Largest count served from the block cache."
    )
    block_cache_initial_block: int = Field(
        100, ge=1, le=1_000_000, description="IDs in a prefix's first block."
    )
    block_cache_min_block: int = Field(
        10, ge=1, le=1_000_000, description="Smallest block, for a prefix in slow use."
    )
    block_cache_max_block: int = Field(
        10_000, ge=1, le=1_000_000, description="Largest block, for a prefix in heavy use."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        return _parse_keys(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _read_keys_file(self) -> Settings:
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read the API keys file: {exc.strerror}") from None
            lines = [line.strip() for line in text.splitlines()]
            found = _parse_keys(",".join(line for line in lines if line and line[0] != "#"))
            self.api_keys = {**self.api_keys, **{k: Role(r) for k, r in found.items()}}
        return self

    @field_validator("block_cache_max_block")
    @classmethod
    def _check_blocks(cls, value: int, info: ValidationInfo) -> int:
        smallest = info.data.get("block_cache_min_block", 1)
        initial = info.data.get("block_cache_initial_block", smallest)
        if not smallest <= initial <= value:
            raise ValueError(
                "block sizes must satisfy IDMANAGER_BLOCK_CACHE_MIN_BLOCK <= "
                "IDMANAGER_BLOCK_CACHE_INITIAL_BLOCK <= IDMANAGER_BLOCK_CACHE_MAX_BLOCK"
            )
        return value

    @property
    def loopback_only(self) -> bool:
        """True when no API keys are configured: the server then serves loopback only."""
        return not self.api_keys
