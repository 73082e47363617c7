"""The generation task against a real redis-server job store, local storage and tiny-random."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.jobstore import JobStore
from shared.records import JobInputs, JobRecord, public_job
from shared.schemas import EventType, JobPlan, JobStatus
from shared.settings import Settings
from shared.storage import LocalStorage, image_key, input_key, job_prefix
from tests.factories import make_plan, make_record
from tests.job_events import Listener
from worker import tasks
from worker.engine import GenerationEngine
from worker.heartbeat import Heartbeat
from worker.model_cache import ModelCache
from worker.pipelines import ModelLoadError
from worker.tasks import ProgressReporter, WorkerRuntime, run_job


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", torch_threads=1)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)


@pytest.fixture
def runtime(engine: GenerationEngine, store: JobStore, settings: Settings) -> WorkerRuntime:
    return WorkerRuntime(store, LocalStorage(settings.images_dir), settings, engine)


def submit(store: JobStore, plan: JobPlan | None = None, job_id: str | None = None,
           inputs: JobInputs | None = None, **overrides: object) -> JobRecord:
    record = make_record(owner="alice", request=plan or make_plan(**overrides),
                         inputs=inputs or JobInputs(),
                         **({"id": job_id} if job_id else {}))
    stored, created = store.create(record)
    assert created
    return stored


def stored_bytes(runtime: WorkerRuntime, job_id: str, index: int = 0, ext: str = "png") -> bytes:
    return runtime.storage.get(image_key(job_id, index, ext))


def subscribe(store: JobStore, job_id: str) -> Listener:
    return Listener(store._redis, job_id)


def test_job_succeeds_with_images_seeds_urls_and_metrics(runtime, store) -> None:
    job = submit(store, num_images=2, seed=40, width=64, height=48)
    channel = subscribe(store, job.id)
    run_job(job.id, runtime)

    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.error is None
    assert [(i.index, i.seed, i.format) for i in done.images] == [(0, 40, "png"), (1, 41, "png")]
    assert all((i.width, i.height) == (64, 48) for i in done.images)
    # The worker records formats, never URLs; the public view builds them.
    assert [i.url for i in public_job(done).images] == [
        f"/v1/jobs/{job.id}/images/0", f"/v1/jobs/{job.id}/images/1"]
    png = Image.open(io.BytesIO(stored_bytes(runtime, job.id, 1)))
    assert png.size == (64, 48) and "Seed: 41" in png.text["parameters"]
    metrics = done.metrics
    assert 0 <= metrics.queue_seconds <= metrics.total_seconds
    assert 0 < metrics.inference_seconds <= metrics.total_seconds

    events = channel.drain()
    types = [event.type for event in events]
    assert types[0] == EventType.STARTED and types[-1] == EventType.COMPLETED
    assert EventType.PROGRESS in types
    assert events[-1].job == done  # the event carries the job as written
    assert done.progress.step == done.progress.total_steps == 4


def test_a_redelivered_job_writes_the_same_keys_and_bytes(runtime, store) -> None:
    first = submit(store, seed=3)
    run_job(first.id, runtime)
    original = stored_bytes(runtime, first.id)

    # A worker died mid-job: the broker redelivers and the job is still "running".
    second = submit(store, seed=3)
    assert store.mark_running(second.id) is not None
    run_job(second.id, runtime)
    assert store.get(second.id).status is JobStatus.SUCCEEDED
    assert store.get(second.id).attempts == 2
    assert stored_bytes(runtime, second.id) == original


def test_a_finished_job_is_not_run_again(runtime, store) -> None:
    job = submit(store)
    run_job(job.id, runtime)
    finished = store.get(job.id)
    runtime.storage.delete_prefix(job_prefix(job.id))
    run_job(job.id, runtime)
    assert store.get(job.id).model_dump() == finished.model_dump()
    with pytest.raises(KeyError):
        stored_bytes(runtime, job.id)


def test_unknown_job_is_skipped(runtime, store) -> None:
    missing = "job_" + "0" * 24
    run_job(missing, runtime)
    assert store.get(missing) is None


def test_other_formats_are_stored_under_their_extension(runtime, store) -> None:
    job = submit(store, output_format="webp")
    run_job(job.id, runtime)
    [info] = store.get(job.id).images
    assert info.format == "webp"
    assert Image.open(io.BytesIO(stored_bytes(runtime, job.id, 0, "webp"))).format == "WEBP"


def test_image_tasks_read_their_inputs_from_storage(runtime, store) -> None:
    job_id = store.new_job_id()
    # The API stores the inputs under the job's prefix and names the keys in the params.
    for name, image in (("init", Image.new("RGB", (64, 64), (10, 200, 30))),
                        ("mask", Image.new("L", (64, 64), 255))):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        runtime.storage.put(input_key(job_id, name), buffer.getvalue(), "image/png")
    submit(store, make_plan(task="inpaint", strength=0.75), job_id=job_id,
           inputs=JobInputs(init_image_key=input_key(job_id, "init"),
                            mask_image_key=input_key(job_id, "mask")))
    run_job(job_id, runtime)
    done = store.get(job_id)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert "Denoising strength: 0.75" in Image.open(
        io.BytesIO(stored_bytes(runtime, job_id))).text["parameters"]


def test_missing_input_image_fails_the_job_clearly(runtime, store) -> None:
    job_id = store.new_job_id()
    submit(store, make_plan(task="image-to-image", strength=0.5), job_id=job_id,
           inputs=JobInputs(init_image_key=input_key(job_id, "init")))
    run_job(job_id, runtime)
    done = store.get(job_id)
    assert done.status is JobStatus.FAILED
    assert done.error.code == "generation_failed" and "missing" in done.error.message


def test_engine_refusal_fails_the_job_with_its_message(runtime, store) -> None:
    job = submit(store, make_plan(model="not-loaded-here"))
    run_job(job.id, runtime)
    done = store.get(job.id)
    assert done.status is JobStatus.FAILED
    assert "model 'not-loaded-here' is not loaded" in done.error.message


def runtime_where_user_acts_on_first_progress(
    runtime: WorkerRuntime, settings: Settings, action: str
) -> WorkerRuntime:
    """The real store, with a user calling ``store.<action>(job_id)`` once progress shows."""

    class UserActsOnProgress(JobStore):
        def update_progress(self, job_id: str, step: int, total_steps: int, eta, worker=None):
            written = super().update_progress(job_id, step, total_steps, eta, worker)
            getattr(self, action)(job_id)
            return written

    store = UserActsOnProgress(runtime.store._redis, settings)
    return WorkerRuntime(store, runtime.storage, settings, runtime.engine)


def test_cancel_while_running_stops_within_a_step(runtime, settings) -> None:
    runtime = runtime_where_user_acts_on_first_progress(runtime, settings, "request_cancel")
    job = submit(runtime.store, steps=30)
    run_job(job.id, runtime)
    done = runtime.store.get(job.id)
    assert done.status is JobStatus.CANCELED
    assert done.progress.step == 1 and done.progress.total_steps == 30
    assert done.images == []
    with pytest.raises(KeyError):
        stored_bytes(runtime, job.id)


def test_a_job_deleted_while_running_leaves_no_images(runtime, settings) -> None:
    runtime = runtime_where_user_acts_on_first_progress(runtime, settings, "delete")
    job = submit(runtime.store, steps=3)
    run_job(job.id, runtime)
    assert runtime.store.get(job.id) is None
    with pytest.raises(KeyError):
        stored_bytes(runtime, job.id)


def test_cancel_flag_set_before_the_run_skips_generation(runtime, store) -> None:
    job = submit(store)
    store.mark_running(job.id)  # the first worker died after claiming it...
    store.request_cancel(job.id)  # ...and the user canceled meanwhile
    run_job(job.id, runtime)
    done = store.get(job.id)
    assert done.status is JobStatus.CANCELED and done.progress.step == 0


class TimingOutEngine(GenerationEngine):
    def generate(self, *args, **kwargs):
        raise SoftTimeLimitExceeded()


def test_soft_time_limit_fails_the_job_as_timeout(runtime, store, settings) -> None:
    runtime = WorkerRuntime(store, runtime.storage, settings, TimingOutEngine({}))
    job = submit(store)
    run_job(job.id, runtime)
    done = store.get(job.id)
    assert done.status is JobStatus.FAILED
    assert done.error.code == "timeout" and str(settings.task_soft_time_limit) in done.error.message


def test_progress_is_throttled_but_first_and_last_steps_always_publish(store) -> None:
    job = submit(store)
    store.mark_running(job.id)
    channel = subscribe(store, job.id)
    report = ProgressReporter(store, job.id, min_interval=60)
    assert [report(step, 10) for step in range(1, 11)] == [False] * 10
    progress = [e.job.progress for e in channel.drain() if e.type is EventType.PROGRESS]
    assert [(p.step, p.total_steps) for p in progress] == [(1, 10), (10, 10)]
    assert progress[-1].eta_seconds == 0
    store.request_cancel(job.id)
    assert report(11, 12) is True


def test_celery_task_runs_the_job_with_the_installed_runtime(runtime, store) -> None:
    job = submit(store)
    tasks.install_runtime(runtime)
    try:
        tasks.generate.apply(args=[job.id]).get()
    finally:
        tasks._runtime = None
    assert store.get(job.id).status is JobStatus.SUCCEEDED


def test_a_worker_without_models_fails_the_queued_job_directly(runtime, store) -> None:
    job = submit(store)
    channel = subscribe(store, job.id)
    broken = WorkerRuntime(store, runtime.storage, runtime.settings, engine=None,
                           load_error="CUDA out of memory")
    run_job(job.id, broken)
    done = store.get(job.id)
    assert done.status is JobStatus.FAILED
    assert done.error.code == "model_unavailable" and "CUDA out of memory" in done.error.message
    # No spurious transition: never started, no attempt used, one completed event.
    assert done.started_at is None and done.attempts == 0
    assert [e.type for e in channel.drain()] == [EventType.COMPLETED]


def test_the_task_refuses_to_run_without_a_runtime(store) -> None:
    job = submit(store)
    with pytest.raises(RuntimeError, match="no worker runtime"):
        tasks.generate.apply(args=[job.id]).get()
    assert store.get(job.id).status is JobStatus.QUEUED


# -- claims: a run is the job's only while its claim stands ---------------------------


def runtime_with_heartbeat(runtime: WorkerRuntime, store: JobStore, worker: str = "w-test"
                           ) -> WorkerRuntime:
    heartbeat = Heartbeat(store._redis, ["tiny-random"], worker)  # not started: beat by hand
    return WorkerRuntime(store, runtime.storage, runtime.settings, runtime.engine,
                         heartbeat=heartbeat)


class RecordingStorage(LocalStorage):
    """Local storage that remembers every key written."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.written: list[str] = []

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.written.append(key)
        super().put(key, data, content_type)


