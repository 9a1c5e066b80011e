"""Settings from ``IDMANAGER_*`` environment variables and a ``.env`` file."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .infrastructure.database import DEFAULT_DATABASE_URL

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


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
        env_prefix="IDMANAGER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(DEFAULT_DATABASE_URL, description="SQLAlchemy database URL.")
    pool_size: int = Field(10, ge=1, le=1000, description="Database connections per process.")
    api_keys: Annotated[dict[str, Role], NoDecode] = Field(
        default_factory=dict,
        description="API keys and roles: 'key1:admin,key2:read' (or a JSON object).",
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
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                import json

                return json.loads(text)
            pairs = [item.strip() for item in text.split(",") if item.strip()]
            keys: dict[str, str] = {}
            for pair in pairs:
                key, sep, role = pair.rpartition(":")
                if not sep or not key:
                    raise ValueError("API keys must look like 'key:role', separated by commas")
                keys[key] = role
            return keys
        return value

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
