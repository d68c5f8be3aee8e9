"""Publishing usage events from a Python experiment runner: Redis only, no Celery.

`Emitter` (sync) and `AsyncEmitter` (asyncio) add events to the usage stream of their experiment
(`XADD <stream> * event <JSON>`), one at a time or pipelined, and read the halt flag the workers
set when the owner's balance runs out. Helpers turn the usage objects of the OpenAI, Anthropic and
Google SDK responses (by attribute or dict access) into the disjoint token counts of the event.
"""

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from metering.errors import PermanentError
from metering.ops import redis_client, redis_keys
from metering.ops.redis_client import AsyncRedis, SyncRedis
from metering.usage.event import STREAM_FIELD, UsageEvent
from metering.usage.streams import text

EventLike = UsageEvent | Mapping[str, Any]


class BudgetExceeded(PermanentError):
    """A run's estimated credits exceed the balance it would be charged to."""

    code = "insufficient_credits"


class HasCredits(Protocol):
    @property
    def credits(self) -> int: ...


def check_budget(user: HasCredits | int, estimate: int) -> int:
    """Preflight: refuse a run whose estimate (whole credits) exceeds the user's balance.

    `user` is a balance in credits or anything with a `credits` attribute (e.g. `models.User`).
    Returns the credits left after the estimate; raises `BudgetExceeded` when it would be negative.
    """
    balance = user if isinstance(user, int) else user.credits
    if estimate < 0:
        raise ValueError("an estimate is a whole number of credits >= 0")
    if estimate > balance:
        raise BudgetExceeded(
            f"the run is estimated at {estimate:,} credits but the balance is {balance:,}"
        )
    return balance - estimate


def _event(event: EventLike) -> UsageEvent:
    return event if isinstance(event, UsageEvent) else UsageEvent.model_validate(event)


class _Streams:
    def __init__(self, prefix: str, shards: int) -> None:
        self.prefix = prefix
        self.shards = shards

    def entry(self, event: EventLike) -> tuple[str, dict[str | bytes, str]]:
        """Validate the event and return its stream and entry fields."""
        valid = _event(event)
        stream = redis_keys.stream_for_experiment(self.prefix, self.shards, valid.experiment_id)
        return stream, {STREAM_FIELD: valid.to_json()}


class Emitter(_Streams):
    """Synchronous producer. Events are validated before they leave the process."""

    def __init__(self, client: SyncRedis, *, prefix: str = "metering", shards: int = 1) -> None:
        super().__init__(prefix, shards)
        self.redis = client

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "metering", shards: int = 1) -> "Emitter":
        """An emitter on `url`, a plain Redis or any node of a Redis Cluster."""
        return cls(redis_client.connect_sync(url), prefix=prefix, shards=shards)

    def emit(self, event: EventLike) -> str:
        """Publish one event; returns its stream entry id."""
        stream, fields = self.entry(event)
        return text(self.redis.xadd(stream, fields))  # type: ignore[arg-type]

    def emit_many(self, events: Iterable[EventLike]) -> list[str]:
        """Publish many events in one round trip; returns their entry ids in order."""
        entries = [self.entry(event) for event in events]
        with self.redis.pipeline(transaction=False) as pipe:
            for stream, fields in entries:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            return [text(entry_id) for entry_id in pipe.execute()]

    def should_stop(self, experiment_id: str) -> bool:
        """True once the worker has halted the experiment (its owner's credits ran out)."""
        return bool(self.redis.exists(redis_keys.halt_flag(self.prefix, experiment_id)))

    def close(self) -> None:
        self.redis.close()