def runtime_where_something_happens_on_first_progress(
    runtime: WorkerRuntime, settings: Settings, action
) -> tuple[WorkerRuntime, list[int]]:
    """The real store and a recording storage; ``action(store, job_id)`` runs once, after
    the first progress is written. Also returns the steps the run reported."""
    steps: list[int] = []

    class ActsOnProgress(JobStore):
        def update_progress(self, job_id: str, step: int, total_steps: int, eta, worker=None):
            written = super().update_progress(job_id, step, total_steps, eta, worker)
            steps.append(step)
            if len(steps) == 1:
                action(self, job_id)
            return written

    store = ActsOnProgress(runtime.store._redis, settings)
    storage = RecordingStorage(settings.images_dir)
    heartbeat = Heartbeat(store._redis, ["tiny-random"], "w-test")
    return WorkerRuntime(store, storage, settings, runtime.engine, heartbeat=heartbeat), steps


def test_the_job_is_claimed_under_the_worker_name_and_the_beats_name_it_while_it_runs(
    runtime, store
) -> None:
    runtime = runtime_with_heartbeat(runtime, store)
    seen: list[str] = []

    class Watching(JobStore):
        def update_progress(self, job_id, step, total_steps, eta, worker=None):
            seen.append(runtime.heartbeat.job)
            assert self._redis.hget(f"latentd:job:{job_id}", "worker") == "w-test"
            return super().update_progress(job_id, step, total_steps, eta, worker)

    runtime.store = Watching(store._redis, runtime.settings)
    job = submit(store)
    run_job(job.id, runtime)
    assert store.get(job.id).status is JobStatus.SUCCEEDED
    assert seen and set(seen) == {job.id}
    assert runtime.heartbeat.job == ""  # idle again


