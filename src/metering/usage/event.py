"""The usage event: the wire contract between experiment runners and the pipeline.

A producer adds one stream entry per LLM call, `XADD <stream> * event <JSON>`, where the JSON is a
`UsageEvent`. This model is the single source of the contract: the JSON Schema in
`metering/schemas/usage-event.schema.json` is generated from it, and the worker validates every
entry with it. Token classes are disjoint, as the pricing engine counts them: `input_tokens`
excludes cache reads and writes, `output_tokens` includes `reasoning_tokens`.
"""

import hashlib
import json
import re
from datetime import datetime
from typing import Annotated, Any, Final

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

STREAM_FIELD: Final = "event"
"""The stream entry field that carries the event's JSON."""
MAX_TOKENS: Final = 100_000_000
MAX_METADATA_BYTES: Final = 4096
MAX_METADATA_KEYS: Final = 32
STANDARD_TIER: Final = "standard"
BATCH_TIER: Final = "batch"

TokenCount = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS)]
"""A token count: a JSON integer in 0..100,000,000 (no floats, booleans or strings)."""
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
"""Printable ASCII without spaces, 1 to 128 characters."""
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)
_CANONICAL: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
"""Built once: `json.dumps` with options builds an encoder per call, a third of a digest's cost."""
Tier = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")]


class UsageEvent(BaseModel):
    """One LLM call's token usage. `event_id` is unique per call; a retried call reuses it."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        title="UsageEvent",
        json_schema_extra={
            "$id": "https://metering.dev/schemas/usage-event.schema.json",
            "description": "One LLM call's token usage, sent as the `event` field of a stream "
            "entry: XADD metering:usage * event <JSON>.",
        },
    )

    event_id: Identifier = Field(description="Unique per LLM call; a retried call reuses it.")
    experiment_id: Identifier = Field(description="The MAACExperiment the call belongs to.")
    provider: Name = Field(description="Provider id or alias, e.g. openai, anthropic, google.")
    model: Name = Field(description="Model id, alias or dated snapshot, e.g. gpt-4o-mini.")
    input_tokens: TokenCount = Field(description="Prompt tokens, excluding cache reads/writes.")
    output_tokens: TokenCount = Field(description="Generated tokens, reasoning included.")
    cached_input_tokens: TokenCount = Field(0, description="Prompt tokens read from cache.")
    cache_write_tokens: TokenCount = Field(0, description="Prompt tokens written to cache.")
    reasoning_tokens: TokenCount = Field(0, description="The reasoning part of output_tokens.")
    occurred_at: AwareDatetime = Field(
        description="When the call happened, RFC 3339 with a UTC offset."
    )
    tier: Tier | None = Field(None, description="Service tier: standard (default), batch, ...")
    batch: bool | None = Field(None, description="true is the same as tier batch.")
    metadata: dict[str, JsonValue] | None = Field(
        None, description="Free-form, at most 32 keys and 4096 bytes of JSON; kept, not read."
    )

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str) or not RFC3339.fullmatch(value):
            raise ValueError("occurred_at must be RFC 3339 with an offset: 2025-06-01T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "UsageEvent":
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens are part of output_tokens and cannot exceed them")
        if self.batch and self.tier not in (None, BATCH_TIER):
            raise ValueError(f"batch: true contradicts tier {self.tier!r}")
        if self.metadata is not None:
            if len(self.metadata) > MAX_METADATA_KEYS:
                raise ValueError(f"metadata has more than {MAX_METADATA_KEYS} keys")
            try:
                encoded = json.dumps(self.metadata, allow_nan=False)
            except ValueError:
                raise ValueError("metadata must be plain JSON: NaN and Infinity are not") from None
            if len(encoded.encode()) > MAX_METADATA_BYTES:
                raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes of JSON")
        return self

    @property
    def effective_tier(self) -> str:
        """The tier the call is priced at: `batch: true` means batch, no tier means standard."""
        if self.batch:
            return BATCH_TIER
        return self.tier or STANDARD_TIER

    def to_json(self) -> str:
        """The wire form: compact JSON without unset optional fields."""
        return self.model_dump_json(exclude_none=True)

    def digest(self) -> str:
        """SHA-256 of the event's canonical JSON: equal for equal events, however they were sent.

        Canonical means the standard library's `json` with sorted keys and no spaces. Without
        metadata every value is ASCII text, a bool or a small integer, for which orjson writes
        those very bytes, faster; metadata (any JSON, floats and non-ASCII text included) takes
        the standard library's way.
        """
        document = self.model_dump(mode="json", exclude_none=True)
        if self.metadata is None:
            canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
        else:
            canonical = _CANONICAL.encode(document).encode()
        return hashlib.sha256(canonical).hexdigest()


def parse_event(raw: str | bytes) -> UsageEvent:
    """Validate one event's JSON; raises `pydantic.ValidationError`."""
    return UsageEvent.model_validate_json(raw)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the wire contract, as committed in `metering/schemas/`."""
    schema = UsageEvent.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    """`json_schema()` as the committed file's text."""
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"