class AsyncEmitter(_Streams):
    """asyncio producer, same behaviour as `Emitter`."""

    def __init__(self, client: AsyncRedis, *, prefix: str = "metering", shards: int = 1) -> None:
        super().__init__(prefix, shards)
        self.redis = client

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "metering", shards: int = 1) -> "AsyncEmitter":
        """An emitter on `url`, a plain Redis or any node of a Redis Cluster (detected with one
        blocking round trip: make it before the event loop's work starts)."""
        return cls(redis_client.connect(url), prefix=prefix, shards=shards)

    async def emit(self, event: EventLike) -> str:
        stream, fields = self.entry(event)
        return text(await self.redis.xadd(stream, fields))  # type: ignore[arg-type]

    async def emit_many(self, events: Iterable[EventLike]) -> list[str]:
        entries = [self.entry(event) for event in events]
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, fields in entries:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            return [text(entry_id) for entry_id in await pipe.execute()]

    async def should_stop(self, experiment_id: str) -> bool:
        return bool(await self.redis.exists(redis_keys.halt_flag(self.prefix, experiment_id)))

    async def aclose(self) -> None:
        await self.redis.aclose()


def _get(obj: Any, *names: str) -> Any:
    """The first of `names` present on `obj`, as an attribute or a key; None if none is."""
    for name in names:
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _count(obj: Any, *names: str) -> int:
    value = _get(obj, *names) if obj is not None else None
    return 0 if value is None else int(value)


def openai_tokens(usage: Any) -> dict[str, int]:
    """Token counts from an OpenAI `usage` (Chat Completions or Responses API).

    OpenAI's prompt count includes cached tokens and its completion count includes reasoning.
    """
    prompt = _count(usage, "prompt_tokens", "input_tokens")
    details = _get(usage, "prompt_tokens_details", "input_tokens_details")
    cached = _count(details, "cached_tokens")
    output_details = _get(usage, "completion_tokens_details", "output_tokens_details")
    return {
        "input_tokens": prompt - cached,
        "cached_input_tokens": cached,
        "output_tokens": _count(usage, "completion_tokens", "output_tokens"),
        "reasoning_tokens": _count(output_details, "reasoning_tokens"),
    }


def anthropic_tokens(usage: Any) -> dict[str, int]:
    """Token counts from an Anthropic `usage`: its classes are already disjoint."""
    return {
        "input_tokens": _count(usage, "input_tokens"),
        "cached_input_tokens": _count(usage, "cache_read_input_tokens"),
        "cache_write_tokens": _count(usage, "cache_creation_input_tokens"),
        "output_tokens": _count(usage, "output_tokens"),
    }


def google_tokens(usage: Any) -> dict[str, int]:
    """Token counts from a Gemini `usage_metadata` (SDK snake_case or REST camelCase).

    Gemini's prompt count includes cached content; thoughts are counted apart from candidates.
    """
    prompt = _count(usage, "prompt_token_count", "promptTokenCount") + _count(
        usage, "tool_use_prompt_token_count", "toolUsePromptTokenCount"
    )
    cached = _count(usage, "cached_content_token_count", "cachedContentTokenCount")
    thoughts = _count(usage, "thoughts_token_count", "thoughtsTokenCount")
    candidates = _count(usage, "candidates_token_count", "candidatesTokenCount")
    return {
        "input_tokens": prompt - cached,
        "cached_input_tokens": cached,
        "output_tokens": candidates + thoughts,
        "reasoning_tokens": thoughts,
    }


_READERS = {"openai": openai_tokens, "anthropic": anthropic_tokens, "google": google_tokens}


def event_from_usage(
    provider: str,
    usage: Any,
    *,
    event_id: str,
    experiment_id: str,
    model: str,
    occurred_at: datetime | None = None,
    tier: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> UsageEvent:
    """A validated event from an SDK usage object of `provider` (openai, anthropic or google).

    `occurred_at` defaults to now (UTC).
    """
    reader = _READERS.get(provider)
    if reader is None:
        raise ValueError(f"no usage reader for {provider!r}; known: {', '.join(_READERS)}")
    document: dict[str, Any] = {
        "event_id": event_id,
        "experiment_id": experiment_id,
        "provider": provider,
        "model": model,
        "occurred_at": occurred_at or datetime.now(UTC),
        **reader(usage),
    }
    if tier is not None:
        document["tier"] = tier
    if metadata is not None:
        document["metadata"] = dict(metadata)
    return UsageEvent.model_validate(document)
