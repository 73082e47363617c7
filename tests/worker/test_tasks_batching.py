"""Dynamic batching in the generation task, against a real redis-server job store, local
storage and tiny-random: the run that claims a job claims its queued companions too and
runs them in one pipeline call, and each job still ends exactly as it would alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.jobstore import JobStore
from shared.records import JobRecord
from shared.schemas import ErrorCode, JobPlan, JobStatus
from shared.settings import Settings
from shared.storage import LocalStorage, image_key
from tests.factories import make_plan, make_record
from tests.worker.test_engine_batch import BATCH_PIXEL_TOLERANCE
from worker.engine import GenerationEngine
from worker.heartbeat import Heartbeat
from worker.tasks import WorkerRuntime, run_job


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", torch_threads=1,
                    max_batch=4, batch_wait_ms=0)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)


def make_runtime(engine: GenerationEngine, store: JobStore, settings: Settings,
                 worker: str = "w-batch") -> WorkerRuntime:
    heartbeat = Heartbeat(store._redis, ["tiny-random"], worker)  # not started: beat by hand
    return WorkerRuntime(store, LocalStorage(settings.images_dir), settings, engine,
                         heartbeat=heartbeat)


@pytest.fixture
def runtime(engine: GenerationEngine, store: JobStore, settings: Settings) -> WorkerRuntime:
    return make_runtime(engine, store, settings)


def submit(store: JobStore, **plan: object) -> JobRecord:
    stored, created = store.create(make_record(owner="alice", request=make_plan(**plan)))
    assert created
    return stored


def four_jobs(store: JobStore) -> list[JobRecord]:
    return [submit(store, prompt=f"a cat number {i}", seed=100 + i) for i in range(4)]


def status(store: JobStore, job: JobRecord) -> JobStatus:
    current = store.get(job.id)
    assert current is not None
    return current.status


def stored_image(runtime: WorkerRuntime, job_id: str) -> np.ndarray:
    import io
    data = runtime.storage.get(image_key(job_id, 0, "png"))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_one_run_finishes_its_queued_companions_with_their_own_images(
    runtime, store, engine
) -> None:
    jobs = four_jobs(store)
    run_job(jobs[0].id, runtime)

    for job in jobs:
        done = store.get(job.id)
        assert done is not None and done.status is JobStatus.SUCCEEDED, done
        assert done.metrics.batch_images == 4 and done.attempts == 1
        assert done.progress.step == done.progress.total_steps == 4
        [alone] = engine.generate(job.request)
        difference = np.abs(stored_image(runtime, job.id) - np.asarray(alone.image, np.int16))
        assert difference.max() <= BATCH_PIXEL_TOLERANCE
    # The companions' own tasks, delivered later, find nothing to run.
    finished = store.get(jobs[1].id)
    run_job(jobs[1].id, runtime)
    assert store.get(jobs[1].id) == finished
    assert runtime.heartbeat is not None and runtime.heartbeat.job == ""


def test_max_batch_one_runs_every_job_alone(engine, store, settings) -> None:
    runtime = make_runtime(engine, store, settings.model_copy(update={"max_batch": 1}))
    jobs = four_jobs(store)
    run_job(jobs[0].id, runtime)
    assert [status(store, job) for job in jobs] == [JobStatus.SUCCEEDED] + [JobStatus.QUEUED] * 3
    assert store.get(jobs[0].id).metrics.batch_images == 1  # type: ignore[union-attr]


def test_the_batch_holds_at_most_max_batch_images(runtime, store) -> None:
    jobs = [submit(store, num_images=2, seed=1), submit(store, num_images=3, seed=5),
            submit(store, num_images=2, seed=9), submit(store, seed=20)]
    run_job(jobs[0].id, runtime)
    # 2 + (3 does not fit) + 2 = 4: the three-image job waits for its own task.
    assert [status(store, job) for job in jobs] == [
        JobStatus.SUCCEEDED, JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.QUEUED]


def test_incompatible_jobs_are_not_batched(runtime, store) -> None:
    first = submit(store)
    other = submit(store, steps=3)
    run_job(first.id, runtime)
    assert status(store, other) is JobStatus.QUEUED


def test_the_beats_name_every_job_of_the_batch_while_it_runs(engine, store, settings) -> None:
    seen: list[str] = []

    class Watching(JobStore):
        def update_progress(self, job_id, step, total_steps, eta, worker=None):
            seen.append(runtime.heartbeat.job)  # type: ignore[union-attr]
            return super().update_progress(job_id, step, total_steps, eta, worker)

    runtime = make_runtime(engine, Watching(store._redis, settings), settings)
    jobs = four_jobs(store)
    run_job(jobs[0].id, runtime)
    assert seen and {frozenset(value.split()) for value in seen} == {
        frozenset(job.id for job in jobs)}


def test_canceling_one_job_of_a_batch_lets_the_others_finish(engine, store, settings) -> None:
    jobs = four_jobs(store)
    victim = jobs[2]
    canceled_at: list[int] = []

    class UserCancelsOne(JobStore):
        def update_progress(self, job_id, step, total_steps, eta, worker=None):
            written = super().update_progress(job_id, step, total_steps, eta, worker)
            if job_id == victim.id and step == 1:
                self.request_cancel(job_id)
            return written

        def mark_canceled(self, job_id, worker=None):
            canceled_at.append(self.get(job_id).progress.step)  # type: ignore[union-attr]
            return super().mark_canceled(job_id, worker)

    runtime = make_runtime(engine, UserCancelsOne(store._redis, settings), settings)
    run_job(jobs[0].id, runtime)

    done = store.get(victim.id)
    assert done is not None and done.status is JobStatus.CANCELED and done.images == []
    assert done.error is not None and done.error.code is ErrorCode.CANCELED
    assert canceled_at == [1]  # canceled at the step it asked, not when the batch ended
    with pytest.raises(KeyError):
        runtime.storage.get(image_key(victim.id, 0, "png"))
    others = [job for job in jobs if job is not victim]
    assert [status(store, job) for job in others] == [JobStatus.SUCCEEDED] * 3


class PoisonEngine(GenerationEngine):
    """The real engine, but a plan whose prompt is "poison" fails inside the pipeline."""

    def generate(self, plan: JobPlan, *args, **kwargs):
        if plan.prompt == "poison":
            raise RuntimeError("this job's prompt breaks the pipeline")
        return super().generate(plan, *args, **kwargs)

    def generate_batch(self, plans, on_steps):
        if any(plan.prompt == "poison" for plan in plans):
            raise RuntimeError("this job's prompt breaks the pipeline")
        return super().generate_batch(plans, on_steps)


def test_a_failing_batch_is_run_job_by_job_so_only_the_faulty_job_fails(
    engine, store, settings
) -> None:
    runtime = make_runtime(PoisonEngine(engine.models), store, settings)
    good = submit(store, seed=1)
    poison = submit(store, prompt="poison", seed=2)
    also_good = submit(store, seed=3)
    run_job(good.id, runtime)
    assert status(store, good) is status(store, also_good) is JobStatus.SUCCEEDED
    failed = store.get(poison.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.code is ErrorCode.GENERATION_FAILED
    assert "breaks the pipeline" in failed.error.message
    # Run alone after the batch failed: each says so.
    assert store.get(good.id).metrics.batch_images == 1  # type: ignore[union-attr]


class OutOfMemoryEngine(GenerationEngine):
    """The real engine on a device that runs out of memory for batches, and for any job
    asking for more than one image (torch raises the error from inside the pipeline)."""

    def generate(self, plan: JobPlan, *args, **kwargs):
        if plan.num_images > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().generate(plan, *args, **kwargs)

    def generate_batch(self, plans, on_steps):
        if len(plans) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return super().generate_batch(plans, on_steps)


def test_out_of_memory_fails_the_job_and_the_worker_goes_on_serving(
    engine, store, settings
) -> None:
    runtime = make_runtime(OutOfMemoryEngine(engine.models), store,
                           settings.model_copy(update={"max_batch": 1}))
    too_big = submit(store, num_images=2)
    run_job(too_big.id, runtime)
    failed = store.get(too_big.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.code is ErrorCode.OUT_OF_MEMORY
    assert "out of memory" in failed.error.message
    fits = submit(store)
    run_job(fits.id, runtime)
    assert status(store, fits) is JobStatus.SUCCEEDED


def test_a_batch_too_big_for_the_device_runs_job_by_job_and_later_batches_are_smaller(
    engine, store, settings
) -> None:
    runtime = make_runtime(OutOfMemoryEngine(engine.models), store, settings)
    jobs = four_jobs(store)
    run_job(jobs[0].id, runtime)
    assert [status(store, job) for job in jobs] == [JobStatus.SUCCEEDED] * 4
    assert runtime.max_batch == 2  # halved: 4 images did not fit
    later = four_jobs(store)
    run_job(later[0].id, runtime)
    assert [status(store, job) for job in later] == [JobStatus.SUCCEEDED] * 2 + [
        JobStatus.QUEUED] * 2
    assert runtime.max_batch == 1  # 2 did not fit either: this worker now runs jobs alone


class TimingOutEngine(GenerationEngine):
    def generate_batch(self, plans, on_steps):
        raise SoftTimeLimitExceeded()


def test_the_soft_time_limit_fails_every_job_of_the_batch_as_timeout(
    engine, store, settings
) -> None:
    runtime = make_runtime(TimingOutEngine(engine.models), store, settings)
    jobs = four_jobs(store)
    run_job(jobs[0].id, runtime)
    for job in jobs:
        done = store.get(job.id)
        assert done is not None and done.status is JobStatus.FAILED
        assert done.error is not None and done.error.code is ErrorCode.TIMEOUT


def test_a_run_with_companions_waits_for_more_up_to_the_batch_wait(
    engine, store, settings
) -> None:
    runtime = make_runtime(engine, store, settings.model_copy(
        update={"max_batch": 3, "batch_wait_ms": 5000}))
    first, second = submit(store, seed=1), submit(store, seed=2)
    late: list[JobRecord] = []
    submitter = threading.Timer(0.2, lambda: late.append(submit(store, seed=3)))
    submitter.start()
    started = time.monotonic()
    run_job(first.id, runtime)
    submitter.join()
    assert status(store, second) is JobStatus.SUCCEEDED
    assert status(store, late[0]) is JobStatus.SUCCEEDED
    assert store.get(first.id).metrics.batch_images == 3  # type: ignore[union-attr]
    assert time.monotonic() - started < 5  # a full batch stops waiting


def test_a_run_alone_does_not_wait_for_companions(engine, store, settings) -> None:
    runtime = make_runtime(engine, store, settings.model_copy(
        update={"max_batch": 2, "batch_wait_ms": 5000}))
    first = submit(store, seed=1)
    late: list[JobRecord] = []
    submitter = threading.Timer(0.5, lambda: late.append(submit(store, seed=2)))
    submitter.start()
    run_job(first.id, runtime)
    ran_alone = store.get(first.id)
    submitter.join()
    assert ran_alone is not None and ran_alone.status is JobStatus.SUCCEEDED
    assert ran_alone.metrics.batch_images == 1
    assert status(store, late[0]) is JobStatus.QUEUED  # left for its own task
