"""The webhook worker's entry point and composition root:
``celery -A worker.webhook_worker worker --pool threads -Q webhooks``.

Consumes only the webhooks queue and imports no torch, so it starts in a second and
runs on any small host. Its store and webhook sender (with its TLS context) are built
once, at ``worker_init`` (the thread pool runs in this one process).
"""

from __future__ import annotations

import redis
from celery.signals import worker_init
from kombu import Exchange, Queue

from shared.celery_app import WEBHOOK_QUEUE, make_celery
from shared.jobstore import JobStore
from shared.logs import WEBHOOK_WORKER, configure_celery_logging
from shared.metrics import MetricsRecorder
from shared.settings import get_settings
from worker import webhook_tasks  # registers the delivery task

settings = get_settings()
configure_celery_logging(settings.log_format, WEBHOOK_WORKER)
app = make_celery(settings)
# Bound the way Celery declares a queue it publishes to by name (own direct exchange,
# routing key = name), so publishers and this worker agree on the routing.
app.conf.task_queues = [Queue(WEBHOOK_QUEUE, Exchange(WEBHOOK_QUEUE), routing_key=WEBHOOK_QUEUE)]


@worker_init.connect
def build_runtime(**_: object) -> None:
    """Connect the store (attempts are recorded on the job) and build the webhook sender."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    # No on_event: recording an attempt is not a state change and sends nothing.
    webhook_tasks.install_runtime(webhook_tasks.WebhookRuntime(
        store=JobStore(client, settings),
        sender=webhook_tasks.WebhookSender(),
        settings=settings,
        metrics=MetricsRecorder(client),
    ))
