"""Request and response bodies, with the descriptions and examples that OpenAPI shows."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..application.results import SequenceStats


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:idmanager:problem:prefix-inactive",
                    "title": "Prefix inactive",
                    "status": 409,
                    "detail": "Prefix CUS is inactive and issues no new IDs",
                    "instance": "/api/v1/prefixes/CUS/ids",
                }
            ]
        },
    )

    type: str = Field("about:blank", description="URI naming the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(None, description="What went wrong this time.")
    instance: str | None = Field(None, description="The path of the request that failed.")


class IdsResponse(BaseModel):
    """IDs just allocated; they are committed before the response is sent."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"prefix": "CUS", "ids": ["CUS-AAA0001", "CUS-AAA0002"], "count": 2},
            ]
        }
    )

    prefix: str = Field(description="The normalised prefix.")
    ids: list[str] = Field(
        description="The IDs, in order and consecutive (with the block cache on, consecutive "
        "unless a reserved block ends among them)."
    )
    count: int = Field(description="How many IDs were allocated.")


class FormatModel(BaseModel):
    """How a prefix's IDs are written. The defaults give ``PREFIX-AAA0001``."""

    # Strict: JSON true is not a width, nor 1 a yes (a "force": 1 must not force a reset).
    model_config = ConfigDict(extra="forbid", strict=True)

    separator: str = Field(
        "-", max_length=1, description="Between prefix and letters: '-', '.', '/', ':', '#' or ''."
    )
    letter_width: int = Field(
        3, ge=0, le=8, description="Initial number of letters; 0 means digits only."
    )
    digit_width: int = Field(4, ge=1, le=12, description="Number of digits.")


class PrefixList(BaseModel):
    """A page of sequences, ordered by scope and prefix."""

    items: list[SequenceStats] = Field(description="The sequences on this page.")
    skip: int = Field(description="How many sequences were skipped.")
    limit: int = Field(description="The most sequences a page holds.")


class ConfigureRequest(BaseModel):
    """Register a prefix, or change its format, state or starting point."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"format": {"separator": "-", "letter_width": 3, "digit_width": 4}},
                {"is_active": False},
                {"latest_id": "INV-AAB0100", "force": False},
            ]
        },
    )

    format: FormatModel | None = Field(
        None, description="The ID format; fixed once the prefix has issued an ID."
    )
    is_active: bool | None = Field(None, description="Activate or deactivate the prefix.")
    latest_id: str | None = Field(
        None,
        max_length=1000,
        description="Make this the latest ID issued (e.g. to continue a legacy sequence).",
    )
    force: bool = Field(False, description="Allow latest_id to move the sequence backwards.")


class ResetRequest(BaseModel):
    """Move a sequence. Moving it backwards re-issues IDs, so it needs ``force``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"reset_to": "TEST-ZZZ9999", "force": False, "dry_run": False},
                {"reset_to": None, "force": True, "dry_run": True},
            ]
        },
    )

    reset_to: str | None = Field(
        None,
        max_length=1000,
        description="The new latest ID (the next ID is its successor); null starts over.",
    )
    force: bool = Field(False, description="Allow moving the sequence backwards.")
    dry_run: bool = Field(False, description="Report what the reset would do; change nothing.")


class ParsedIdResponse(BaseModel):
    """An ID read back into its parts (format corrections applied)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "prefix": "CUS",
                    "letters": "AAB",
                    "number": 12,
                    "ordinal": 10011,
                    "normalized": "CUS-AAB0012",
                    "corrected": True,
                }
            ]
        }
    )

    prefix: str
    letters: str = Field(description="The letter block ('' for digits-only formats).")
    number: int = Field(description="The number within the letter block.")
    ordinal: int = Field(description="The position of the ID in its sequence (1 is the first).")
    normalized: str = Field(description="The ID written in its canonical form.")
    corrected: bool = Field(description="Whether the given text differs from the canonical form.")


class Liveness(BaseModel):
    """The process answers; the database is not consulted."""

    status: str = Field(examples=["alive"])