def test_a_job_deleted_while_running_stops_at_the_next_step_and_writes_no_image(
    runtime, settings
) -> None:
    runtime, steps = runtime_where_something_happens_on_first_progress(
        runtime, settings, lambda store, job_id: store.delete(job_id))
    job = submit(runtime.store, steps=30)
    run_job(job.id, runtime)
    assert steps == [1]  # stopped right there, not after 30 steps
    assert runtime.store.get(job.id) is None
    assert runtime.storage.written == []


def test_a_job_claimed_by_another_worker_mid_run_is_left_to_it(runtime, settings) -> None:
    runtime, steps = runtime_where_something_happens_on_first_progress(
        runtime, settings, lambda store, job_id: store.mark_running(job_id, "w-other"))
    job = submit(runtime.store, steps=30)
    run_job(job.id, runtime)
    assert steps == [1]
    taken = runtime.store.get(job.id)
    # Still the other worker's run: not canceled, not failed, no images, its progress.
    assert taken.status is JobStatus.RUNNING and taken.attempts == 2
    assert taken.progress.step == 0 and taken.images == []
    assert runtime.storage.written == []


def test_a_job_taken_back_by_the_reaper_mid_run_stays_queued(runtime, settings) -> None:
    runtime, steps = runtime_where_something_happens_on_first_progress(
        runtime, settings, lambda store, job_id: store.reclaim(job_id))  # no beat: "dead"
    job = submit(runtime.store, steps=30)
    run_job(job.id, runtime)
    assert steps == [1]
    requeued = runtime.store.get(job.id)
    assert requeued.status is JobStatus.QUEUED and requeued.error is None
    assert runtime.storage.written == []


