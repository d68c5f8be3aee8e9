"""The figures of a run: rates, latency percentiles, ratios against the targets, and their text."""

import math
from collections.abc import Sequence
from typing import Any

from metering.bench.pipeline import PipelineRun, RssSample

TARGETS = {
    "pipeline_over_naive": 20.0,
    "pipeline_over_ceiling": 0.5,
    "half_rate_p99_s": 1.0,
}
MIB = 1024 * 1024


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def latency(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in seconds, rounded to the millisecond."""
    if not values:
        return {}
    return {
        "p50_s": round(percentile(values, 0.50), 3),
        "p95_s": round(percentile(values, 0.95), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
    }


def pipeline_figures(run: PipelineRun, lower_bounds: Sequence[float]) -> dict[str, Any]:
    seconds = run.last_commit_s - run.first_publish_s
    return {
        "entries": run.entries,
        "events": run.unique_events,
        "seconds": round(seconds, 3),
        "events_per_s": round(run.unique_events / seconds, 1),
        "entries_per_s": round(run.entries / seconds, 1),
        "producer_entries_per_s": round(run.entries / run.producer_s, 1),
        "target_entries_per_s": round(run.target_rate, 1) if run.target_rate else None,
        "latency": latency(run.latencies_s),
        "latency_lower_bound": latency(lower_bounds),
    }


def memory(samples: Sequence[RssSample]) -> dict[str, Any]:
    """Worker resident memory: first and last sample, the largest, and the quartiles in between."""
    if not samples:
        return {}

    def mib(sample: RssSample) -> dict[str, float]:
        return {
            "total_mib": round(sample.total_bytes / MIB, 1),
            "largest_child_mib": round(sample.largest_child_bytes / MIB, 1),
        }

    quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in range(5)]
    return {
        "samples": len(samples),
        "at_quarters": [mib(s) for s in quarters],
        "max_total_mib": round(max(s.total_bytes for s in samples) / MIB, 1),
        "growth_mib": round((samples[-1].total_bytes - quarters[1].total_bytes) / MIB, 1),
    }


def verdicts(figures: dict[str, Any]) -> dict[str, Any]:
    """Each target with the measured value and whether it is met."""
    result: dict[str, Any] = {}
    ratios = figures.get("ratios", {})
    for name in ("pipeline_over_naive", "pipeline_over_ceiling"):
        if name in ratios:
            result[name] = {
                "target": f">= {TARGETS[name]}",
                "measured": ratios[name],
                "met": ratios[name] >= TARGETS[name],
            }
    half = figures.get("pipeline_half_rate", {}).get("latency", {})
    if half:
        result["half_rate_p99_s"] = {
            "target": f"< {TARGETS['half_rate_p99_s']}",
            "measured": half["p99_s"],
            "met": half["p99_s"] < TARGETS["half_rate_p99_s"],
        }
    return result


def exactly_once(figures: dict[str, Any]) -> bool:
    """True when every phase charged every event exactly once and nothing was dead-lettered."""
    checks = figures["exactly_once"]
    phases_ok = all(check["ok"] for name, check in checks.items() if name != "dead_letters")
    return phases_ok and checks["dead_letters"] == 0


HEADER = """\
metering bench: the pipeline (producer XADD -> Redis streams -> celery beat and usage workers ->
PostgreSQL) against its ceiling (the same rows written by one process, no Redis, no Celery) and
the naive design (one Celery task and one transaction per event), all on this machine, in a
throwaway database and Redis prefix. Latency: publish = the Redis entry id's time; commit = the
entry seen acknowledged (an upper bound, within 10 ms); the transaction's start is a lower bound.
At full speed the whole load is published at once, so its latency is queueing; judge latency at
half rate."""
QUICK_NOTE = "quick run: too small for meaningful speed figures; it proves exactly-once charging."


def text(figures: dict[str, Any]) -> str:
    """The report for a terminal."""
    machine, options = figures["machine"], figures["options"]
    lines = [
        HEADER,
        "",
        f"machine: {machine['cpus']} CPUs, PostgreSQL {machine['postgresql']}, Python "
        f"{machine['python']}; load average before {machine['load_before']}, after "
        f"{machine['load_after']} (above ~0.5 per CPU, other work was competing)",
        f"options: {options['events']:,} events, {options['shards']} shards, worker -c "
        f"{options['concurrency']}, batches of {options['batch_size']}, naive "
        f"{options['naive_events']:,} events, backlog {options['backlog']:,}",
    ]
    if options["events"] < 50_000:
        lines.append(QUICK_NOTE)
    lines.append("")
    if "ceiling" in figures:
        c = figures["ceiling"]
        lines.append(
            f"ceiling    {c['rows']:>9,} rows   in {c['seconds']:7.2f} s = "
            f"{c['rows_per_s']:>7,.0f}/s"
        )
    for key, label in (("pipeline", "pipeline  "), ("pipeline_half_rate", "half rate ")):
        if key in figures:
            p = figures[key]
            lat, low = p["latency"], p["latency_lower_bound"]
            lines.append(
                f"{label} {p['events']:>9,} events in {p['seconds']:7.2f} s = "
                f"{p['events_per_s']:>7,.0f}/s; publish-to-commit p50 {lat['p50_s']} s, "
                f"p95 {lat['p95_s']} s, p99 {lat['p99_s']} s, max {lat['max_s']} s "
                f"(lower bound p50 {low.get('p50_s')} s, p99 {low.get('p99_s')} s)"
            )
    if "naive" in figures:
        n = figures["naive"]
        lines.append(
            f"naive      {n['rows']:>9,} rows   in {n['seconds']:7.2f} s = "
            f"{n['rows_per_s']:>7,.0f}/s"
        )
    if "worker_memory" in figures:
        lines.append(f"worker RSS during the pipeline phases: {_memory(figures['worker_memory'])}")
    if "backlog" in figures:
        b = figures["backlog"]
        lines.append(
            f"backlog    {b['events']:>9,} events drained in {b['seconds']:7.1f} s = "
            f"{b['events_per_s']:>7,.0f}/s; worker RSS: {_memory(b['memory'])}"
        )
    lines.append("")
    targets = figures.get("targets", {})
    for name, value in figures.get("ratios", {}).items():
        verdict = targets.get(name)
        mark = f" (target {verdict['target']}: {_met(verdict)})" if verdict else ""
        lines.append(f"{name.replace('_over_', ' / ')} = {value}{mark}")
    if "half_rate_p99_s" in targets:
        verdict = targets["half_rate_p99_s"]
        lines.append(
            f"p99 publish-to-commit at half rate = {verdict['measured']} s "
            f"(target {verdict['target']} s: {_met(verdict)})"
        )
    lines.append("")
    lines.append(f"dead letters: {figures['exactly_once']['dead_letters']}")
    for phase, check in figures["exactly_once"].items():
        if phase == "dead_letters":
            continue
        state = "ok" if check["ok"] else "FAILED: " + "; ".join(check["problems"][:5])
        lines.append(
            f"exactly once, {phase}: {check['rows']:,} rows for {check['expected_rows']:,} events, "
            f"{check['credits']:,} credits, reconcile clean: {state}"
        )
    return "\n".join(lines)


def _met(verdict: dict[str, Any]) -> str:
    return "met" if verdict["met"] else "NOT met"


def _memory(summary: dict[str, Any]) -> str:
    if not summary:
        return "no samples"
    totals = ", ".join(f"{q['total_mib']}" for q in summary["at_quarters"])
    return (
        f"{totals} MiB at 0/25/50/75/100% of the samples (worker and pool children); "
        f"growth after the first quarter {summary['growth_mib']} MiB"
    )
