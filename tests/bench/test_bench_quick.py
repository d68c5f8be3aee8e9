"""The quick benchmark runs end to end, charges every event exactly once and reports every figure
its targets are judged on (their values are not tested: speed depends on the machine), and its
exactly-once check does catch an event charged twice or not at all."""

import json
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.bench import ceiling, environment, verify, workload
from metering.bench.storage import TABLES as STORAGE_TABLES
from metering.ledger import charging
from metering.ops.db import session_scope
from tests.factories import SERVER_URL
from tests.support import REDIS_URL
from tests.usage.helpers import Sessions

PHASES = ("ceiling", "ledger_path", "pipeline", "pipeline_half_rate", "naive", "backlog")
BACKLOG = 2_000


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    """`metering bench --quick --json`, run as an operator would (on the test server)."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from metering.cli import main; main()",
            "bench",
            "--quick",
            "--backlog",
            str(BACKLOG),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "DATABASE_URL": SERVER_URL, "REDIS_URL": REDIS_URL},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@pytest.mark.slow
def test_every_event_is_charged_exactly_once_in_every_phase(figures: dict[str, Any]) -> None:
    checks = figures["exactly_once"]
    assert checks["dead_letters"] == 0
    for phase in PHASES:
        assert checks[phase]["problems"] == [], phase
        assert checks[phase]["rows"] == checks[phase]["expected_rows"] > 0, phase
        assert checks[phase]["credits"] > 0, phase
    assert set(figures["pipeline_half_rate"]["latency"]) == {"p50_s", "p95_s", "p99_s", "max_s"}


@pytest.mark.slow
def test_the_ceiling_is_the_bare_insert_of_exactly_the_calls(figures: dict[str, Any]) -> None:
    ceiling_ = figures["ceiling"]
    assert set(ceiling_["methods"]) == {"unnest", "copy"}
    fastest = max(ceiling_["methods"], key=lambda m: ceiling_["methods"][m]["rows_per_s"])
    assert ceiling_["method"] == fastest
    assert ceiling_["rows"] == figures["exactly_once"]["ceiling"]["expected_rows"]
    assert ceiling_["rows"] == figures["ledger_path"]["rows"] == figures["pipeline"]["events"]
    assert ceiling_["table_bytes_per_call"] > 0
    for phase, groups in (("ceiling", {"postgres", "redis", "bench"}), ("pipeline", None)):
        cpu = figures[phase]["cpu"]
        assert set(cpu["seconds"]) == (groups or {"postgres", "redis", "bench", "workers"}) | {
            "total"
        }
        assert cpu["seconds"]["postgres"] > 0
        assert cpu["cores_busy"] > 0
    assert figures["pipeline"]["cpu"]["seconds"]["workers"] > 0
    assert set(figures["ratios"]) == {
        "pipeline_over_ceiling",
        "pipeline_over_ledger_path",
        "pipeline_over_naive",
    }


@pytest.mark.slow
def test_storage_is_measured_per_call_of_the_full_speed_phase(figures: dict[str, Any]) -> None:
    storage = figures["storage"]
    assert storage["calls"] == figures["pipeline"]["events"]
    assert 1 <= storage["usage_rows"] <= storage["calls"]
    assert storage["calls_per_usage_row"] >= 1
    assert storage["bytes_per_call"] > 0
    assert storage["database_size_bytes_per_call"] > 0
    tables = storage["tables_bytes_per_call"]
    assert set(tables) == set(STORAGE_TABLES) | {"others"}
    assert tables["UsageCall"] > 0
    assert tables["CreditTransaction"] > 0
    assert sum(tables.values()) == pytest.approx(storage["bytes_per_call"], abs=1)


@pytest.mark.slow
def test_the_pipeline_runs_on_default_settings(figures: dict[str, Any]) -> None:
    assert figures["streams"] == 1
    assert figures["batch_size"] == 1000
    assert figures["options"]["concurrency"] == 2


@pytest.mark.slow
def test_every_target_has_a_verdict(figures: dict[str, Any]) -> None:
    targets = figures["targets"]
    assert set(targets) == {
        "pipeline_over_ceiling",
        "pipeline_over_naive",
        "half_rate_p99_s",
        "bytes_per_call",
        "worker_memory_growth",
    }
    for verdict in targets.values():
        assert verdict["target"]
        assert isinstance(verdict["met"], bool)
    assert targets["bytes_per_call"]["measured"] == figures["storage"]["bytes_per_call"]
    memory = figures["backlog"]["memory"]
    assert memory["start"]["processes"] == 1 + figures["options"]["concurrency"]
    assert memory["peak_total_mib"] >= memory["end"]["total_mib"] > 0


@pytest.mark.slow
async def test_the_run_leaves_no_database_and_no_keys(
    figures: dict[str, Any], sessions: Sessions
) -> None:
    async with sessions() as session:
        names = await session.scalars(text("SELECT datname FROM pg_database"))
        assert figures["database"] not in set(names)
    client = Redis.from_url(REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"{figures['redis_prefix']}*")) == []
    finally:
        client.close()


async def _charge(session: AsyncSession, charges: list[charging.UsageCharge]) -> None:
    await charging.charge_usage(session, charges)


async def test_the_check_finds_a_missing_and_a_doubled_charge(sessions: Sessions) -> None:
    people = workload.population(f"t{uuid.uuid4().hex[:8]}", users=3, experiments=5, seed=1)
    charges = ceiling.price(workload.workload(people, 40, seed=1), Decimal(1), Decimal(0))
    expected = verify.Expected().add(charges)
    async with session_scope(sessions) as session:
        await environment.seed(session, people)
        await _charge(session, charges[:-1])
    async with sessions() as session:
        missing = await verify.check(session, people, expected)
    assert not missing.ok
    assert f"{charges[-1].experiment_id}: " in missing.problems[0]

    async with session_scope(sessions) as session:
        await _charge(session, charges[-1:])
        doubled = replace(charges[0], event_id=f"{charges[0].event_id}-again")
        await _charge(session, [doubled])
    async with sessions() as session:
        result = await verify.check(session, people, expected)
    assert any(p.startswith(f"{charges[0].experiment_id}: ") for p in result.problems)
    assert result.rows == len(charges) + 1
