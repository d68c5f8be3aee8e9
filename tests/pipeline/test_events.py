"""The wire contract: what the event model accepts and refuses, and its committed JSON Schema."""

import json
from importlib import resources
from typing import Any

import pytest
from pydantic import ValidationError

from metering.events import UsageEvent, parse_event, schema_text
from tests.pipeline.helpers import event


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


def test_wire_form_round_trips() -> None:
    parsed = parse(tier="batch", metadata={"step": 3})
    assert parse_event(parsed.to_json()) == parsed
