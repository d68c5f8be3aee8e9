"""The Celery application: queues `usage` and `stripe`, at-least-once delivery, the beat schedule.

Tasks acknowledge late and are rejected (redelivered) when their worker dies, so every task must be
idempotent; the ledger's idempotency keys make them so. Each worker child process builds its own
event loop, engine and Redis client after the fork (`metering.tasks.runtime`).
"""

from typing import Any

import structlog
from celery import Celery
from celery.signals import (
    beat_init,
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_success,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from kombu.entity import Queue
from redis.exceptions import RedisError

from metering.ops import metrics, redis_client, redis_keys
from metering.ops.logs import configure_logging
from metering.ops.settings import get_settings
from metering.tasks import runtime

USAGE_QUEUE = "usage"
STRIPE_QUEUE = "stripe"


def create_app() -> Celery:
    settings = get_settings()
    tasks = ["metering.tasks.usage", "metering.tasks.stripe", "metering.tasks.grants"]
    celery = Celery("metering", include=tasks)
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "global_keyprefix": redis_keys.celery_prefix(settings.metering_redis_prefix),
            "visibility_timeout": 3600,
        },
        task_queues=[Queue(USAGE_QUEUE), Queue(STRIPE_QUEUE)],
        task_default_queue=USAGE_QUEUE,
        task_routes={
            "metering.usage.*": {"queue": USAGE_QUEUE},
            "metering.stripe.*": {"queue": STRIPE_QUEUE},
            "metering.grants.*": {"queue": STRIPE_QUEUE},
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone="UTC",
        # Per shard: a drain every second, a reclaim twice per claim idle time; stale sends expire.
        beat_schedule={
            f"usage-{verb}-{shard}": {
                "task": f"metering.usage.{verb}",
                "schedule": every_s,
                "args": (shard,),
                "options": {"expires": every_s * 5},
            }
            for verb, every_s in (
                ("drain", 1.0),
                ("reclaim", max(1.0, settings.metering_usage_claim_idle_ms / 2000)),
            )
            for shard in range(settings.metering_usage_shards)
        },
    )
    # Stored Stripe events whose enqueue was lost, or that await a purchase now recorded.
    celery.conf.beat_schedule["stripe-requeue-unprocessed"] = {
        "task": "metering.stripe.requeue_unprocessed",
        "schedule": float(settings.stripe_requeue_after_s),
        "options": {"expires": float(settings.stripe_requeue_after_s)},
    }
    # Grants past their expiry, within a minute of it (light work, beside Stripe's).
    celery.conf.beat_schedule["grants-expire"] = {
        "task": "metering.grants.expire",
        "schedule": 30.0,
        "options": {"expires": 30.0},
    }
    return celery


app = create_app()


@worker_init.connect
@beat_init.connect
def _refuse_cluster_broker(**_: Any) -> None:
    # Celery's Redis transport knows nothing of cluster slots: stop before it half-works.
    try:
        redis_client.check_broker(get_settings().broker_url)
    except redis_client.ClusterBrokerError as error:
        raise SystemExit(f"error: {error.message}") from error
    except RedisError:
        return  # unreachable: Celery reports it and keeps retrying the broker itself


@worker_process_init.connect
def _open_runtime(**_: Any) -> None:
    runtime.get_runtime()
    runtime.tune_garbage_collection()


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    runtime.close_runtime()


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Connecting this signal stops Celery from installing its own log handlers.
    settings = get_settings()
    configure_logging(settings.metering_log_level, json=settings.metering_log_json)


@task_prerun.connect
def _bind_task(task_id: str, task: Any, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=task.name)


@task_postrun.connect
def _unbind_task(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


# Outcomes of every task, counted in the process that ran it: a drain that keeps retrying, or no
# drain succeeding while beat sends one a second, is what an operator is alerted to.
@task_success.connect
def _count_success(sender: Any, **_: Any) -> None:
    metrics.observe_task(sender.name, "succeeded")


@task_retry.connect
def _count_retry(sender: Any, **_: Any) -> None:
    metrics.observe_task(sender.name, "retried")


@task_failure.connect
def _count_failure(sender: Any, **_: Any) -> None:
    metrics.observe_task(sender.name, "failed")
