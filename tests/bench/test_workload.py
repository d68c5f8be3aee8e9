"""The workload: bursts of a few experiments at a time by default, or every call independent."""

import json

from metering.bench import workload


def _experiments_per_batch(work: workload.Workload, batch: int = 500) -> list[int]:
    """Distinct experiments in each full batch of consecutive entries."""
    ids = work.experiment_ids
    return [len(set(ids[b : b + batch])) for b in range(0, len(ids) - batch + 1, batch)]


def test_by_default_a_batch_holds_the_few_experiments_active_at_the_time() -> None:
    people = workload.population("w", users=20, experiments=1_000, seed=3)
    work = workload.workload(people, 5_000, seed=3)
    # A slot's stretch ends every BURST_CALLS calls or so: a batch sees its active experiments
    # and the few that replaced them, never hundreds.
    assert max(_experiments_per_batch(work)) <= 2 * workload.ACTIVE_EXPERIMENTS
    models = {
        (e, json.loads(p)["model"]) for e, p in zip(work.experiment_ids, work.payloads, strict=True)
    }
    per_experiment = [sum(1 for m in models if m[0] == e) for e in set(work.experiment_ids)]
    assert max(per_experiment) <= 3


def test_with_no_active_count_each_call_picks_its_experiment_on_its_own() -> None:
    people = workload.population("w", users=20, experiments=1_000, seed=3)
    work = workload.workload(people, 5_000, seed=3, active=0)
    assert min(_experiments_per_batch(work)) > 150


def test_the_workload_is_the_same_for_the_same_seed_and_has_retried_calls() -> None:
    people = workload.population("w", users=5, experiments=50, seed=1)
    first = workload.workload(people, 2_000, seed=1, active=4)
    again = workload.workload(people, 2_000, seed=1, active=4)
    assert first.event_ids == again.event_ids
    assert first.experiment_ids == again.experiment_ids
    assert first.unique_events == 2_000 < len(first.payloads)
    assert len(set(first.experiment_ids)) > 4