def test_a_late_finish_of_a_run_that_lost_its_job_changes_nothing(runtime, store) -> None:
    runtime = runtime_with_heartbeat(runtime, store)

    class LosesTheJobAtTheEnd(JobStore):
        def mark_succeeded(self, job_id, images, metrics, worker=None):
            self.mark_running(job_id, "w-other")  # e.g. redelivered while VAE-decoding
            return super().mark_succeeded(job_id, images, metrics, worker)

    runtime.store = LosesTheJobAtTheEnd(store._redis, runtime.settings)
    job = submit(store)
    run_job(job.id, runtime)
    taken = store.get(job.id)
    assert taken.status is JobStatus.RUNNING and taken.images == []
    # The images stay: the run that owns the job now writes the very same keys.
    assert stored_bytes(runtime, job.id)


def test_a_model_that_fails_to_load_on_demand_fails_its_job_as_unavailable(
    runtime, store, tiny_model
) -> None:
    def load(name: str):
        if name == "tiny-random":
            return tiny_model
        raise ModelLoadError(f"model '{name}': directory '/models/gone' does not exist")

    # A budget that fits one: tiny-random is loaded, the other model loads on demand.
    models = ModelCache(["tiny-random", "tiny-b"], load, budget_bytes=10**9)
    models.preload()
    cached = WorkerRuntime(store, runtime.storage, runtime.settings,
                           GenerationEngine(models), models=models)
    job = submit(store, plan=make_plan(model="tiny-b"))
    run_job(job.id, cached)
    done = store.get(job.id)
    assert done.status is JobStatus.FAILED and done.error.code == "model_unavailable"
    assert "/models/gone" in done.error.message
    # tiny-b's size was unknown, so tiny-random made room before the load failed; the next
    # job for it loads it again and runs.
    assert models.loaded == []
    ok = submit(store)
    run_job(ok.id, cached)
    assert store.get(ok.id).status is JobStatus.SUCCEEDED and models.loaded == ["tiny-random"]
    # The next job for tiny-b, soon after, fails at once with the same reason and costs
    # tiny-random nothing.
    again = submit(store, plan=make_plan(model="tiny-b"))
    run_job(again.id, cached)
    failed = store.get(again.id)
    assert failed.error is not None and failed.error.code == "model_unavailable"
    assert "failed to load" in failed.error.message and "/models/gone" in failed.error.message
    assert models.loaded == ["tiny-random"]
