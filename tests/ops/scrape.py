"""Scraping the web app's `/metrics` in-process, and the metric names an exposition declares."""

from prometheus_client.parser import text_string_to_metric_families

from metering.ops.settings import Settings
from metering.web import create_app
from tests.web.helpers import serve

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
"""The sample names each metric type exposes (text format 0.0.4, as prometheus-client writes it)."""


async def scrape(settings: Settings) -> str:
    async for client in serve(create_app(settings)):
        response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


def samples(exposition: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def series_names(exposition: str) -> set[str]:
    """Every series name the exposition declares (its `# TYPE` lines), with or without samples."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


async def exported_series(database_url: str, prefix: str) -> set[str]:
    """Every series name the service exports: a real scrape of the web app's `/metrics`, which
    holds the metering registry and the gauges read at scrape time."""
    return series_names(
        await scrape(Settings(database_url=database_url, metering_redis_prefix=prefix))
    )
