"""The figures of a run: rates, latency percentiles, ratios against the targets, and their text."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from metering.bench.pipeline import PipelineRun, RssSample


@dataclass(frozen=True)
class Target:
    """A figure's target: `measured <comparison> limit`; `aim` is where we want to be."""

    comparison: str
    limit: float
    aim: float | None = None
    unit: str = ""

    def met(self, measured: float) -> bool:
        return {
            ">=": measured >= self.limit,
            "<": measured < self.limit,
            "<=": measured <= self.limit,
        }[self.comparison]

    def describe(self) -> str:
        aim = f" (aim {self.aim}{self.unit})" if self.aim is not None else ""
        return f"{self.comparison} {self.limit}{self.unit}{aim}"


TARGETS = {
    "pipeline_over_naive": Target(">=", 20.0),
    "pipeline_over_ceiling": Target(">=", 0.5, 0.7),
    "half_rate_p99_s": Target("<", 0.5, unit=" s"),
    "bytes_per_call": Target("<=", 400, 300, " B"),
}
MEMORY_GROWTH = "growth < 10% or < 20 MiB, from 10% to 100% of the drain"
MEMORY_GROWTH_MIB = 20.0
MEMORY_GROWTH_SHARE = 0.10
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
    quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in range(5)]
    return {
        "samples": len(samples),
        "at_quarters": [_mib(s) for s in quarters],
        "max_total_mib": round(max(s.total_bytes for s in samples) / MIB, 1),
        "growth_mib": round((samples[-1].total_bytes - quarters[1].total_bytes) / MIB, 1),
    }


def drain_memory(samples: Sequence[RssSample], tenth_s: float | None) -> dict[str, Any]:
    """Worker resident memory (main process and every pool child) over a drain: at its start,
    peak, end, and the growth from the first sample once 10% was done (`tenth_s`) to the end."""
    if not samples:
        return {}
    tenth = next((s for s in samples if tenth_s is not None and s.at_s >= tenth_s), samples[0])
    growth = samples[-1].total_bytes - tenth.total_bytes
    return {
        "samples": len(samples),
        "start": _mib(samples[0]),
        "peak_total_mib": round(max(s.total_bytes for s in samples) / MIB, 1),
        "at_10_percent": _mib(tenth),
        "end": _mib(samples[-1]),
        "growth_mib": round(growth / MIB, 1),
        "growth_percent": round(100 * growth / tenth.total_bytes, 1),
    }


def _mib(sample: RssSample) -> dict[str, float]:
    return {
        "total_mib": round(sample.total_bytes / MIB, 1),
        "largest_child_mib": round(sample.largest_child_bytes / MIB, 1),
        "processes": sample.processes,
    }


def verdicts(figures: dict[str, Any]) -> dict[str, Any]:
    """Each target with the measured value and whether it is met (only for figures measured)."""
    measured: dict[str, float] = {
        name: value for name, value in figures.get("ratios", {}).items() if name in TARGETS
    }
    half = figures.get("pipeline_half_rate", {}).get("latency", {})
    if half:
        measured["half_rate_p99_s"] = half["p99_s"]
    if figures.get("storage", {}).get("bytes_per_call") is not None:
        measured["bytes_per_call"] = figures["storage"]["bytes_per_call"]
    result: dict[str, Any] = {
        name: {
            "target": TARGETS[name].describe(),
            "measured": value,
            "met": TARGETS[name].met(value),
        }
        for name, value in measured.items()
    }
    drained = figures.get("backlog", {}).get("memory", {})
    if drained:
        result["worker_memory_growth"] = {
            "target": MEMORY_GROWTH,
            "measured": f"{drained['growth_mib']} MiB ({drained['growth_percent']}%)",
            "met": drained["growth_mib"] < MEMORY_GROWTH_MIB
            or drained["growth_percent"] < 100 * MEMORY_GROWTH_SHARE,
        }
    return result


def exactly_once(figures: dict[str, Any]) -> bool:
    """True when every phase charged every event exactly once and nothing was dead-lettered."""
    checks = figures["exactly_once"]
    phases_ok = all(check["ok"] for name, check in checks.items() if name != "dead_letters")
    return phases_ok and checks["dead_letters"] == 0


def table(figures: dict[str, Any]) -> Table:
    """The targets, what was measured, and whether each is met."""
    verdict_table = Table(title="targets")
    for column in ("figure", "target", "measured", "verdict"):
        verdict_table.add_column(column)
    for name, verdict in figures.get("targets", {}).items():
        verdict_table.add_row(
            name,
            verdict["target"],
            str(verdict["measured"]),
            "met" if verdict["met"] else "NOT met",
        )
    return verdict_table


HEADER = """\
metering bench: the pipeline (producer XADD -> Redis stream -> celery beat and usage workers ->
PostgreSQL) against its ceiling (the same calls inserted bare into a plain typed table by one
process with the balance updates, no Redis, no Celery, no ledger) and the naive design (one
Celery task and one transaction per event), all on this machine, in a throwaway database and
Redis prefix. Latency: publish = the Redis entry id's time; commit = the entry seen acknowledged
(an upper bound); the transaction's start is a lower bound. At full speed the whole load is
published at once, so its latency is queueing; judge latency at half rate. Bytes per call: the
growth of the whole database (all tables and indexes, after a CHECKPOINT) over the full-speed
phase, divided by the calls it recorded."""
QUICK_NOTE = "quick run: too small for meaningful speed figures; it proves exactly-once charging."


