"""The webhook worker: ``celery -A worker.webhook_worker worker --pool threads -Q webhooks``.

Consumes only the webhooks queue and imports no torch, so it starts in a second and
runs on any small host.
"""

from __future__ import annotations

from kombu import Exchange, Queue

import worker.webhook_tasks  # noqa: F401  (registers the delivery task)
from shared.celery_app import WEBHOOK_QUEUE, celery_app

app = celery_app
# Bound the way Celery declares a queue it publishes to by name (own direct exchange,
# routing key = name), so publishers and this worker agree on the routing.
app.conf.task_queues = [Queue(WEBHOOK_QUEUE, Exchange(WEBHOOK_QUEUE), routing_key=WEBHOOK_QUEUE)]
