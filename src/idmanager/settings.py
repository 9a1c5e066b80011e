"""Settings from ``IDMANAGER_*`` environment variables and a ``.env`` file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .infrastructure.database import DEFAULT_DATABASE_URL


class Role(StrEnum):
    """What an API key may do; each role includes the ones before it."""

    READ = "read"
    GENERATE = "generate"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Its place in the order above: a role includes every role of a lower rank."""
        return _RANKS[self]


_RANKS = {role: rank for rank, role in enumerate(Role)}
MIN_KEY_LENGTH = 16
_ROLES = {role.value for role in Role}
_SCOPE_PATTERN = re.compile(r"[A-Za-z0-9_.:@*?-]+")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's role and, for a key bound to tenants, the scopes it may use."""

    role: Role
    scopes: tuple[str, ...] | None = None  # glob patterns (``acme``, ``shop-*``); None: all


def _key_spec(number: int, role: str, scopes: str | None) -> ApiKey:
    if role not in _ROLES:
        raise ValueError(f"API key #{number}: unknown role {role!r}; use read, generate or admin")
    patterns = None
    if scopes is not None:
        patterns = tuple(p for p in scopes.split("|") if p)
        if not patterns or not all(_SCOPE_PATTERN.fullmatch(p) for p in patterns):
            raise ValueError(
                f"API key #{number}: its scopes must be patterns of letters, digits, _.:@- "
                "and the wildcards * and ?, separated by |"
            )
    return ApiKey(Role(role), patterns)


def _check_key(number: int, key: str) -> str:
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(
            f"API key #{number} is shorter than {MIN_KEY_LENGTH} characters; use a long random "
            "key, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`"
        )
    return key


def _parse_keys(text: str) -> dict[str, ApiKey]:
    """Read ``key:role[:scopes],…`` (or a JSON object) into key specs; never echo a key.

    Keys are told apart by their position (#1, #2, …) in every message.
    """
    text = text.strip()
    if text.startswith("{"):
        return _parse_json_keys(text)
    keys: dict[str, ApiKey] = {}
    pairs = [item.strip() for item in text.split(",") if item.strip()]
    for number, pair in enumerate(pairs, 1):
        parts = pair.split(":")
        # The role is the first part after the key that names one: keys rarely hold ':',
        # scopes may (a scope is letters, digits and _.:@-).
        at = next((i for i, part in enumerate(parts) if i and part in _ROLES), None)
        if at is None and len(parts) == 2:
            _key_spec(number, parts[1], None)  # names the unknown role
        if at is None:
            raise ValueError(
                f"API key #{number}: expected 'key:role' or 'key:role:scopes' with a role of "
                "read, generate or admin"
            )
        key = _check_key(number, ":".join(parts[:at]))
        scopes = ":".join(parts[at + 1 :]) if at + 1 < len(parts) else None
        keys[key] = _key_spec(number, parts[at], scopes)
    return keys


def _parse_json_keys(text: str) -> dict[str, ApiKey]:
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        # The decoder's message quotes the text: keep only where it failed.
        position = getattr(exc, "pos", "?")
        raise ValueError(f"API keys in JSON cannot be read (at character {position})") from None
    if not isinstance(loaded, dict):
        raise ValueError("API keys in JSON must be an object of key: role")
    keys: dict[str, ApiKey] = {}
    for number, (key, spec) in enumerate(loaded.items(), 1):
        _check_key(number, str(key))
        if isinstance(spec, dict):
            scopes = spec.get("scopes")
            if isinstance(scopes, list):
                scopes = "|".join(str(s) for s in scopes)
            keys[str(key)] = _key_spec(number, str(spec.get("role")), scopes)
        else:
            keys[str(key)] = _key_spec(number, str(spec), None)
    return keys


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
    api_keys: Annotated[dict[str, ApiKey], NoDecode] = Field(
        default_factory=dict,
        description="API keys (16 characters or more), their roles and, optionally, the scopes "
        "they may use: 'key1:admin,key2:generate:acme|shop-*' (or a JSON object).",
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
    block_cache_max_prefixes: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Most sequences the block cache holds blocks of; past it, the longest "
        "idle hands its tail back.",
    )
    block_cache_idle_s: float = Field(
        600.0, gt=0, description="A sequence unused this long hands its reserved tail back."
    )
    create_role: Role = Field(
        Role.GENERATE,
        description="The role a key needs for an allocation to create a sequence that does "
        "not exist yet ('admin': generate keys may only use registered sequences).",
    )
    max_sequences: int | None = Field(
        100_000,
        ge=1,
        description="Most sequences the service creates in all; past it, new prefixes are "
        "refused (409). Empty: no limit.",
    )
    period_window_days: int | None = Field(
        400,
        ge=0,
        description="A document date given for a period template must lie within this many "
        "days of today. Empty: any date.",
    )
    fiscal_year_start: int = Field(
        1,
        ge=1,
        le=12,
        description="The first month of the fiscal year, for {FY} in period templates (4: "
        "April to March, named by the year it ends in). The same for every process sharing "
        "the database.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"],
        description="Host names the service answers to (the Host header), comma-separated; "
        "'*' for any. The listening host is always allowed.",
    )
    metrics_public: bool = Field(
        False, description="Serve /metrics without a key (default: a read key is needed)."
    )
    metrics_max_prefixes: int = Field(
        100,
        ge=0,
        le=10_000,
        description="Prefixes with a metrics label of their own; the others are counted "
        "together under '_other'.",
    )
    health_cache_s: float = Field(
        1.0, ge=0, le=60, description="Health checks share one probe of the database this long."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Close a connection whose request headers take longer."
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, le=300, description="Close an idle keep-alive connection after this long."
    )
    max_connections: int = Field(
        1000, ge=1, description="Most connections and requests a worker serves at once (503 past)."
    )
    idempotency_ttl_s: int = Field(
        86_400,
        ge=60,
        le=30 * 86_400,
        description="How long the answer to a request with an Idempotency-Key is kept "
        "for its repeats.",
    )
    console_secret: SecretStr | None = Field(
        None,
        description="The key that signs console sessions; set it when several workers or "
        "replicas serve the console (default: a random key per process).",
    )
    console_session_minutes: int = Field(
        480, ge=1, le=10_080, description="A console session expires after this long."
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip().lower() for host in value.split(",") if host.strip()]
        return value

    @field_validator("max_sequences", "period_window_days", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

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
            self.api_keys = {**self.api_keys, **found}
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
