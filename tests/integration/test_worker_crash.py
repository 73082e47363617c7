"""A worker process killed mid-job loses nothing: the task is redelivered and the job rerun."""

from __future__ import annotations

import os
import signal
import time

import redis

from shared.heartbeat import live_workers
from tests.integration.conftest import Service


def serving_pid(client: redis.Redis, timeout: float = 60) -> int:
    """The pid of the worker process that holds tiny-random (from its heartbeat)."""
    deadline = time.monotonic() + timeout
    while not (names := live_workers(client, "tiny-random")):
        assert time.monotonic() < deadline, "no live worker"
        time.sleep(0.2)
    return int(names[0].rsplit("-", 1)[1])


def test_killed_worker_process_job_runs_again_and_succeeds(service: Service) -> None:
    client = redis.Redis.from_url(service.redis_url)
    victim = serving_pid(client)
    # Held mid-run by the test's gate; the rerun is held again at its first step.
    job_id = service.submit_held({"prompt": "crash", "steps": 4, "num_images": 2, "seed": 11})
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while service.client.get(f"/v1/jobs/{job_id}").json()["attempts"] < 2:
        assert time.monotonic() < deadline, "the job was not run again"
        time.sleep(0.1)
    service.release(job_id)

    job = service.wait(job_id, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    assert len(job["images"]) == 2
    # The replacement process took over serving (its heartbeat names a new pid).
    deadline = time.monotonic() + 30
    while serving_pid(client) == victim:
        assert time.monotonic() < deadline
        time.sleep(0.2)
