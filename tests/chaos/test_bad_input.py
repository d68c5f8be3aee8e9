"""Bad input, generated: every malformed, mistyped, out-of-range or unpriceable entry goes through
the real drain (real worker, Redis and PostgreSQL) to the dead-letter stream with its reason, and
the valid events published after it are still charged: the worker never crashes or stalls."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from metering.ops import redis_keys
from metering.usage.event import MAX_TOKENS
from tests.chaos.helpers import WORKER_ENV, Books, publish, settled
from tests.support import eventually
from tests.usage.helpers import Sessions, event
from tests.workers import Worker, running_worker

pytestmark = pytest.mark.slow

Fields = dict[str | bytes, str | bytes]
TOKEN_FIELDS = [
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
]
REQUIRED = ["event_id", "experiment_id", "provider", "model", "input_tokens", "output_tokens"]
REASONS = {
    "invalid_event",
    "missing_event",
    "unknown_provider",
    "unknown_model",
    "unknown_experiment",
    "invalid_data",
    "invalid_metadata",
}


@pytest.fixture(scope="module")
def worker(beat: None) -> Iterator[Worker]:
    with running_worker("usage", env=WORKER_ENV) as running:
        yield running


def _document(changes: dict[str, Any], drop: str | None = None) -> dict[str, Any]:
    """A valid event of experiment "{experiment}" (filled in later), changed."""
    document = {**event("{experiment}"), **changes}
    if drop is not None:
        del document[drop]
    return document


printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
bad_count = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=MAX_TOKENS + 1, max_value=2**70),
    st.sampled_from([2**31, 2**31 + 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
)
not_a_string = st.one_of(
    st.integers(), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)
)
bad_documents = st.one_of(
    st.builds(
        _document, st.tuples(st.sampled_from(TOKEN_FIELDS), bad_count).map(lambda p: dict([p]))
    ),
    st.builds(_document, st.just({}), st.sampled_from([*REQUIRED, "occurred_at"])),
    st.builds(
        _document,
        st.tuples(
            st.sampled_from(["event_id", "experiment_id", "provider", "model", "occurred_at"]),
            not_a_string,
        ).map(lambda p: dict([p])),
    ),
    st.builds(_document, st.builds(lambda m: {"model": f"nosuch-{m}"}, printable)),
    st.builds(_document, st.builds(lambda p: {"provider": f"nosuch-{p}"}, printable)),
    st.builds(
        _document,
        st.builds(
            lambda f, n: {f: "x" * n},
            st.sampled_from(["event_id", "experiment_id"]),
            st.integers(129, 2000),
        ),
    ),
    st.builds(_document, st.just({"reasoning_tokens": 10_000, "output_tokens": 10})),
    st.builds(_document, st.builds(lambda t: {"occurred_at": t}, st.text(max_size=30))),
    st.builds(_document, st.just({"experiment_id": "exp-that-does-not-exist"})),
    st.builds(
        _document,
        st.sampled_from(
            [
                {"metadata": {"note": "\udcff"}},  # lone surrogates, JSON-escaped
                {"metadata": {"\ud800": "x"}},
                {"\udcff": 1},
                {"metadata": {"note": "a\x00b"}},  # NUL, which JSONB cannot hold
                {"extra": "field"},
            ]
        ),
    ),
)
"""Event documents that must be refused, each for a reason the dead letter names."""


def _entry(kind: str, document: dict[str, Any], junk: bytes, cut: int) -> Fields:
    text = json.dumps(document)
    match kind:
        case "document":
            return {"event": text}
        case "truncated":
            return {"event": text[: cut % len(text)]}
        case "junk":
            return {"event": junk}
        case _:
            return {"evnt": text}


bad_entries = st.builds(
    _entry,
    st.sampled_from(["document", "document", "document", "truncated", "junk", "misnamed"]),
    bad_documents,
    st.binary(min_size=1, max_size=40),
    st.integers(min_value=0),
)


def _fill(fields: Fields, experiment_id: str) -> Fields:
    return {
        k: v.replace("{experiment}", experiment_id) if isinstance(v, str) else v
        for k, v in fields.items()
    }


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entries=st.lists(bad_entries, min_size=1, max_size=25))
async def test_every_bad_entry_is_dead_lettered_with_a_reason_and_the_rest_is_charged(
    worker: Worker, redis: Redis, sessions: Sessions, redis_prefix: str, entries: list[Fields]
) -> None:
    books = await Books.open(sessions, users=1, experiments_per_user=1)
    (experiment_id,) = books.experiments
    stream = redis_keys.usage_stream(redis_prefix)
    good = [event(experiment_id, n) for n in range(5)]
    books.record(good)
    async with redis.pipeline(transaction=False) as pipe:
        for fields in entries:
            pipe.xadd(stream, _fill(fields, experiment_id))  # type: ignore[arg-type]
        bad_ids = {i.decode() for i in await pipe.execute()}
    await publish(redis, redis_prefix, good)

    await eventually(lambda: books.all_charged(sessions), "the valid events after the bad")
    await eventually(lambda: settled(redis, stream), "every entry acknowledged")
    letters = {
        fields[b"entry_id"].decode(): fields
        for _, fields in await redis.xrange(redis_keys.dead_letter_stream(redis_prefix))
    }
    assert bad_ids <= letters.keys()
    for entry_id in bad_ids:
        assert letters[entry_id][b"reason"].decode() in REASONS
        assert letters[entry_id][b"detail"]
    assert worker.process.poll() is None
    await books.assert_exact(sessions)


async def test_bytes_that_are_not_utf8_are_dead_lettered_byte_for_byte(
    worker: Worker, redis: Redis, sessions: Sessions, redis_prefix: str
) -> None:
    books = await Books.open(sessions, users=1, experiments_per_user=1)
    (experiment_id,) = books.experiments
    good = [event(experiment_id, n) for n in range(3)]
    books.record(good)
    stream = redis_keys.usage_stream(redis_prefix)
    sent = json.dumps(event(experiment_id)).encode().replace(b'"model"', b'"mod\xe9l"')
    not_utf8 = await redis.xadd(stream, {"event": sent})
    bad_key = await redis.xadd(stream, {b"\xff\xfe": b"\xff"})
    await publish(redis, redis_prefix, good)

    await eventually(lambda: books.all_charged(sessions), "the valid events after the bad")
    await eventually(lambda: settled(redis, stream), "every entry acknowledged")
    letters = {
        fields[b"entry_id"]: fields
        for _, fields in await redis.xrange(redis_keys.dead_letter_stream(redis_prefix))
    }
    assert letters[not_utf8][b"reason"] == b"invalid_event"
    assert letters[not_utf8][b"detail"] == b"the event is not UTF-8 text"
    assert letters[not_utf8][b"event"] == sent
    assert letters[bad_key][b"reason"] == b"missing_event"
    await books.assert_exact(sessions)