def text(figures: dict[str, Any]) -> str:
    """The report for a terminal (the targets are in `table`)."""
    machine, options = figures["machine"], figures["options"]
    lines = [
        HEADER,
        "",
        f"machine: {machine['cpus']} CPUs, PostgreSQL {machine['postgresql']}, Python "
        f"{machine['python']}; load average before {machine['load_before']}, after "
        f"{machine['load_after']} (above ~0.5 per CPU, other work was competing)",
        f"options: {options['events']:,} events, {figures['streams']} stream(s), worker -c "
        f"{options['concurrency']}, batches of {figures['batch_size']}, "
        f"{_active(options['active_experiments'])}, naive {options['naive_events']:,} events, "
        f"backlog {options['backlog']:,}",
    ]
    if options["events"] < 50_000:
        lines.append(QUICK_NOTE)
    lines.append("")
    if "ceiling" in figures:
        c = figures["ceiling"]
        methods = ", ".join(f"{m} {r['rows_per_s']:,.0f}/s" for m, r in c["methods"].items())
        lines.append(
            f"ceiling    {c['rows']:>9,} calls  in {c['seconds']:7.2f} s = "
            f"{c['rows_per_s']:>7,.0f}/s ({c['method']}, the faster of {methods}); "
            f"{c['table_bytes_per_call']} B/call in its table"
        )
    if "ledger_path" in figures:
        lp = figures["ledger_path"]
        lines.append(
            f"ledger     {lp['rows']:>9,} calls  in {lp['seconds']:7.2f} s = "
            f"{lp['rows_per_s']:>7,.0f}/s (charge_usage on one connection; not the ceiling)"
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
    for key, label in (("ceiling", "ceiling"), ("ledger_path", "ledger"), ("pipeline", "pipeline")):
        if "cpu" in figures.get(key, {}):
            lines.append(f"CPU, {label}: {_cpu(figures[key]['cpu'])}")
    if "naive" in figures:
        n = figures["naive"]
        lines.append(
            f"naive      {n['rows']:>9,} rows   in {n['seconds']:7.2f} s = "
            f"{n['rows_per_s']:>7,.0f}/s"
        )
    if "storage" in figures:
        lines.append(_storage(figures["storage"]))
    if "worker_memory" in figures:
        lines.append(f"worker RSS during the pipeline phases: {_memory(figures['worker_memory'])}")
    if "backlog" in figures:
        b = figures["backlog"]
        lines.append(
            f"backlog    {b['events']:>9,} events drained in {b['seconds']:7.1f} s = "
            f"{b['events_per_s']:>7,.0f}/s; worker RSS: {_drain(b['memory'])}"
        )
    lines.append("")
    for name, value in figures.get("ratios", {}).items():
        lines.append(f"{name.replace('_over_', ' / ')} = {value}")
    lines.append("")
    lines.append(f"dead letters: {figures['exactly_once']['dead_letters']}")
    for phase, check in figures["exactly_once"].items():
        if phase == "dead_letters":
            continue
        state = "ok" if check["ok"] else "FAILED: " + "; ".join(check["problems"][:5])
        lines.append(
            f"exactly once, {phase}: {check['rows']:,} calls for {check['expected_rows']:,} "
            f"events, {check['credits']:,} credits, reconcile clean: {state}"
        )
    return "\n".join(lines)


def _cpu(cpu: dict[str, Any]) -> str:
    per_event = ", ".join(f"{name} {us:,.0f}" for name, us in cpu["us_per_event"].items())
    return f"µs per call: {per_event}; {cpu['cores_busy']} of {cpu['cpus']} cores busy"


def _active(active: int) -> str:
    return f"{active} experiments active at a time" if active else "experiments independent"


def _storage(storage: dict[str, Any]) -> str:
    tables = ", ".join(f"{n} {b}" for n, b in storage["tables_bytes_per_call"].items())
    return (
        f"storage: {storage['bytes_per_call']} B/call over the full-speed phase "
        f"(pg_database_size: {storage['database_size_bytes_per_call']} B/call); by table: "
        f"{tables}; {storage['calls_per_usage_row']} calls per USAGE row"
    )


def _memory(summary: dict[str, Any]) -> str:
    if not summary:
        return "no samples"
    totals = ", ".join(f"{q['total_mib']}" for q in summary["at_quarters"])
    return (
        f"{totals} MiB at 0/25/50/75/100% of the samples (worker and pool children); "
        f"growth after the first quarter {summary['growth_mib']} MiB"
    )


def _drain(summary: dict[str, Any]) -> str:
    if not summary:
        return "no samples"
    return (
        f"start {summary['start']['total_mib']} MiB, peak {summary['peak_total_mib']} MiB, "
        f"at 10% {summary['at_10_percent']['total_mib']} MiB, end {summary['end']['total_mib']} "
        f"MiB ({summary['end']['processes']} processes); growth from 10% to the end "
        f"{summary['growth_mib']} MiB ({summary['growth_percent']}%)"
    )
