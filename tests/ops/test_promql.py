"""The metric-name reader the dashboard and alert checks rely on."""

import pytest

from tests.ops.promql import metric_names

CASES = [
    ("metering_stream_lag", {"metering_stream_lag"}),
    (
        'sum by (outcome, le) (rate(metering_usage_events_total{outcome!="x", a=~"b|c"}[5m]))',
        {"metering_usage_events_total"},
    ),
    (
        "histogram_quantile(0.99, sum by (le) (rate(metering_event_age_seconds_bucket"
        "[$__rate_interval])))",
        {"metering_event_age_seconds_bucket"},
    ),
    (
        "max by (stream) (a_gauge) > 1000 and max by (stream) (delta(b_gauge[10m])) > 0",
        {"a_gauge", "b_gauge"},
    ),
    ("(sum(rate(c_total[5m])) or vector(0)) == 0", {"c_total"}),
    ("sum by (r) (d_total) unless sum by (r) (d_total offset 15m)", {"d_total"}),
    ("time() - max(e_seconds) > 26 * 3600 or absent(e_seconds)", {"e_seconds"}),
    ("x_total / on (job) group_left (team) y_info", {"x_total", "y_info"}),
    ("max_over_time(deriv(z[10m:1m])[1h:]) > 1e3", {"z"}),
    ('label_replace(w, "dst", "$1", "src", "(.*)")', {"w"}),
]


@pytest.mark.parametrize(("expression", "names"), CASES)
def test_metric_names_are_read_from_expressions(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names
