"""The generation task: claim the job, run the engine, store the images, finish the job.

Thin and safe to re-run: the same job id writes the same storage keys with the same
bytes, and the job store accepts only one terminal transition. The job is claimed under
this process's heartbeat name, and every later write names it too: once the API's reaper
has taken the job back (this process stopped beating for a while) or another worker has
claimed it, this run stops at its next step and its writes change nothing.

Dynamic batching: after claiming its job, the run also claims queued companions (jobs
with the same batch signature, shared.batching) under the same name, up to
LATENTD_MAX_BATCH images, waiting up to LATENTD_BATCH_WAIT_MS for them, and runs them
all in one pipeline call; each job keeps its own progress, cancel, outcome and metrics,
and the heartbeat names every one of them, so each is reaped on its own if this process
dies. A batch that fails is run again one job at a time, so one job's fault (or a batch
too big for the device) costs only that job.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.batching import batch_signature
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
# How often a run waiting for batch companions looks for them again.
COMPANION_POLL_SECONDS = 0.01


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
    # Images this process puts in one pipeline call: LATENTD_MAX_BATCH, halved each time
    # a batch runs out of device memory (None: the setting as it is).
    batch_limit: int | None = None

    @property
    def max_batch(self) -> int:
        return self.settings.max_batch if self.batch_limit is None else self.batch_limit
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
    claim = runtime.store.claim(job_id, runtime.worker)
    if claim is None:  # missing, already finished, canceled while queued, or out of attempts
        logger.info("job %s: nothing to run", job_id)
        return
    job = claim.job
    # Nothing queued beside it: no companions to claim, and no round trip to look for them.
    jobs = [job, *(_claim_companions(job, runtime) if claim.batch_waiting else [])]
    if len(jobs) == 1:
        # Alone, it starts right away: the claim's own look at a cancel is as fresh as one
        # asked again now.
        _run_one(job, runtime, engine, cancel_requested=claim.cancel_requested)
    else:
        _run_batch(jobs, runtime, engine)


def _claim_companions(job: JobRecord, runtime: WorkerRuntime) -> list[JobRecord]:
    """Queued jobs that can share ``job``'s pipeline call, claimed for this run: as many as
    fit LATENTD_MAX_BATCH images. Once companions have shown up, it waits up to
    LATENTD_BATCH_WAIT_MS for more (jobs submitted together reach the queue a few ms
    apart); a job with none queued runs at once, so a client sending one job at a time
    pays nothing for batching."""
    settings = runtime.settings
    room = runtime.max_batch - job.request.num_images
    if room <= 0 or batch_signature(job.request) is None:
        return []
    deadline = time.monotonic() + settings.batch_wait_ms / 1000
    companions: list[JobRecord] = []
    while True:
        claimed = runtime.store.claim_companions(job, runtime.worker, room)
        if claimed:
            companions += claimed
            room -= sum(companion.request.num_images for companion in claimed)
            if runtime.heartbeat is not None:
                runtime.heartbeat.also_running([companion.id for companion in claimed])
        elif not companions:
            return companions  # alone: no burst is arriving
        left = deadline - time.monotonic()
        if room <= 0 or left <= 0:
            return companions
        time.sleep(min(COMPANION_POLL_SECONDS, left))


def _run_one(job: JobRecord, runtime: WorkerRuntime, engine: GenerationEngine,
             cancel_requested: bool | None = None) -> None:
    """Run one claimed job to its end; ``cancel_requested``: whether it should stop, as
    just read (None: ask the store)."""
    store, worker, job_id = runtime.store, runtime.worker, job.id
    try:
        if (store.is_cancel_requested(job_id, worker) if cancel_requested is None
                else cancel_requested):
            _stop(store, job_id, worker, "canceled before it started")
            return
        plan = job.request
        init_image, mask_image = _load_inputs(runtime.storage, job.inputs)
        # Loads the job's models (its own, and its refiner) if the memory budget had them
        # evicted (not counted as inference), and keeps them loaded until the run is over.
        needed = [plan.model, *([plan.refiner.model] if plan.refiner is not None else [])]
        control_images = [_load_input(runtime.storage, key, "RGB")
                          for key in job.inputs.control_image_keys]
        with runtime.models.use_all(needed) if runtime.models is not None else nullcontext():
            started = time.monotonic()
            results = engine.generate(
                plan, init_image, mask_image,
                on_step=ProgressReporter(store, job_id, worker=worker),
                control_images=[image for image in control_images if image is not None],
            )
            inference_seconds = time.monotonic() - started
        _succeed(job, results, inference_seconds, plan.num_images, runtime)
    except GenerationCanceled as exc:
        _stop(store, job_id, worker, str(exc))
    except ModelLoadError as exc:
        logger.error("job %s: could not load model %s: %s", job_id, job.request.model, exc)
        store.mark_failed(job_id, ErrorCode.MODEL_UNAVAILABLE, str(exc), worker)
    except SoftTimeLimitExceeded:
        _fail_timeout(job_id, runtime)
    except torch.OutOfMemoryError as exc:
        _fail_out_of_memory(job_id, runtime, exc)
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        store.mark_failed(job_id, ErrorCode.GENERATION_FAILED, str(exc) or type(exc).__name__,
                          worker)


def _run_batch(jobs: list[JobRecord], runtime: WorkerRuntime, engine: GenerationEngine) -> None:
    """Run claimed jobs of one batch signature in one pipeline call, each to its own end."""
    store, worker = runtime.store, runtime.worker
    try:
        live = []
        for job in jobs:
            if store.is_cancel_requested(job.id, worker):
                _stop(store, job.id, worker, "canceled before it started")
            else:
                live.append(job)
        if len(live) <= 1:
            for job in live:
                _run_one(job, runtime, engine)
            return
        images = sum(job.request.num_images for job in live)
        logger.info("batch of %d jobs (%d images): %s", len(live), images,
                    " ".join(job.id for job in live))
        # One signature, one model: loaded if the memory budget had it evicted, and kept
        # loaded while the batch runs (load time is not inference).
        model = live[0].request.model
        try:
            with runtime.models.use(model) if runtime.models is not None else nullcontext():
                started = time.monotonic()
                results = engine.generate_batch(
                    [job.request for job in live],
                    [_BatchMember(ProgressReporter(store, job.id, worker=worker), job.id,
                                  worker) for job in live])
                inference_seconds = time.monotonic() - started
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:
            # One job's fault, or a batch too big for the device: each job alone then
            # gets the outcome it would have had unbatched.
            logger.warning("batch of %d jobs failed (%s); running them one by one",
                           len(live), type(exc).__name__, exc_info=True)
            _free_device_cache()
            if isinstance(exc, torch.OutOfMemoryError):
                # This device holds fewer images a call: later batches of this process
                # stay below it instead of failing and re-running every time.
                runtime.batch_limit = max(1, images // 2)
                logger.warning("batches of this worker now hold at most %d images",
                               runtime.batch_limit)
            for job in live:
                _run_one(job, runtime, engine)
            return
        for job, result in zip(live, results, strict=True):
            if isinstance(result, GenerationCanceled):
                continue  # stopped and marked at the step it asked (_BatchMember)
            try:
                _succeed(job, result, inference_seconds, images, runtime)
            except Exception as exc:  # storage refused this job's images: this job fails
                logger.exception("job %s failed", job.id)
                store.mark_failed(job.id, ErrorCode.GENERATION_FAILED,
                                  str(exc) or type(exc).__name__, worker)
    except SoftTimeLimitExceeded:
        # Finished jobs are terminal and stay as they are; the others time out.
        for job in jobs:
            _fail_timeout(job.id, runtime)


class _BatchMember:
    """A batched job's ``on_step``: its own progress, and when it asks to stop, canceled
    at that very step while the rest of the batch goes on."""

    def __init__(self, report: ProgressReporter, job_id: str, worker: str):
        self.report = report
        self.job_id = job_id
        self.worker = worker

    def __call__(self, step: int, total_steps: int) -> bool:
        if not self.report(step, total_steps):
            return False
        _stop(self.report.store, self.job_id, self.worker,
              f"canceled after step {step} of {total_steps} (its batch goes on)")
        return True


def _succeed(job: JobRecord, results: list[GeneratedImage], inference_seconds: float,
             batch_images: int, runtime: WorkerRuntime) -> None:
    store, worker, job_id = runtime.store, runtime.worker, job.id
    images = _store_outputs(runtime.storage, job_id, job.request, results)
    metrics = _metrics(job, inference_seconds, batch_images)
    if store.mark_succeeded(job_id, images, metrics, worker) is None:
        if store.get(job_id) is None:  # deleted while it ran: keep no orphaned images
            runtime.storage.delete_prefix(job_prefix(job_id))
        # Otherwise another run owns the job now; it writes these very keys.
        logger.info("job %s: finished, but the job is no longer this run's", job_id)
        return
    logger.info("job %s: %d %s(s) in %.2fs", job_id, len(images),
                "video" if job.request.task in VIDEO_TASKS else "image", inference_seconds)


def _fail_timeout(job_id: str, runtime: WorkerRuntime) -> None:
    limit = runtime.settings.task_soft_time_limit
    runtime.store.mark_failed(job_id, ErrorCode.TIMEOUT, f"generation took longer than {limit} s",
                              runtime.worker)


def _fail_out_of_memory(job_id: str, runtime: WorkerRuntime, exc: Exception) -> None:
    """The device ran out of memory for this job: fail it, free what the failed run held,
    and keep serving (the next, smaller job may well fit)."""
    logger.warning("job %s: out of device memory: %s", job_id, exc)
    _free_device_cache()
    runtime.store.mark_failed(
        job_id, ErrorCode.OUT_OF_MEMORY,
        "the device ran out of memory for this job; try fewer images or a smaller size",
        runtime.worker)


def _free_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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


def _metrics(job: JobRecord, inference_seconds: float, batch_images: int) -> Metrics:
    started = job.started_at or job.created_at
    now = datetime.now(UTC)
    return Metrics(
        queue_seconds=round((started - job.created_at).total_seconds(), 3),
        inference_seconds=round(inference_seconds, 3),
        total_seconds=round((now - job.created_at).total_seconds(), 3),
        batch_images=batch_images,
    )
