"""The reaper against a real redis-server (job store and broker): which running jobs it
takes back, that a re-queued job's task is published again, and that the app runs it."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.main import create_app
from api.services.reaper import reap_stalled_jobs
from shared.celery_app import make_celery
from shared.heartbeat import beat
from shared.jobstore import JobStore
from shared.jobstore.keys import RUNNING_KEY
from shared.records import JobRecord
from shared.schemas import ErrorCode, JobStatus, Priority
from shared.settings import Settings
from tests.api.conftest import queued_tasks, task_job_ids
from tests.factories import make_plan, make_record


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", default_model="tiny-random",
                    task_max_attempts=2, reaper_interval_seconds=0.1)


@pytest.fixture
def store(redis_client: redis.Redis, settings: Settings) -> JobStore:
    """A store of its own: no app is started, so no reaper runs behind the test's back."""
    return JobStore(redis_client, settings)


@pytest.fixture
def celery(settings: Settings):
    return make_celery(settings)


def job_ids(message: dict) -> list[str]:
    """A task message's arguments: the job id and nothing else."""
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert message["headers"]["task"] == "latentd.generate" and kwargs == {}
    return args


def running_job(store: JobStore, worker: str, priority: Priority = Priority.NORMAL
                ) -> JobRecord:
    job, _ = store.create(make_record(request=make_plan(priority=priority)))
    claimed = store.mark_running(job.id, worker)
    assert claimed is not None
    return claimed


def test_a_dead_workers_job_is_queued_again_with_its_task_published_to_its_queue(
    store: JobStore, celery, broker: redis.Redis
) -> None:
    urgent = running_job(store, "dead-1", Priority.HIGH)
    normal = running_job(store, "dead-2")
    reaped = reap_stalled_jobs(store, celery)
    assert sorted(j.id for j in reaped) == sorted([urgent.id, normal.id])
    assert all(j.status is JobStatus.QUEUED for j in reaped)
    assert store.get(urgent.id).status is JobStatus.QUEUED
    # Only the id crosses the queue, to the model's queue at the job's level (the first of
    # its priority's band here: the records chose none).
    tasks = queued_tasks(broker)
    assert sorted(tasks) == ["gen.tiny-random", "gen.tiny-random:3"]
    assert [job_ids(t) for t in tasks["gen.tiny-random"]] == [[urgent.id]]
    assert [job_ids(t) for t in tasks["gen.tiny-random:3"]] == [[normal.id]]
    assert sorted(task_job_ids(broker)) == sorted([urgent.id, normal.id])
    # Taken back once: the next round finds nothing.
    assert reap_stalled_jobs(store, celery) == []
    assert len(task_job_ids(broker)) == 2


def test_a_job_out_of_attempts_fails_worker_lost_and_is_not_published(
    store: JobStore, celery, broker: redis.Redis
) -> None:
    job = running_job(store, "dead-1")
    store.mark_running(job.id, "dead-2")  # both attempts used
    [failed] = reap_stalled_jobs(store, celery)
    assert failed.status is JobStatus.FAILED and failed.error.code is ErrorCode.WORKER_LOST
    assert queued_tasks(broker) == {}


def test_a_job_past_the_hard_limit_fails_timeout_and_is_not_published(
    store: JobStore, celery, broker: redis.Redis, redis_client: redis.Redis, settings: Settings
) -> None:
    job = running_job(store, "hung")
    beat(redis_client, "tiny-random", "hung", ttl_seconds=60, job_id=job.id)  # alive, but stuck
    claimed = redis_client.zscore(RUNNING_KEY, job.id)
    assert reap_stalled_jobs(store, celery, now=claimed + settings.task_time_limit) == []
    late = claimed + settings.task_time_limit + settings.reaper_grace_seconds + 1
    [failed] = reap_stalled_jobs(store, celery, now=late)
    assert failed.status is JobStatus.FAILED and failed.error.code is ErrorCode.TIMEOUT
    assert queued_tasks(broker) == {}


def test_a_live_worker_within_the_limit_keeps_its_job(
    store: JobStore, celery, broker: redis.Redis, redis_client: redis.Redis
) -> None:
    job = running_job(store, "busy")
    beat(redis_client, "tiny-random", "busy", ttl_seconds=60, job_id=job.id)
    assert reap_stalled_jobs(store, celery) == []
    assert store.get(job.id) == job
    assert queued_tasks(broker) == {}


class UnreachableQueue:
    def send_task(self, *args, **kwargs):
        raise ConnectionError("broker down")


def test_a_job_whose_task_cannot_be_published_again_fails_enqueue_failed(
    store: JobStore
) -> None:
    job = running_job(store, "dead")
    [failed] = reap_stalled_jobs(store, UnreachableQueue())  # type: ignore[arg-type]
    assert failed.status is JobStatus.FAILED and failed.error.code is ErrorCode.ENQUEUE_FAILED
    assert store.get(job.id) == failed


def test_the_app_runs_the_reaper_every_interval(
    settings: Settings, store: JobStore, broker: redis.Redis
) -> None:
    with TestClient(create_app(settings)):
        job = running_job(store, "dead")  # after the first round: a later one takes it
        deadline = time.monotonic() + 10
        while store.get(job.id).status is not JobStatus.QUEUED:
            assert time.monotonic() < deadline, "the reaper never took the job back"
            time.sleep(0.02)
        assert task_job_ids(broker) == [job.id]


@pytest.mark.parametrize("setting", [
    {"reaper_interval_seconds": 0}, {"reaper_interval_seconds": 601},
    {"reaper_grace_seconds": -1}, {"reaper_grace_seconds": 3601},
    {"heartbeat_interval_seconds": 0.05}, {"heartbeat_interval_seconds": 61},
])
def test_reaper_settings_out_of_range_are_refused(setting: dict) -> None:
    with pytest.raises(ValidationError, match=next(iter(setting))):
        Settings(**setting)


def test_a_dead_worker_is_noticed_within_three_beats() -> None:
    assert Settings(heartbeat_interval_seconds=2).heartbeat_ttl_seconds == 6


def test_a_job_goes_back_to_the_level_it_was_queued_at(
    store: JobStore, celery, broker: redis.Redis
) -> None:
    job, _ = store.create(make_record(queue_level=5))
    assert store.mark_running(job.id, "dead-3") is not None
    [reaped] = reap_stalled_jobs(store, celery)
    assert reaped.queue_level == 5
    assert [job_ids(t) for t in queued_tasks(broker)["gen.tiny-random:5"]] == [[job.id]]
