"""The benchmark's workload: a population of users and experiments, and the usage events of a run.

Deterministic for a seed, so every phase of a run (pipeline, ceiling, naive) meters the same mix;
only the id prefix differs, so that the phases can share one database. The mix: ten models of six
providers with realistic token counts (cache reads and writes, reasoning, some batch tier), a
skewed choice of experiments (a few hot, many quiet), one experiment in ten on the user's own
key, and about one event in a hundred sent twice (a producer retrying a call).

Calls come in bursts by default: `active` experiments run at a time, each for a stretch of about
`BURST_CALLS` calls on its own one to three models, then another (by the same skew) takes its
place. With `active=0` every call picks its experiment and model independently (the spread of
earlier versions of the benchmark, where a batch holds about one call per experiment).
"""

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ACTIVE_EXPERIMENTS = 32
"""Experiments calling at the same time, by default."""
BURST_CALLS = 400
"""Mean length of one experiment's stretch of calls (exponentially distributed)."""
USER_CREDITS = 100_000_000
"""Each benchmark user's starting balance: large enough that no run halts anyone."""


@dataclass(frozen=True)
class ModelMix:
    """One model of the mix: how often it is called and the shape of its calls."""

    provider: str
    model: str
    weight: int
    input_tokens: int
    output_tokens: int
    cached_share: float = 0.0
    cache_write_share: float = 0.0
    reasoning_share: float = 0.0
    batch_share: float = 0.0


MODELS = (
    ModelMix("openai", "gpt-4o-mini", 22, 900, 250, cached_share=0.3),
    ModelMix("openai", "gpt-4.1-mini", 10, 1500, 400, cached_share=0.2, batch_share=0.2),
    ModelMix("openai", "gpt-5", 8, 3000, 1200, cached_share=0.3, reasoning_share=0.5),
    ModelMix("openai", "gpt-5-mini", 12, 2000, 800, cached_share=0.2, reasoning_share=0.4),
    ModelMix("openai", "o4-mini", 4, 2500, 1500, reasoning_share=0.7, batch_share=0.5),
    ModelMix(
        "anthropic", "claude-sonnet-4", 14, 4000, 700, cached_share=0.5, cache_write_share=0.1
    ),
    ModelMix("google", "gemini-2.5-flash", 14, 1800, 500, cached_share=0.2),
    ModelMix("deepseek", "deepseek-chat", 6, 1200, 300, cached_share=0.4),
    ModelMix("xai", "grok-3-mini", 4, 800, 300, reasoning_share=0.3),
    ModelMix("together", "llama-4-maverick", 6, 1000, 350),
)


@dataclass(frozen=True)
class Population:
    """Users, and experiments with their owner and apiKeyMode."""

    users: tuple[str, ...]
    experiments: tuple[tuple[str, str, str], ...]
    """(experiment id, owner user id, apiKeyMode)."""


@dataclass(frozen=True)
class Workload:
    """The stream entries of one phase, in publish order.

    `payloads[i]` is entry i's event JSON and `event_ids[i]` its event id; a retried call repeats
    an earlier entry exactly. `experiment_ids[i]` decides the entry's shard.
    """

    population: Population
    event_ids: list[str]
    experiment_ids: list[str]
    payloads: list[str]

    @property
    def unique_events(self) -> int:
        return len(set(self.event_ids))


def population(tag: str, users: int, experiments: int, seed: int) -> Population:
    """`users` users and `experiments` experiments whose ids start with `tag`."""
    rng = random.Random(seed)
    user_ids = tuple(f"{tag}-user-{n:05d}" for n in range(users))
    return Population(
        users=user_ids,
        experiments=tuple(
            (
                f"{tag}-exp-{n:05d}",
                rng.choice(user_ids),
                "own" if rng.random() < 0.1 else "system",
            )
            for n in range(experiments)
        ),
    )


