"""Usage tasks: drain each shard's stream and reclaim stalled entries. Thin: the work is in
`metering.usage.drain`. Beat sends both for every shard; a drain that ran out of time budget with
entries left sends itself again at once."""

from typing import Any

from metering.errors import TransientError
from metering.tasks import runtime
from metering.tasks.alerts import deliver as deliver_alert
from metering.tasks.app import app
from metering.usage import drain

RETRY = {
    "autoretry_for": (TransientError, ConnectionError, OSError),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
    "acks_late": True,
}


def _config() -> drain.DrainConfig:
    return drain.DrainConfig.from_settings(runtime.get_runtime().settings)


@app.task(name="metering.usage.drain", **RETRY)
def drain_task(shard: int = 0) -> dict[str, Any]:
    """Charge the new entries of one shard's stream; chains itself while entries remain."""
    current = runtime.get_runtime()
    report = current.run(drain.drain_stream(current.redis, current.sessions, _config(), shard))
    if report.more:
        drain_task.delay(shard)
    _send_alerts(report)
    return report.summary()


@app.task(name="metering.usage.reclaim", **RETRY)
def reclaim_task(shard: int = 0) -> dict[str, Any]:
    """Charge or dead-letter the entries of one shard left pending past the claim idle time."""
    current = runtime.get_runtime()
    report = current.run(drain.reclaim_stream(current.redis, current.sessions, _config(), shard))
    if report.more:
        reclaim_task.delay(shard)
    _send_alerts(report)
    return report.summary()


def _send_alerts(report: drain.BatchReport) -> None:
    """Hand new low-balance alerts to their own task, when there is a webhook to call."""
    if runtime.get_runtime().settings.metering_alert_webhook_url:
        for alert in report.low_balance:
            deliver_alert.delay(alert.document())
