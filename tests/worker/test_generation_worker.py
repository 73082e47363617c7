"""A real ``celery -A worker.generation_worker worker`` process: models load in the forked
child, the heartbeat announces it, a published task runs, shutdown withdraws the heartbeat.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import redis

from scripts.process_commands import GENERATION_WORKER, service_commands
from scripts.service_processes import start_process, stop_process
from shared.celery_app import GENERATE_TASK, make_celery
from shared.heartbeat import live_workers
from shared.jobstore import JobStore
from shared.model_registry import queue_for_model
from shared.schemas import JobStatus
from shared.settings import Settings
from shared.storage import LocalStorage, image_key
from tests.factories import make_plan, make_record

REPO = Path(__file__).resolve().parents[2]


def wait_for(condition, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; worker log:\n{log.read_text()}")
        time.sleep(0.1)
    return result


def test_worker_process_serves_the_model_it_loaded_after_forking(
    redis_server: str, tmp_path: Path
) -> None:
    # Its own database: other tests flush theirs, this one must keep the queue bindings.
    redis_url = redis_server.rsplit("/", 1)[0] + "/7"
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    log = tmp_path / "worker.log"
    env = {**os.environ, "LATENTD_REDIS_URL": redis_url, "LATENTD_DATA_DIR": str(settings.data_dir),
           "LATENTD_TORCH_THREADS": "1", "LATENTD_DEFAULT_MODEL": "tiny-random"}
    command = service_commands(sys.executable, host="127.0.0.1", port=0,
                               node_tag=f"test-{os.getpid()}")[GENERATION_WORKER]
    worker = start_process([*command, "--without-gossip", "--without-mingle"], env, log)
    try:
        [name] = wait_for(lambda: live_workers(client, "tiny-random"), 90, "a heartbeat", log)
        # The heartbeat names the process that holds the weights: the child, not the parent.
        assert int(name.rsplit("-", 1)[1]) != worker.pid

        store = JobStore(client, settings)
        job, _ = store.create(make_record(request=make_plan(seed=5)))
        make_celery(settings).send_task(GENERATE_TASK, args=[job.id],
                                        queue=queue_for_model("tiny-random"))
        done = wait_for(lambda: (j := store.get(job.id)).status.is_terminal() and j, 60,
                        "the job to finish", log)
        assert done.status is JobStatus.SUCCEEDED, done.error
        assert LocalStorage(settings.images_dir).get(image_key(job.id, 0, "png"))[:4] == b"\x89PNG"
    finally:
        stop_process(worker)
    # A clean shutdown withdraws the heartbeat instead of waiting for it to expire.
    assert live_workers(client, "tiny-random") == [], log.read_text()