def workload(
    people: Population,
    events: int,
    seed: int,
    *,
    active: int = ACTIVE_EXPERIMENTS,
    duplicate_rate: float = 0.01,
) -> Workload:
    """`events` distinct events plus about `duplicate_rate` of them sent again shortly after;
    `active` experiments at a time (0: each call independent of the others)."""
    rng = random.Random(seed)
    tag = people.users[0].split("-user-", 1)[0]
    experiments = [e[0] for e in people.experiments]
    calls = (
        _bursts(rng, experiments, events, active) if active else _spread(rng, experiments, events)
    )
    start = datetime.now(UTC).replace(microsecond=0)
    event_ids: list[str] = []
    experiment_ids: list[str] = []
    payloads: list[str] = []
    retries: list[tuple[int, int]] = []
    for n, (experiment_id, mix) in enumerate(calls):
        event_id = f"{tag}-evt-{n:08d}-{rng.getrandbits(32):08x}"
        payload = json.dumps(
            _document(rng, mix, event_id, experiment_id, start + timedelta(milliseconds=n)),
            separators=(",", ":"),
        )
        event_ids.append(event_id)
        experiment_ids.append(experiment_id)
        payloads.append(payload)
        if rng.random() < duplicate_rate:
            retries.append((n + rng.randint(1, 2000), n))
        while retries and retries[0][0] <= n:
            _, original = retries.pop(0)
            event_ids.append(event_ids[original])
            experiment_ids.append(experiment_ids[original])
            payloads.append(payloads[original])
        retries.sort()
    for _, original in retries:
        event_ids.append(event_ids[original])
        experiment_ids.append(experiment_ids[original])
        payloads.append(payloads[original])
    return Workload(people, event_ids, experiment_ids, payloads)


def _weights(experiments: list[str]) -> list[float]:
    """Zipf-like: experiment k is called about 1/(k+1) as often as the first."""
    return [1 / (k + 1) for k in range(len(experiments))]


def _spread(rng: random.Random, experiments: list[str], events: int) -> list[tuple[str, ModelMix]]:
    """Each call's experiment and model drawn independently."""
    chosen = rng.choices(experiments, weights=_weights(experiments), k=events)
    mixes = rng.choices(MODELS, weights=[m.weight for m in MODELS], k=events)
    return list(zip(chosen, mixes, strict=True))


def _bursts(
    rng: random.Random, experiments: list[str], events: int, active: int
) -> list[tuple[str, ModelMix]]:
    """`active` slots, each running one experiment (on its own models) for a stretch of calls;
    each call goes to a slot drawn uniformly."""
    weights = _weights(experiments)
    slots = min(active, len(experiments))
    running: list[tuple[str, list[ModelMix], int]] = []

    def begin(taken: set[str]) -> tuple[str, list[ModelMix], int]:
        experiment = rng.choices(experiments, weights=weights)[0]
        while experiment in taken:
            experiment = rng.choices(experiments, weights=weights)[0]
        models = rng.choices(MODELS, weights=[m.weight for m in MODELS], k=rng.randint(1, 3))
        return experiment, models, max(1, int(rng.expovariate(1 / BURST_CALLS)))

    for _ in range(slots):
        running.append(begin({r[0] for r in running}))
    calls: list[tuple[str, ModelMix]] = []
    for _ in range(events):
        slot = rng.randrange(slots)
        experiment, models, left = running[slot]
        calls.append((experiment, rng.choice(models)))
        running[slot] = (experiment, models, left - 1)
        if left == 1:
            running[slot] = begin({r[0] for n, r in enumerate(running) if n != slot})
    return calls


def _document(
    rng: random.Random, mix: ModelMix, event_id: str, experiment_id: str, occurred_at: datetime
) -> dict[str, object]:
    prompt = max(1, int(rng.lognormvariate(0, 0.6) * mix.input_tokens))
    cached = int(prompt * rng.uniform(0.5, 0.9)) if rng.random() < mix.cached_share else 0
    cache_write = int((prompt - cached) * 0.5) if rng.random() < mix.cache_write_share else 0
    output = max(1, int(rng.lognormvariate(0, 0.6) * mix.output_tokens))
    document: dict[str, object] = {
        "event_id": event_id,
        "experiment_id": experiment_id,
        "provider": mix.provider,
        "model": mix.model,
        "input_tokens": prompt - cached - cache_write,
        "output_tokens": output,
        "occurred_at": occurred_at.isoformat().replace("+00:00", "Z"),
    }
    if cached:
        document["cached_input_tokens"] = cached
    if cache_write:
        document["cache_write_tokens"] = cache_write
    if mix.reasoning_share:
        document["reasoning_tokens"] = int(output * mix.reasoning_share * rng.random())
    if rng.random() < mix.batch_share:
        document["tier"] = "batch"
    if rng.random() < 0.3:
        document["metadata"] = {"step": rng.randint(0, 500), "agent": f"agent-{rng.randint(0, 9)}"}
    return document
