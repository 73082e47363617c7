"""A worker serving two models with a memory budget that fits one, through the real
service (redis-server, Celery workers, the API over HTTP): jobs alternating between the
models all succeed, the worker holds and reports one model at a time, the consumer reads
the loaded model's queue first, and eviction leaves finished jobs as they were.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime

import httpx
import pytest
import redis
from PIL import Image

from scripts.process_commands import node_name
from scripts.service_processes import ServiceProcesses, running_service
from shared.celery_app import make_celery
from shared.metrics import read_worker_stats
from shared.settings import Settings
from tests.integration.conftest import Service

SECOND_MODEL = "tiny-b"
MODELS = ["tiny-random", SECOND_MODEL]
# tiny-random holds about 5 MB of float32 weights: 8 MB fits one of the two, not both.
BUDGET = "8MB"
ENV = {
    "LATENTD_MODELS": json.dumps({SECOND_MODEL: {
        "source": "builtin:tiny-random", "min_width": 24, "min_height": 24,
        "default_width": 64, "default_height": 64, "default_steps": 2}}),
    "LATENTD_WORKER_MODELS": ",".join(MODELS),
    "LATENTD_WORKER_MEMORY_BUDGET": BUDGET,
}


# Two callers, so that two jobs can wait at the same queue level (a caller's second queued
# job is placed behind its first: fair share, shared/priorities.py).
KEYS = {"alice": "alice-secret-0123456789", "bob": "bob-secret-0123456789"}


@dataclass
class BudgetService:
    alice: Service
    bob: Service
    processes: ServiceProcesses


@pytest.fixture(scope="module")
def budget_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BudgetService]:
    workdir = tmp_path_factory.mktemp("budget")
    keys_file = workdir / "keys"
    keys_file.write_text("".join(f"{name} {secret}\n" for name, secret in KEYS.items()))
    env = {**ENV, "LATENTD_API_KEYS_FILE": str(keys_file)}
    with (running_service(workdir, env, node_tag="budget",
                          generation_app="tests.integration.gated_worker") as processes,
          ExitStack() as clients):
        services = {
            name: Service(processes.url, processes.redis_url, processes.data_dir,
                          processes.webhook_secret, clients.enter_context(httpx.Client(
                              base_url=processes.url, timeout=30,
                              headers={"X-API-Key": secret})))
            for name, secret in KEYS.items()}
        yield BudgetService(services["alice"], services["bob"], processes)


def job_body(model: str, seed: int) -> dict:
    return {"prompt": "a cat", "model": model, "width": 32, "height": 32, "steps": 2,
            "seed": seed}


def worker_loaded(redis_url: str) -> tuple[str, ...]:
    [stats] = read_worker_stats(redis.Redis.from_url(redis_url)).values()
    assert stats.models == tuple(MODELS)
    assert stats.loaded_models is not None
    return stats.loaded_models


def loaded_workers(service: Service) -> dict[str, int]:
    models = service.client.get("/v1/models").json()
    return {m["name"]: m["loaded_workers"] for m in models if m["name"] in MODELS}


def consumed_queues(processes: ServiceProcesses) -> list[str]:
    """The generation worker's queues, in the order its consumer reads them."""
    app = make_celery(Settings(redis_url=processes.redis_url))
    node = node_name("gen", "budget").replace("%h", socket.gethostname())
    replies = app.control.inspect([node], timeout=5, limit=1).active_queues() or {}
    return [queue["name"] for queue in replies[node]]


def eventually(condition, what: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def test_jobs_alternating_between_models_load_one_at_a_time(
    budget_service: BudgetService,
) -> None:
    service, processes = budget_service.alice, budget_service.processes
    # At start the first served model is loaded and its queue read first.
    assert worker_loaded(service.redis_url) == ("tiny-random",)
    assert loaded_workers(service) == {"tiny-random": 1, SECOND_MODEL: 0}
    models = {m["name"]: m for m in service.client.get("/v1/models").json()}
    assert all(models[name]["available"] and models[name]["workers"] == 1 for name in MODELS)

    finished: dict[str, dict] = {}
    for round_, model in enumerate([SECOND_MODEL, "tiny-random", SECOND_MODEL, "tiny-random"]):
        job = service.run(job_body(model, seed=round_))
        assert job["request"]["model"] == model
        finished[job["id"]] = job
        other = next(name for name in MODELS if name != model)
        # Announced at the load itself, not at the next heartbeat.
        assert worker_loaded(service.redis_url) == (model,)
        assert loaded_workers(service) == {model: 1, other: 0}
        order = [f"gen.{model}", f"gen.{other}"]
        eventually(lambda order=order: consumed_queues(processes) == order,
                   f"gen.{model} to be read first")

    # Every finished job reads as it did when it finished, its images still there, though
    # its model has been evicted (and loaded again) since.
    for job_id, job in finished.items():
        assert service.client.get(f"/v1/jobs/{job_id}").json() == job
        assert service.image(job)[:4] == b"\x89PNG"
    # A model evicted and loaded again draws the same picture for the same request.
    first_b, first_random = (pixels_of(service.image(job)) for job in list(finished.values())[:2])
    assert service.image(service.run(job_body(SECOND_MODEL, 0))) != first_random
    assert pixels_of(service.image(service.run(job_body("tiny-random", 1)))) == first_random
    assert pixels_of(service.image(service.run(job_body(SECOND_MODEL, 0)))) == first_b


def pixels_of(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB").tobytes()


def test_waiting_jobs_of_the_loaded_model_run_first(budget_service: BudgetService) -> None:
    service, processes = budget_service.alice, budget_service.processes
    # The second served model, loaded: its queue, last at start, is now read first.
    service.run(job_body(SECOND_MODEL, 1))
    eventually(lambda: consumed_queues(processes)[0] == f"gen.{SECOND_MODEL}", "the new order")
    held = service.submit_held(job_body(SECOND_MODEL, 2))
    # Queued while the worker is busy, at the same level (each its caller's first queued
    # job): the other model's job first, then the loaded one's.
    cold = budget_service.bob.submit(job_body("tiny-random", 3))["id"]
    hot = service.submit(job_body(SECOND_MODEL, 4))["id"]
    service.release(held)
    jobs = {job_id: caller.wait(job_id) for job_id, caller in
            ((held, service), (cold, budget_service.bob), (hot, service))}
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    started = {job_id: datetime.fromisoformat(job["started_at"]) for job_id, job in jobs.items()}
    assert started[held] < started[hot] < started[cold]
    assert worker_loaded(service.redis_url) == ("tiny-random",)
