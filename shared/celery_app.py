"""The Celery configuration both sides share: the API publishes by task name, workers execute.

Only job ids and plain JSON cross the queue (tasks never carry images or tensors). Each
process builds its one app with ``make_celery`` in its composition root; tasks are
declared with ``shared_task`` so that no app exists merely because a module was imported.
"""

from __future__ import annotations

from celery import Celery

from shared.priorities import PRIORITY_LEVELS
from shared.schemas import Priority
from shared.settings import Settings

GENERATE_TASK = "latentd.generate"
DELIVER_WEBHOOK_TASK = "latentd.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"

def make_celery(settings: Settings) -> Celery:
    app = Celery("latentd", broker=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # Long GPU tasks: acknowledge after the run so a killed worker's task is
        # redelivered; take one task at a time so priorities decide what runs next.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
        },
        task_default_priority=PRIORITY_LEVELS[Priority.NORMAL],
        # Retries of a delivery go back to the webhooks queue, whoever publishes them.
        task_routes={DELIVER_WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app
