"""GET /metrics over the API in-process: the service-wide totals the app's own store counts,
the gauges measured at the scrape, and an answer even when Redis is away."""

from __future__ import annotations

import time

import redis
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from api.services.metrics import build_metrics_registry
from api.state import AppState
from shared.jobstore import JobStore
from shared.metrics import WorkerStats, publish_worker_stats
from shared.schemas import Metrics
from tests.metrics_scrape import Scrape

MODEL = "tiny-random"


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return Scrape(response.text)


def submit(client: TestClient, **body: object) -> str:
    response = client.post("/v1/jobs", json={"prompt": "a cat", **body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_jobs_the_api_accepts_and_cancels_are_counted(client: TestClient, store: JobStore) -> None:
    first, second = submit(client), submit(client)
    assert client.post(f"/v1/jobs/{second}/cancel").status_code == 200
    store.mark_running(first, "test-worker")  # as a worker's store, counting too, would
    store.mark_succeeded(first, [], Metrics(queue_seconds=0.2, inference_seconds=0.7,
                                            total_seconds=1.0), "test-worker")
    metrics = scrape(client)
    assert metrics.value("latentd_jobs_submitted_total", model=MODEL) == 2
    assert metrics.value("latentd_jobs_started_total", model=MODEL) == 1
    assert metrics.value("latentd_jobs_finished_total", model=MODEL, status="succeeded",
                         error_code="") == 1
    assert metrics.value("latentd_jobs_finished_total", model=MODEL, status="canceled",
                         error_code="canceled") == 1
    assert metrics.value("latentd_job_inference_seconds_count", model=MODEL) == 1
    assert metrics.value("latentd_job_inference_seconds_sum", model=MODEL) == 0.7
    assert metrics.value("latentd_job_inference_seconds_bucket", model=MODEL, le="0.5") == 0
    assert metrics.value("latentd_job_inference_seconds_bucket", model=MODEL, le="1.0") == 1
    assert metrics.value("latentd_queue_depth", model=MODEL) == 0
    assert metrics.value("latentd_redis_up") == 1
    # The whole service's, not this process's: nothing about the API process itself.
    assert not [name for name in metrics.families if not name.startswith("latentd_")]


def test_queue_gauges_see_the_longest_waiting_job_whatever_its_priority(
    client: TestClient,
) -> None:
    submit(client)
    time.sleep(0.3)
    submit(client, priority="high")  # first in the queue, but the newer
    metrics = scrape(client)
    assert metrics.value("latentd_queue_depth", model=MODEL) == 2
    assert 0.3 <= metrics.value("latentd_queue_oldest_age_seconds", model=MODEL) < 30
    assert metrics.value("latentd_jobs_running") == 0


def test_workers_and_their_memory_come_from_heartbeats_and_stats(
    client: TestClient, state: AppState
) -> None:
    # The suite's fixture beats as "test-worker" for the model; this worker also publishes.
    publish_worker_stats(state.redis, "gpu-host-7",
                         WorkerStats((MODEL,), 5_000_000, "cuda:0", 3_000, 4_000), 60)
    metrics = scrape(client)
    assert metrics.value("latentd_workers_alive", model=MODEL) == 1
    assert metrics.value("latentd_worker_resident_memory_bytes", worker="gpu-host-7") == 5e6
    assert metrics.value("latentd_worker_gpu_memory_allocated_bytes", worker="gpu-host-7",
                         device="cuda:0") == 3000
    assert metrics.value("latentd_worker_gpu_memory_reserved_bytes", worker="gpu-host-7",
                         device="cuda:0") == 4000


def test_openmetrics_when_the_scraper_asks_for_it(client: TestClient) -> None:
    response = client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_without_redis_the_scrape_still_answers_redis_up_0() -> None:
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2)
    metrics = Scrape(generate_latest(build_metrics_registry(unreachable, [MODEL])).decode())
    assert metrics.value("latentd_redis_up") == 0
    assert list(metrics.families) == ["latentd_redis_up"]
