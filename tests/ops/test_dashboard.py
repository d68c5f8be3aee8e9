"""The Grafana dashboard (deploy/grafana/metering.json) shows what operators watch, and every
query reads metrics the service really exports."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops.promql import metric_names
from tests.ops.scrape import exported_series

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "metering.json"
SHOWN = {
    "throughput": "metering_usage_events_total",
    "stream lag": "metering_stream_lag",
    "oldest pending age": "metering_stream_oldest_pending_age_seconds",
    "publish-to-commit latency": "metering_event_age_seconds_bucket",
    "dead letters by reason": "metering_dead_letters_total",
    "credits by provider and model": "metering_credits_charged_total",
    "Stripe events by outcome": "metering_stripe_events_total",
    "reconcile status": "metering_reconcile_violations",
}
"""What the dashboard must show, and a metric each of those panels reads."""


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))  # rows hold panels of their own


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]


async def test_every_query_reads_exported_metrics(
    dashboard: dict[str, Any], database_url: str, ops_prefix: str
) -> None:
    exported = await exported_series(database_url, ops_prefix)
    for query in queries(dashboard):
        names = metric_names(query)
        assert names, f"no metric in {query!r}"
        assert names <= exported, f"{query!r} reads {sorted(names - exported)}, never exported"


def test_it_shows_what_operators_watch(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(q) for q in queries(dashboard)))
    missing = {what: name for what, name in SHOWN.items() if name not in used}
    assert not missing


def test_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    """Unique ids, the datasource chosen on import, one expression per target, no overlaps."""
    assert dashboard["uid"] == "metering"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    found = list(panels(dashboard["panels"]))
    assert len({p["id"] for p in found}) == len(found)
    cells: set[tuple[int, int]] = set()
    for panel in found:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs)
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
