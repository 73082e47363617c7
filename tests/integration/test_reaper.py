"""Every job ends, through real processes: a job whose worker was deleted under it, stopped,
hung past the hard limit or killed outright is stopped, re-run or failed within seconds,
not after the broker's visibility timeout (an hour here, as by default).

The module runs its own service with short limits (soft 2 s, hard 3 s, grace 0.5 s,
heartbeats every 0.3 s, the reaper every 0.2 s) and a second generation worker, so that
a job taken back from one worker has another to run on. The limits are that short because
the gate holds a job at most 5 s (redis-py's default socket timeout ends its wait), and
the hung-worker test must see the job fail while it is still held. The tests run in file
order: the last one kills a worker for good.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from scripts.process_commands import GENERATION_WORKER, service_commands
from scripts.service_processes import running_service, start_process, stop_process
from shared.heartbeat import heartbeat_key, live_workers
from shared.jobstore import JobStore
from tests.integration.conftest import Service

GATED_WORKER = "tests.integration.gated_worker"
SOFT_LIMIT, HARD_LIMIT, GRACE = 2, 3, 0.5
HEARTBEAT_INTERVAL, REAPER_INTERVAL = 0.3, 0.2
REAPER_ENV = {
    "LATENTD_TASK_SOFT_TIME_LIMIT": str(SOFT_LIMIT),
    "LATENTD_TASK_TIME_LIMIT": str(HARD_LIMIT),
    "LATENTD_REAPER_GRACE_SECONDS": str(GRACE),
    "LATENTD_HEARTBEAT_INTERVAL_SECONDS": str(HEARTBEAT_INTERVAL),
    "LATENTD_REAPER_INTERVAL_SECONDS": str(REAPER_INTERVAL),
}
# A dead worker is noticed within its heartbeat's lifetime plus a reaper round; the rest
# is slack for a loaded 2-core machine.
RECLAIM_BOUND = 3 * HEARTBEAT_INTERVAL + REAPER_INTERVAL + 3
HELD = {"prompt": "held", "steps": 10, "seed": 7}


@dataclass
class ReaperService(Service):
    workdir: Path = Path()
    connection: redis.Redis = None  # type: ignore[assignment]

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace")
                       for path in sorted(self.workdir.glob("worker*.log")))

    def workers(self) -> list[str]:
        return live_workers(self.connection, "tiny-random")

    def claimant(self, job_id: str) -> tuple[str, int]:
        """The heartbeat name and pid of the worker process that claimed the job."""
        name = self.connection.hget(f"latentd:job:{job_id}", "worker")
        assert name, f"{job_id} names no worker"
        return name, int(name.rsplit("-", 1)[1])

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/v1/jobs/{job_id}").json()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


class Events:
    """A subscription to one job's channel, opened before the test acts on the job."""

    def __init__(self, client: redis.Redis, job_id: str):
        self._pubsub = client.pubsub()
        self._pubsub.subscribe(JobStore.channel(job_id))
        # From the confirmation on, every publish reaches us.
        while (message := self._pubsub.get_message(timeout=5)) is not None:
            if message["type"] == "subscribe":
                return
        raise AssertionError("no subscribe confirmation")

    def wait_for(self, event_type: str, timeout: float) -> dict:
        """The job as the first ``event_type`` event wrote it."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self._pubsub.get_message(timeout=left)
            if message is None or message["type"] != "message":
                continue
            event = json.loads(message["data"])
            if event["type"] == event_type:
                return event["job"]
        raise AssertionError(f"no {event_type} event within {timeout}s")

    def close(self) -> None:
        self._pubsub.close()


@pytest.fixture(scope="module")
def reaper_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReaperService]:
    workdir = tmp_path_factory.mktemp("reaper-service")
    with running_service(workdir, REAPER_ENV, node_tag="reaper",
                         generation_app=GATED_WORKER) as processes:
        # A second generation worker on the same Redis and storage, in the env the
        # harness gives the first.
        env = {
            **os.environ, "LATENTD_REDIS_URL": processes.redis_url,
            "LATENTD_DATA_DIR": str(processes.data_dir), "LATENTD_DEFAULT_MODEL": "tiny-random",
            "LATENTD_WEBHOOK_SECRET": processes.webhook_secret, "LATENTD_TORCH_THREADS": "1",
            "PYTHONUNBUFFERED": "1", **REAPER_ENV,
        }
        argv = service_commands(sys.executable, host="127.0.0.1", port=0, node_tag="reaper-b",
                                generation_app=GATED_WORKER)[GENERATION_WORKER]
        second = start_process(argv, env, workdir / "worker-b.log")
        client = httpx.Client(base_url=processes.url, timeout=30)
        connection = redis.Redis.from_url(processes.redis_url, decode_responses=True)
        service = ReaperService(processes.url, processes.redis_url, processes.data_dir,
                                processes.webhook_secret, client, workdir=workdir,
                                connection=connection)
        try:
            wait_for(lambda: len(service.workers()) == 2, 120, "two live workers")
            yield service
        finally:
            client.close()
            connection.close()
            stop_process(second)


def test_deleting_a_running_job_stops_its_run_at_the_next_step(
    reaper_service: ReaperService
) -> None:
    service = reaper_service
    job_id = service.submit_held(HELD)
    assert service.client.delete(f"/v1/jobs/{job_id}").status_code == 204
    service.release(job_id)
    # The gate asks "stop?" right after the held step: the deleted job says yes.
    wait_for(lambda: f"job {job_id}: canceled after step 1 of 10" in service.logs(), 30,
             "the run to stop")
    assert not (service.data_dir / "images" / "jobs" / job_id).exists()
    assert service.client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_a_stopped_worker_process_has_its_job_run_again_elsewhere(
    reaper_service: ReaperService
) -> None:
    service = reaper_service
    job_id = service.submit_held(HELD)
    name, pid = service.claimant(job_id)
    events = Events(service.connection, job_id)
    hard_kills = service.logs().count("Hard time limit")
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        requeued = events.wait_for("queued", RECLAIM_BOUND)
        reclaim_seconds = time.monotonic() - stopped
        print(f"\nSIGSTOP of the worker process: job queued again after {reclaim_seconds:.2f} s")
        assert requeued["status"] == "queued" and requeued["attempts"] == 1
        # The other worker runs it (held again at its first step), and it succeeds.
        wait_for(lambda: (job := service.job(job_id))["attempts"] == 2
                 and job["progress"]["step"] >= 1, 30, "the job to run again")
        assert service.claimant(job_id)[0] != name
        # Twice: the stopped process's wait on the gate is still first in line at Redis.
        service.release(job_id)
        service.release(job_id)
        job = service.wait(job_id, timeout=30)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2 and len(job["images"]) == 1
        # Celery kills the stopped process at the hard limit and acknowledges its task;
        # the job's record does not move.
        wait_for(lambda: service.logs().count("Hard time limit") > hard_kills, 30,
                 "Celery's hard time limit")
    finally:
        if pid_exists(pid):  # not killed yet: let it go on
            os.kill(pid, signal.SIGCONT)
        events.close()
    wait_for(lambda: len(service.workers()) == 2 and name not in service.workers(), 120,
             "the replacement process")
    assert service.job(job_id) == job


def test_a_job_whose_worker_cannot_stop_it_fails_timeout(reaper_service: ReaperService) -> None:
    service = reaper_service
    job_id = service.submit_held(HELD)
    name, pid = service.claimant(job_id)
    started = service.connection.zscore("latentd:running", job_id)
    events = Events(service.connection, job_id)
    # The parent enforces the time limits: stopped, it neither signals nor kills the run,
    # while the run's own process goes on beating for it.
    parent = parent_pid(pid)
    os.kill(parent, signal.SIGSTOP)
    try:
        failed = events.wait_for("completed", HARD_LIMIT + GRACE + REAPER_INTERVAL + 3)
        print(f"\nhung worker: job failed {time.time() - started:.2f} s after it started "
              f"(hard limit {HARD_LIMIT} s + grace {GRACE} s)")
        assert failed["status"] == "failed" and failed["error"]["code"] == "timeout"
        assert service.connection.get(heartbeat_key("tiny-random", name)) == job_id  # it was alive
    finally:
        os.kill(parent, signal.SIGCONT)
        events.close()
    service.release(job_id)
    # The old run ends (its beats stop naming the job), and changed nothing.
    wait_for(lambda: service.connection.get(heartbeat_key("tiny-random", name)) != job_id, 60,
             "the old run to end")
    job = service.job(job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "timeout"
    assert job["updated_at"] == failed["updated_at"] and job["images"] == []
    assert not (service.data_dir / "images" / "jobs" / job_id).exists()
    wait_for(lambda: len(service.workers()) == 2, 120, "two live workers")


def test_a_killed_worker_has_its_job_run_again_without_the_visibility_timeout(
    reaper_service: ReaperService
) -> None:
    service = reaper_service
    job_id = service.submit_held(HELD)
    name, pid = service.claimant(job_id)
    events = Events(service.connection, job_id)
    # The whole worker, parent and child: nobody is left to hand the task back.
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    killed = time.monotonic()
    try:
        requeued = events.wait_for("queued", RECLAIM_BOUND)
        print(f"\nSIGKILL of the whole worker: job queued again after "
              f"{time.monotonic() - killed:.2f} s")
        assert requeued["attempts"] == 1
    finally:
        events.close()
    wait_for(lambda: (job := service.job(job_id))["attempts"] == 2
             and job["progress"]["step"] >= 1, 30, "the job to run again")
    service.release(job_id)
    job = service.wait(job_id, timeout=30)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and len(job["images"]) == 1
    assert name not in service.workers()


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
