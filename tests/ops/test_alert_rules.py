"""The Prometheus alert rules (deploy/prometheus/alerts.yml): valid for promtool, each alert
tested firing and not firing (alerts.test.yml), and every metric they read really exported."""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.promql import metric_names
from tests.ops.scrape import exported_series

RULES = Path(__file__).parents[2] / "deploy" / "prometheus"
ALERTS = RULES / "alerts.yml"
UNIT_TESTS = RULES / "alerts.test.yml"


def promtool(*args: str, cwd: Path = RULES) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is needed: Debian's prometheus package (scripts/test installs it)"
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules(rules: list[dict[str, Any]]) -> None:
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_promtool_unit_tests_pass() -> None:
    tested = promtool("test", "rules", UNIT_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_would_fail_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: the same file expecting the lag alert at a quiet time does."""
    document = yaml.safe_load(UNIT_TESTS.read_text())
    quiet = document["tests"][0]["alert_rule_test"][0]
    assert (quiet["alertname"], quiet["exp_alerts"]) == ("MeteringStreamLagGrowing", [])
    quiet["exp_alerts"] = [{"exp_labels": {"severity": "warning", "stream": "metering:usage"}}]
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    (tmp_path / UNIT_TESTS.name).write_text(yaml.safe_dump(document))
    failed = promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert failed.returncode == 1
    assert "alertname: MeteringStreamLagGrowing, time: 12m" in failed.stdout + failed.stderr


def test_every_alert_is_tested_firing_and_not_firing(rules: list[dict[str, Any]]) -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in rules:
        own = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in own), f"{rule['alert']} never fires"
        assert any(not case.get("exp_alerts") for case in own), f"{rule['alert']} always fires"


async def test_every_metric_the_rules_read_is_exported(
    rules: list[dict[str, Any]], database_url: str, ops_prefix: str
) -> None:
    exported = await exported_series(database_url, ops_prefix)
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']} reads {sorted(names - exported)}"
