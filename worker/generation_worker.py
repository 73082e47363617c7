"""Generation worker entry point: ``celery -A worker.generation_worker worker --pool prefork``.

The parent process only configures queues; each forked child loads its models once at
``worker_process_init`` (weights and CUDA never exist before the fork), then announces
itself with a heartbeat so the API's /readyz can tell a model is served.
"""

from __future__ import annotations

import logging

import redis
from celery.signals import worker_process_init, worker_process_shutdown
from kombu import Exchange, Queue

from shared.celery_app import celery_app
from shared.model_registry import ModelRegistry, queue_for_model
from shared.settings import get_settings
from worker import tasks  # importing registers the generation task
from worker.heartbeat import Heartbeat
from worker.pipelines import configure_torch

logger = logging.getLogger(__name__)

app = celery_app
settings = get_settings()

# Fail in the parent, before forking, if a served model is not registered: a typo in
# LATENTD_WORKER_MODELS should stop the worker, not leave it consuming nothing.
_registry = ModelRegistry.from_settings(settings)
for _name in settings.served_models:
    _registry.get(_name)

# The same exchange/routing key Celery gives a queue the API names at publish time, so
# both sides declare one identical binding.
app.conf.task_queues = [
    Queue(queue, Exchange(queue), routing_key=queue)
    for queue in map(queue_for_model, settings.served_models)
]

_heartbeat: Heartbeat | None = None


@worker_process_init.connect
def load_models(**_: object) -> None:
    """In the forked child: load every served model once and start the heartbeat."""
    global _heartbeat
    configure_torch(settings)
    try:
        runtime = tasks.build_runtime(settings)
    except Exception as exc:
        # No heartbeat: /readyz reports the model unserved, and any task this process
        # still receives fails its job with this reason instead of hanging.
        logger.exception("could not load models %s", settings.served_models)
        tasks.install_runtime(None, exc)
        return
    tasks.install_runtime(runtime)
    _heartbeat = Heartbeat(redis.Redis.from_url(settings.redis_url), settings.served_models)
    _heartbeat.start()
    logger.info("serving %s as %s", ", ".join(settings.served_models), _heartbeat.worker)


@worker_process_shutdown.connect
def withdraw_heartbeat(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
