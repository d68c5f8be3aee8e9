"""The wire contract: what the event model accepts and refuses, and its committed JSON Schema."""

import hashlib
import json
from importlib import resources
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from metering.usage.event import UsageEvent, parse_event, schema_text
from tests.usage.helpers import event


def parse(**changes: Any) -> UsageEvent:
    return parse_event(json.dumps(event("exp-1", **changes)))


def test_committed_schema_is_generated_from_the_model() -> None:
    committed = resources.files("metering").joinpath("schemas/usage-event.schema.json").read_text()
    assert committed == schema_text()


def test_a_minimal_event_gets_defaults() -> None:
    parsed = parse()
    assert (parsed.cached_input_tokens, parsed.cache_write_tokens, parsed.reasoning_tokens) == (
        0,
        0,
        0,
    )
    assert parsed.effective_tier == "standard"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_tokens", 1.0),
        ("input_tokens", 1.5),
        ("input_tokens", True),
        ("input_tokens", "10"),
        ("input_tokens", -1),
        ("output_tokens", 100_000_001),
        ("cached_input_tokens", None),
        ("event_id", ""),
        ("event_id", "has space"),
        ("event_id", "x" * 129),
        ("model", "m" * 129),
        ("occurred_at", "2025-09-01T12:00:00"),
        ("occurred_at", 1756728000),
        ("occurred_at", "1756728000"),
        ("occurred_at", "2025-09-01"),
        ("tier", "Batch!"),
        ("unexpected", 1),
        ("metadata", {"k": "v" * 5000}),
        ("metadata", {f"k{i}": i for i in range(33)}),
    ],
)
def test_refuses(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        parse(**{field: value})


def test_bounds_are_inclusive() -> None:
    parsed = parse(input_tokens=0, output_tokens=100_000_000, reasoning_tokens=100_000_000)
    assert parsed.output_tokens == 100_000_000


def test_reasoning_is_part_of_output() -> None:
    with pytest.raises(ValidationError, match="reasoning_tokens"):
        parse(output_tokens=10, reasoning_tokens=11)


def test_batch_flag_means_batch_tier() -> None:
    assert parse(batch=True).effective_tier == "batch"
    assert parse(batch=True, tier="batch").effective_tier == "batch"
    assert parse(tier="flex").effective_tier == "flex"
    with pytest.raises(ValidationError, match="contradicts"):
        parse(batch=True, tier="priority")


def test_digest_ignores_spelling_but_not_content() -> None:
    document = event("exp-1", metadata={"b": 1, "a": 2})
    same = {**document, "occurred_at": "2025-09-01T12:00:00.000Z", "metadata": {"a": 2, "b": 1}}
    assert parse_event(json.dumps(document)).digest() == parse_event(json.dumps(same)).digest()
    changed = {**document, "output_tokens": document["output_tokens"] + 1}
    assert parse_event(json.dumps(document)).digest() != parse_event(json.dumps(changed)).digest()


@given(
    identifier=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128
    ),
    tokens=st.integers(0, 100_000_000),
    tier=st.sampled_from([None, "batch", "flex"]),
    batch=st.sampled_from([None, False, True]),
    microseconds=st.integers(0, 999_999),
)
def test_digest_without_metadata_is_that_of_the_standard_librarys_canonical_json(
    identifier: str, tokens: int, tier: str | None, batch: bool | None, microseconds: int
) -> None:
    """Payload digests are stored with every row and compared on every redelivery: the fast way
    must give the very bytes of `json.dumps(..., sort_keys=True, separators=(",", ":"))`."""
    if batch and tier not in (None, "batch"):
        batch = None
    document = event(identifier, event_id=identifier, input_tokens=tokens, output_tokens=tokens)
    document["occurred_at"] = f"2025-09-01T12:00:00.{microseconds:06d}+02:00"
    document |= {k: v for k, v in {"tier": tier, "batch": batch}.items() if v is not None}
    parsed = parse_event(json.dumps(document))
    canonical = json.dumps(
        parsed.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
    )
    assert parsed.digest() == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_metadata_with_a_non_finite_number_is_refused(value: str) -> None:
    """Not JSON, though some encoders write it: JSONB would refuse it, or store it as null."""
    document = json.dumps(event("exp-1", metadata={"score": 1})).replace(
        '"score": 1', f'"score": {value}'
    )
    with pytest.raises(ValidationError, match="NaN and Infinity"):
        parse_event(document)


def test_wire_form_round_trips() -> None:
    parsed = parse(tier="batch", metadata={"step": 3})
    assert parse_event(parsed.to_json()) == parsed
