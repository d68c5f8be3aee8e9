"""The Python side of the cases shared with the TypeScript package: the same usage objects give
the same disjoint counts, the same experiments the same shard, the same events the same verdict."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from metering.ops import redis_keys
from metering.usage.event import parse_event
from metering.usage.producer import event_from_usage
from tests.clients.cases import EVENTS, USAGE, event_document

TOKENS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens")


@pytest.mark.parametrize("case", USAGE["usage"], ids=lambda case: case["name"])
def test_usage_objects_give_the_shared_counts(case: dict[str, Any]) -> None:
    def read() -> dict[str, int]:
        event = event_from_usage(
            case["provider"], case["usage"], event_id="evt-1", experiment_id="exp-1", model="m"
        )
        return {name: getattr(event, name) for name in (*TOKENS, "reasoning_tokens")}

    if "error" in case:
        with pytest.raises((ValueError, ValidationError), match=case["error"]):
            read()
    else:
        assert read() == case["tokens"]


@pytest.mark.parametrize("case", USAGE["shards"], ids=lambda case: f"{case['shards']}-shards")
def test_experiments_route_to_the_shared_shard(case: dict[str, Any]) -> None:
    stream = redis_keys.stream_for_experiment("metering", case["shards"], case["experiment_id"])
    assert stream == case["stream"]


@pytest.mark.parametrize("case", EVENTS["cases"], ids=lambda case: case["name"])
def test_events_get_the_shared_verdict(case: dict[str, Any]) -> None:
    raw = json.dumps(event_document(case))
    if case["valid"]:
        parse_event(raw)
    else:
        with pytest.raises(ValidationError):
            parse_event(raw)
