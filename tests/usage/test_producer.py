"""The emitter on a Redis stand-in: stream routing, pipelining, halt flags, SDK usage, budgets."""

import json
from types import SimpleNamespace

import fakeredis
import pytest
from pydantic import ValidationError

from metering.ops import redis_keys
from metering.usage.producer import (
    BudgetExceeded,
    Emitter,
    check_budget,
    event_from_usage,
    openai_tokens,
)
from tests.usage.helpers import event


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_emit_many_routes_each_event_to_its_shard(client: fakeredis.FakeRedis) -> None:
    emitter = Emitter(client, prefix="p", shards=4)
    documents = [event(f"exp-{n}") for n in range(12)]
    entry_ids = emitter.emit_many(documents)
    assert len(entry_ids) == 12
    for document in documents:
        stream = redis_keys.stream_for_experiment("p", 4, document["experiment_id"])
        payloads = [json.loads(f[b"event"]) for _, f in client.xrange(stream)]
        assert document["event_id"] in {p["event_id"] for p in payloads}


def test_emit_validates_before_sending(client: fakeredis.FakeRedis) -> None:
    emitter = Emitter(client, prefix="p")
    with pytest.raises(ValidationError):
        emitter.emit(event("exp", input_tokens=-1))
    assert client.xlen(redis_keys.usage_stream("p")) == 0
    emitter.emit(event("exp"))
    assert client.xlen(redis_keys.usage_stream("p")) == 1


def test_should_stop_reads_the_halt_flag(client: fakeredis.FakeRedis) -> None:
    emitter = Emitter(client, prefix="p")
    assert not emitter.should_stop("exp")
    client.set(redis_keys.halt_flag("p", "exp"), "{}")
    assert emitter.should_stop("exp")


def test_check_budget() -> None:
    assert check_budget(100, 60) == 40
    assert check_budget(SimpleNamespace(credits=100), 100) == 0
    with pytest.raises(BudgetExceeded, match="101"):
        check_budget(100, 101)


def test_openai_chat_usage_by_attribute() -> None:
    usage = SimpleNamespace(
        prompt_tokens=1000,
        completion_tokens=300,
        prompt_tokens_details=SimpleNamespace(cached_tokens=400),
        completion_tokens_details=SimpleNamespace(reasoning_tokens=120),
    )
    assert openai_tokens(usage) == {
        "input_tokens": 600,
        "cached_input_tokens": 400,
        "output_tokens": 300,
        "reasoning_tokens": 120,
    }


def test_openai_responses_usage_by_dict() -> None:
    usage = {"input_tokens": 50, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 0}}
    assert openai_tokens(usage)["input_tokens"] == 50


def test_anthropic_usage_is_already_disjoint() -> None:
    usage = {
        "input_tokens": 20,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 300,
        "output_tokens": 90,
    }
    built = event_from_usage(
        "anthropic", usage, event_id="e", experiment_id="x", model="claude-sonnet-4"
    )
    assert (built.input_tokens, built.cached_input_tokens, built.cache_write_tokens) == (
        20,
        1000,
        300,
    )
    assert built.occurred_at.tzinfo is not None


def test_google_usage_counts_thoughts_as_reasoning_output() -> None:
    usage = SimpleNamespace(
        prompt_token_count=800,
        cached_content_token_count=200,
        candidates_token_count=100,
        thoughts_token_count=50,
    )
    rest = {
        "promptTokenCount": 800,
        "cachedContentTokenCount": 200,
        "candidatesTokenCount": 100,
        "thoughtsTokenCount": 50,
    }
    expected = (600, 200, 150, 50)
    for source in (usage, rest):
        built = event_from_usage(
            "google", source, event_id="e", experiment_id="x", model="gemini-2.5-flash"
        )
        counts = (
            built.input_tokens,
            built.cached_input_tokens,
            built.output_tokens,
            built.reasoning_tokens,
        )
        assert counts == expected


def test_unknown_sdk_is_refused() -> None:
    with pytest.raises(ValueError, match="no usage reader"):
        event_from_usage("cohere", {}, event_id="e", experiment_id="x", model="m")
