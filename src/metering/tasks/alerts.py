"""Alert tasks: deliver a low-balance alert to the platform's webhook, retried with backoff.

Sent by the usage drain after its batches are committed, so a slow or absent receiver never
holds up charging. Routed to the usage queue (the default).
"""

from typing import Any

from metering.budget import alerts
from metering.errors import TransientError
from metering.ops.logs import get_logger
from metering.tasks import runtime
from metering.tasks.app import app

DELIVER = "metering.alerts.deliver"

log = get_logger(__name__)


@app.task(
    name=DELIVER,
    acks_late=True,
    autoretry_for=(TransientError,),
    retry_backoff=2,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=12,
)
def deliver(document: dict[str, Any]) -> dict[str, Any]:
    """POST one alert, signed, to `METERING_ALERT_WEBHOOK_URL` (nothing to do when unset)."""
    settings = runtime.get_runtime().settings
    alert = alerts.LowBalanceAlert.from_document(document)
    url = settings.metering_alert_webhook_url
    if not url:
        return {"alert_id": alert.alert_id, "delivered": False}
    status = runtime.run(
        alerts.post_alert(url, settings.metering_alert_webhook_secret.get_secret_value(), alert)
    )
    log.info("low-balance alert delivered", alert_id=alert.alert_id, user_id=alert.user_id)
    return {"alert_id": alert.alert_id, "delivered": True, "status": status}
