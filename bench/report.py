"""The figures of a run: rates, latency percentiles, ratios against the targets, and their text."""

import math
from collections.abc import Sequence
from typing import Any

from bench.pipeline import PipelineRun, RssSample

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


def text(figures: dict[str, Any]) -> str:
    """The report for a terminal."""
    lines = [
        f"machine: {figures['machine']['cpus']} CPUs, load average before "
        f"{figures['machine']['load_before']}, after {figures['machine']['load_after']}",
        f"options: {figures['options']}",
    ]
    if "ceiling" in figures:
        c = figures["ceiling"]
        lines.append(
            f"ceiling   : {c['rows']:>9,} rows in {c['seconds']:8.2f} s = "
            f"{c['rows_per_s']:>9,.0f}/s"
            " (one process, batched ledger writes, no Redis, no Celery)"
        )
    for key, label in (("pipeline", "pipeline  "), ("pipeline_half_rate", "half rate ")):
        if key in figures:
            p = figures[key]
            lat, low = p["latency"], p["latency_lower_bound"]
            target = (
                f" at {p['target_entries_per_s']:,.0f} entries/s"
                if p["target_entries_per_s"]
                else ""
            )
            lines.append(
                f"{label}: {p['events']:>9,} events in {p['seconds']:8.2f} s = "
                f"{p['events_per_s']:>9,.0f}/s{target}; publish-to-commit p50 {lat['p50_s']} s, "
                f"p95 {lat['p95_s']} s, p99 {lat['p99_s']} s, max {lat['max_s']} s "
                f"(transaction start: p50 {low.get('p50_s')} s, p99 {low.get('p99_s')} s)"
            )
    if "naive" in figures:
        n = figures["naive"]
        lines.append(
            f"naive     : {n['rows']:>9,} rows in {n['seconds']:8.2f} s = "
            f"{n['rows_per_s']:>9,.0f}/s"
            " (one Celery task and one transaction per event)"
        )
    if "backlog" in figures:
        b = figures["backlog"]
        lines.append(
            f"backlog   : {b['events']:>9,} events drained in {b['seconds']:8.2f} s = "
            f"{b['events_per_s']:>9,.0f}/s; worker RSS {b['memory']}"
        )
    if "worker_memory" in figures:
        lines.append(f"worker RSS: {figures['worker_memory']}")
    for name, value in figures.get("ratios", {}).items():
        lines.append(f"{name}: {value}")
    for name, verdict in figures.get("targets", {}).items():
        mark = "met" if verdict["met"] else "NOT met"
        lines.append(f"target {name} {verdict['target']}: {verdict['measured']} ({mark})")
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
