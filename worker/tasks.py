"""The generation task: claim the job, run the engine, store the images, finish the job.

Thin and safe to re-run: the same job id writes the same storage keys with the same
bytes, and the job store accepts only one terminal transition. The job is claimed under
this process's heartbeat name, and every later write names it too: once the API's reaper
has taken the job back (this process stopped beating for a while) or another worker has
claimed it, this run stops at its next step and its writes change nothing.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.celery_app import GENERATE_TASK
from shared.jobstore import JobStore
from shared.logs import logs_as_job
from shared.records import JobInputs, JobRecord, OutputImage
from shared.schemas import VIDEO_TASKS, ErrorCode, JobPlan, Metrics
from shared.settings import Settings
from shared.storage import Storage, image_key, job_prefix
from worker.engine import GeneratedImage, GenerationCanceled, GenerationEngine
from worker.heartbeat import Heartbeat
from worker.images import decode_image, encode_image, parameters_text
from worker.model_cache import ModelCache
from worker.pipelines import ModelLoadError
from worker.video import store_video

logger = logging.getLogger(__name__)

# Progress is published at most this often (plus the first and last step): a GPU runs
# 20+ steps a second and every update is an event, an SSE message and maybe a webhook.
PROGRESS_INTERVAL_SECONDS = 0.25


@dataclass
class WorkerRuntime:
    """What a generation worker process holds for its lifetime.

    ``engine`` is None when the models failed to load; ``load_error`` then says why, and
    every job this process receives fails with ``model_unavailable``. ``heartbeat`` is this
    process's beacon (None: the process does not beat, and its claims name no worker):
    jobs are claimed under its name, and it names the job being run. ``models`` is the
    engine's model cache (None: the engine's models are a fixed dict, all loaded).
    """

    store: JobStore
    storage: Storage
    settings: Settings
    engine: GenerationEngine | None
    load_error: str | None = None
    heartbeat: Heartbeat | None = None
    models: ModelCache | None = None

    @property
    def worker(self) -> str:
        """The name this process claims jobs under ('' = none)."""
        return self.heartbeat.worker if self.heartbeat is not None else ""


_runtime: WorkerRuntime | None = None


def install_runtime(runtime: WorkerRuntime) -> None:
    """Set this process's runtime (worker/generation_worker.py, at process start)."""
    global _runtime
    _runtime = runtime


def current_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError(
            "no worker runtime: run the generation worker with --pool prefork "
            "(its processes build the runtime at worker_process_init)"
        )
    return _runtime


@shared_task(name=GENERATE_TASK)
def generate(job_id: str) -> None:
    """Run generation job ``job_id`` to a terminal state."""
    run_job(job_id, current_runtime())


@logs_as_job
def run_job(job_id: str, runtime: WorkerRuntime) -> None:
    """Claim, generate, store and finish one job; every outcome is a terminal state (or,
    when the job stopped being this run's, no write at all)."""
    store = runtime.store
    if runtime.engine is None:
        # Fails the job where it stands (queued): it never started, used no attempt.
        logger.error("job %s: this worker has no models: %s", job_id, runtime.load_error)
        store.mark_failed(job_id, ErrorCode.MODEL_UNAVAILABLE,
                          f"the worker could not load its models: {runtime.load_error}")
        return
    # The beats name the job from before the claim until the run is over, however it
    # ends: a run that ends without finishing its job (Redis was away for its last
    # write) shows as idle, and the reaper takes the job back.
    with runtime.heartbeat.running_job(job_id) if runtime.heartbeat else nullcontext():
        _run_claimed(job_id, runtime, runtime.engine)


