"""The generation task: claim the job, run the engine, store the images, finish the job.

Thin and safe to re-run: the same job id writes the same storage keys with the same
bytes, and the job store accepts only one terminal transition.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.celery_app import GENERATE_TASK, celery_app
from shared.jobstore import JobStore
from shared.model_registry import ModelRegistry
from shared.schemas import ImageInfo, Job, JobParams, Metrics
from shared.settings import Settings, get_settings
from shared.storage import Storage, get_storage, image_key, job_prefix
from worker.engine import GeneratedImage, GenerationCanceled, GenerationEngine
from worker.images import decode_image, encode_image, parameters_text

logger = logging.getLogger(__name__)

# Progress is published at most this often (plus the first and last step): a GPU runs
# 20+ steps a second and every update is an event, an SSE message and maybe a webhook.
PROGRESS_INTERVAL_SECONDS = 0.25


@dataclass
class WorkerRuntime:
    """What a generation worker process holds for its lifetime."""

    engine: GenerationEngine
    store: JobStore
    storage: Storage
    settings: Settings


_runtime: WorkerRuntime | None = None
_runtime_error: BaseException | None = None
_runtime_lock = threading.Lock()


def build_runtime(settings: Settings) -> WorkerRuntime:
    """Load every model this worker serves (slow: weights) and connect the store."""
    from worker.pipelines import load_pipeline  # torch-heavy; only worker processes need it

    registry = ModelRegistry.from_settings(settings)
    models = {name: load_pipeline(registry.get(name), settings) for name in settings.served_models}
    return WorkerRuntime(
        engine=GenerationEngine(models),
        store=JobStore.from_settings(settings),
        storage=get_storage(settings),
        settings=settings,
    )


def install_runtime(runtime: WorkerRuntime | None, error: BaseException | None = None) -> None:
    """Set this process's runtime (or the reason it has none) once its models are loaded."""
    global _runtime, _runtime_error
    _runtime, _runtime_error = runtime, error


def current_runtime() -> WorkerRuntime:
    """This process's runtime; built here on first use where no process-init hook ran
    (solo/threads pools). A load that failed once is not retried per task."""
    with _runtime_lock:
        if _runtime is None and _runtime_error is None:
            try:
                install_runtime(build_runtime(get_settings()))
            except Exception as exc:
                install_runtime(None, exc)
                raise
        if _runtime_error is not None:
            raise RuntimeError(f"this worker could not load its models: {_runtime_error}")
        assert _runtime is not None
        return _runtime


@celery_app.task(name=GENERATE_TASK)
def generate(job_id: str) -> None:
    """Run generation job ``job_id`` to a terminal state."""
    try:
        runtime = current_runtime()
    except Exception as exc:
        # No engine, but the job must not stay queued/running: fail it through a store.
        logger.exception("job %s: worker has no models", job_id)
        store = JobStore.from_settings(get_settings())
        if store.mark_running(job_id) is not None:
            store.mark_failed(job_id, "model_unavailable", str(exc))
        return
    run_job(job_id, runtime)


def run_job(job_id: str, runtime: WorkerRuntime) -> None:
    """Claim, generate, store and finish one job; every outcome is a terminal state."""
    store = runtime.store
    job = store.mark_running(job_id)
    if job is None:  # missing, already finished, canceled while queued, or out of attempts
        logger.info("job %s: nothing to run", job_id)
        return
    try:
        if store.is_cancel_requested(job_id):
            store.mark_canceled(job_id)
            return
        params = job.request
        init_image, mask_image = _load_inputs(runtime.storage, params)
        started = time.monotonic()
        results = runtime.engine.generate(
            params, init_image, mask_image, on_step=ProgressReporter(store, job_id)
        )
        inference_seconds = time.monotonic() - started
        images = _store_outputs(runtime.storage, job_id, params, results)
        if store.mark_succeeded(job_id, images, _metrics(job, inference_seconds)) is None:
            if store.get(job_id) is None:  # deleted while it ran: keep no orphaned images
                runtime.storage.delete_prefix(job_prefix(job_id))
            return
        logger.info("job %s: %d image(s) in %.2fs", job_id, len(images), inference_seconds)
    except GenerationCanceled as exc:
        logger.info("job %s: %s", job_id, exc)
        store.mark_canceled(job_id)
    except SoftTimeLimitExceeded:
        limit = runtime.settings.task_soft_time_limit
        store.mark_failed(job_id, "timeout", f"generation took longer than {limit} s")
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        store.mark_failed(job_id, "generation_failed", str(exc) or type(exc).__name__)


class ProgressReporter:
    """``on_step`` for one job: publishes progress with an ETA, answers "stop?"."""

    def __init__(
        self, store: JobStore, job_id: str, min_interval: float = PROGRESS_INTERVAL_SECONDS
    ):
        self.store = store
        self.job_id = job_id
        self.min_interval = min_interval
        self.started = time.monotonic()
        self.last_published: float | None = None

    def __call__(self, step: int, total_steps: int) -> bool:
        now = time.monotonic()
        due = self.last_published is None or now - self.last_published >= self.min_interval
        if due or step >= total_steps:
            elapsed = now - self.started
            eta = elapsed / step * (total_steps - step) if step else None
            self.store.update_progress(self.job_id, step, total_steps, eta)
            self.last_published = now
        return self.store.is_cancel_requested(self.job_id)


def _load_inputs(
    storage: Storage, params: JobParams
) -> tuple[Image.Image | None, Image.Image | None]:
    return (
        _load_input(storage, params.init_image_key, "RGB"),
        _load_input(storage, params.mask_image_key, "L"),
    )


def _load_input(storage: Storage, key: str | None, mode: str) -> Image.Image | None:
    if key is None:
        return None
    try:
        return decode_image(storage.get(key), mode)
    except KeyError:
        raise ValueError(f"input image {key!r} is missing from storage") from None


def _store_outputs(
    storage: Storage, job_id: str, params: JobParams, results: list[GeneratedImage]
) -> list[ImageInfo]:
    fmt = params.output_format
    images = []
    for index, result in enumerate(results):
        data = encode_image(result.image, fmt, parameters_text(params, result.seed))
        storage.put(image_key(job_id, index, fmt.value), data, fmt.content_type)
        images.append(
            ImageInfo(
                index=index,
                url=f"/v1/jobs/{job_id}/images/{index}",
                seed=result.seed,
                width=result.image.width,
                height=result.image.height,
                content_type=fmt.content_type,
            )
        )
    return images


def _metrics(job: Job, inference_seconds: float) -> Metrics:
    started = job.started_at or job.created_at
    now = datetime.now(UTC) if job.created_at.tzinfo else datetime.now()
    return Metrics(
        queue_seconds=round((started - job.created_at).total_seconds(), 3),
        inference_seconds=round(inference_seconds, 3),
        total_seconds=round((now - job.created_at).total_seconds(), 3),
    )
