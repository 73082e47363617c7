"""Generation worker entry point and composition root:
``celery -A worker.generation_worker worker --pool prefork``.

The parent process only reads the settings, checks the model registry and configures
queues (torch is imported, but no weights are loaded and CUDA is never touched); each
forked child builds its runtime once at ``worker_process_init`` (store, storage, then the
weights), then announces itself with a heartbeat so the API's /readyz can tell a model
is served. With ``LATENTD_WORKER_MEMORY_BUDGET`` the weights are a model cache
(worker/model_cache.py): models load on demand and the consumer reads the queues of the
loaded ones first (worker/queue_order.py).
"""

from __future__ import annotations

import logging

import redis
from celery.signals import celeryd_init, worker_process_init, worker_process_shutdown
from kombu import Exchange, Queue

from shared.adapters import Adapters
from shared.celery_app import make_celery
from shared.jobstore import JobStore
from shared.logs import GENERATION_WORKER, configure_celery_logging
from shared.model_registry import ModelRegistry, queue_for_model
from shared.settings import get_settings
from shared.storage import get_storage
from shared.webhooks import WebhookPublisher
from worker import tasks  # registers the generation task
from worker.engine import GenerationEngine
from worker.fast_path import fast_path_for, warm_up
from worker.heartbeat import Heartbeat
from worker.model_cache import ModelCache
from worker.pipelines import LoadedModel, configure_torch, load_pipeline
from worker.process_stats import MeteredHeartbeat
from worker.queue_order import HotQueuesFirst

logger = logging.getLogger(__name__)

settings = get_settings()
configure_celery_logging(settings.log_format, GENERATION_WORKER)
try:
    # In the parent, before forking: a typo in LATENTD_WORKER_MODELS or LATENTD_MODELS
    # stops the worker instead of leaving it consuming nothing.
    registry = ModelRegistry.from_settings(settings)
except ValueError as exc:
    raise SystemExit(f"latentd: invalid configuration: {exc}") from None

app = make_celery(settings)
# The same exchange/routing key Celery gives a queue the API names at publish time, so
# both sides declare one identical binding.
app.conf.task_queues = [
    Queue(queue, Exchange(queue), routing_key=queue)
    for queue in map(queue_for_model, settings.served_models)
]

_heartbeat: Heartbeat | None = None
# This worker's Celery node name, learnt in the parent before the fork: a pool child
# addresses its queue-order commands to it.
_nodename: str | None = None


@celeryd_init.connect
def remember_nodename(sender: str, **_: object) -> None:
    global _nodename
    _nodename = sender


def load_model(name: str) -> LoadedModel:
    return load_pipeline(registry.get(name), settings)


def build_runtime() -> tasks.WorkerRuntime:
    """Connect the store and storage, then load the served models that fit the memory
    budget (all of them without one; slow: weights)."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = JobStore(client, settings, on_event=WebhookPublisher(client, app))
    storage = get_storage(settings)
    configure_torch(settings)
    models = ModelCache(settings.served_models, load_model, settings.worker_memory_budget)
    # LoRA files load on a job's first use of them (a directory may hold many; each then
    # stays loaded); the ControlNets that fit the models loaded here load with them.
    engine = GenerationEngine(models, Adapters.from_sources(settings.lora_dir, settings.models))
    try:
        models.preload()
        engine.controlnets.preload(models.values())
    except Exception as exc:
        # No heartbeat: /readyz reports the model unserved, and any task this process
        # still receives fails its job with this reason instead of hanging.
        logger.exception("could not load models %s", settings.served_models)
        return tasks.WorkerRuntime(store, storage, settings, engine=None, load_error=str(exc))
    if fast_path_for(settings).warm_up:
        # Compiled modules trace, and cuDNN times its kernels, on their first call: done
        # here, before the heartbeat starts, so no job waits on it and /readyz waits for it.
        try:
            warm_up(engine, settings.max_batch)
        except Exception as exc:
            logger.exception("warm-up of %s failed", settings.served_models)
            return tasks.WorkerRuntime(store, storage, settings, engine=None,
                                       load_error=f"warm-up failed: {exc}")
    return tasks.WorkerRuntime(store, storage, settings, engine=engine, models=models)


@worker_process_init.connect
def start_process(**_: object) -> None:
    """In the forked child: build the runtime and, if the models loaded, start beating."""
    global _heartbeat
    runtime = build_runtime()
    if runtime.engine is None:
        tasks.install_runtime(runtime)
        return
    # The runtime claims jobs under the heartbeat's name (this child's host and pid), and
    # the beats name the job it runs: what the API's reaper checks a running job against.
    # Its beats also publish this process's memory, for GET /metrics.
    # The beats name every served model (a job for one this process has evicted loads it
    # again) and publish which are loaded now.
    models = runtime.models
    assert models is not None
    heartbeat = _heartbeat = MeteredHeartbeat(
        redis.Redis.from_url(settings.redis_url), settings.served_models,
        device=settings.device, interval_seconds=settings.heartbeat_interval_seconds,
        ttl_seconds=settings.heartbeat_ttl_seconds, loaded=lambda: models.loaded)
    queue_order = HotQueuesFirst(app, _nodename, settings.served_models) if _nodename else None

    def announce(loaded: list[str]) -> None:
        heartbeat.beat_once()  # shows the new set at once, not at the next interval
        if queue_order is not None:
            queue_order.follow(loaded)

    models.on_change = announce
    runtime.heartbeat = heartbeat
    tasks.install_runtime(runtime)
    heartbeat.start()
    logger.info("serving %s as %s (loaded: %s)", ", ".join(settings.served_models),
                heartbeat.worker, ", ".join(models.loaded))


@worker_process_shutdown.connect
def withdraw_heartbeat(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