def _run_claimed(job_id: str, runtime: WorkerRuntime, engine: GenerationEngine) -> None:
    store, worker = runtime.store, runtime.worker
    job = store.mark_running(job_id, worker)
    if job is None:  # missing, already finished, canceled while queued, or out of attempts
        logger.info("job %s: nothing to run", job_id)
        return
    try:
        if store.is_cancel_requested(job_id, worker):
            _stop(store, job_id, worker, "canceled before it started")
            return
        plan = job.request
        init_image, mask_image = _load_inputs(runtime.storage, job.inputs)
        # Loads the job's models (its own, and its refiner) if the memory budget had them
        # evicted (not counted as inference), and keeps them loaded until the run is over.
        needed = [plan.model, *([plan.refiner.model] if plan.refiner is not None else [])]
        with runtime.models.use_all(needed) if runtime.models is not None else nullcontext():
            started = time.monotonic()
            results = engine.generate(
                plan, init_image, mask_image,
                on_step=ProgressReporter(store, job_id, worker=worker),
            )
            inference_seconds = time.monotonic() - started
        images = _store_outputs(runtime.storage, job_id, plan, results)
        metrics = _metrics(job, inference_seconds)
        if store.mark_succeeded(job_id, images, metrics, worker) is None:
            if store.get(job_id) is None:  # deleted while it ran: keep no orphaned images
                runtime.storage.delete_prefix(job_prefix(job_id))
            # Otherwise another run owns the job now; it writes these very keys.
            logger.info("job %s: finished, but the job is no longer this run's", job_id)
            return
        logger.info("job %s: %d %s(s) in %.2fs", job_id, len(images),
                    "video" if plan.task in VIDEO_TASKS else "image", inference_seconds)
    except GenerationCanceled as exc:
        _stop(store, job_id, worker, str(exc))
    except ModelLoadError as exc:
        logger.error("job %s: could not load model %s: %s", job_id, job.request.model, exc)
        store.mark_failed(job_id, ErrorCode.MODEL_UNAVAILABLE, str(exc), worker)
    except SoftTimeLimitExceeded:
        limit = runtime.settings.task_soft_time_limit
        store.mark_failed(job_id, ErrorCode.TIMEOUT, f"generation took longer than {limit} s",
                          worker)
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        store.mark_failed(job_id, ErrorCode.GENERATION_FAILED, str(exc) or type(exc).__name__,
                          worker)


def _stop(store: JobStore, job_id: str, worker: str, how: str) -> None:
    """The run was asked to stop: cancel the job if it is still this run's; a deleted,
    re-queued or taken-over job is left to whoever has it now."""
    if store.mark_canceled(job_id, worker) is not None:
        logger.info("job %s: %s", job_id, how)
    else:
        logger.info("job %s: %s: the job was deleted or is no longer this run's", job_id, how)


class ProgressReporter:
    """``on_step`` for one job: publishes progress with an ETA, answers "stop?" (canceled,
    deleted, or no longer ``worker``'s to run)."""

    def __init__(
        self, store: JobStore, job_id: str, min_interval: float = PROGRESS_INTERVAL_SECONDS,
        worker: str | None = None,
    ):
        self.store = store
        self.job_id = job_id
        self.min_interval = min_interval
        self.worker = worker
        self.started = time.monotonic()
        self.last_published: float | None = None

    def __call__(self, step: int, total_steps: int) -> bool:
        now = time.monotonic()
        due = self.last_published is None or now - self.last_published >= self.min_interval
        if due or step >= total_steps:
            elapsed = now - self.started
            eta = elapsed / step * (total_steps - step) if step else None
            self.store.update_progress(self.job_id, step, total_steps, eta, worker=self.worker)
            self.last_published = now
        return self.store.is_cancel_requested(self.job_id, self.worker)


def _load_inputs(
    storage: Storage, inputs: JobInputs
) -> tuple[Image.Image | None, Image.Image | None]:
    return (
        _load_input(storage, inputs.init_image_key, "RGB"),
        _load_input(storage, inputs.mask_image_key, "L"),
    )


def _load_input(storage: Storage, key: str | None, mode: str) -> Image.Image | None:
    if key is None:
        return None
    try:
        return decode_image(storage.get(key), mode)
    except KeyError:
        raise ValueError(f"input image {key!r} is missing from storage") from None


def _store_outputs(
    storage: Storage, job_id: str, plan: JobPlan, results: list[GeneratedImage]
) -> list[OutputImage]:
    fmt = plan.output_format
    images = []
    for index, result in enumerate(results):
        if result.frames is not None:
            images.append(store_video(storage, job_id, index, plan, result))
            continue
        data = encode_image(result.image, fmt, parameters_text(plan, result.seed))
        storage.put(image_key(job_id, index, fmt.value), data, fmt.content_type)
        images.append(OutputImage(index=index, seed=result.seed, width=result.image.width,
                                  height=result.image.height, format=fmt))
    return images


def _metrics(job: JobRecord, inference_seconds: float) -> Metrics:
    started = job.started_at or job.created_at
    now = datetime.now(UTC)
    return Metrics(
        queue_seconds=round((started - job.created_at).total_seconds(), 3),
        inference_seconds=round(inference_seconds, 3),
        total_seconds=round((now - job.created_at).total_seconds(), 3),
    )
