"""The real service for integration tests: its own redis-server, a generation worker and a
webhook worker (real Celery processes), and the API served by uvicorn, all over HTTP
(started by scripts/service_processes.py, which the benchmarks share).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from scripts.service_processes import running_service
from tests.integration.gate import HOLD_METADATA_KEY, release_key

# tiny-random registered a second time as a guidance-distilled model, so the suite can
# submit to a model that takes no negative prompt.
DISTILLED_MODEL = "tiny-distilled"
SERVICE_ENV = {
    "LATENTD_MODELS": json.dumps(
        {DISTILLED_MODEL: {"source": "builtin:tiny-random", "guidance": "distilled"}}),
    "LATENTD_WORKER_MODELS": f"tiny-random,{DISTILLED_MODEL}",
}


@dataclass
class Service:
    url: str
    redis_url: str
    data_dir: Path
    webhook_secret: str
    client: httpx.Client

    def submit(self, body: dict, headers: dict | None = None) -> dict:
        response = self.client.post("/v1/jobs", json=body, headers=headers or {})
        assert response.status_code == 202, response.text
        return response.json()

    def wait(self, job_id: str, timeout: float = 60) -> dict:
        """Poll until the job is terminal; returns the job."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(0.05)

    def run(self, body: dict, timeout: float = 60) -> dict:
        job = self.wait(self.submit(body)["id"], timeout)
        assert job["status"] == "succeeded", job
        return job

    def submit_held(self, body: dict) -> str:
        """Submit a job the worker holds after its first step; returns its id once held."""
        job_id = self.submit({**body, "metadata": {HOLD_METADATA_KEY: True}})["id"]
        deadline = time.monotonic() + 60
        while True:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == "running" and job["progress"]["step"] >= 1:
                return job_id
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline, f"{job_id} never started"
            time.sleep(0.02)

    def release(self, job_id: str) -> None:
        """Let a held job go on (the gate sees a cancel issued meanwhile at once)."""
        redis.Redis.from_url(self.redis_url).rpush(release_key(job_id), 1)

    def image(self, job: dict, index: int = 0) -> bytes:
        response = self.client.get(f"/v1/jobs/{job['id']}/images/{index}")
        assert response.status_code == 200, response.text
        return response.content


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("service"), SERVICE_ENV,
                         generation_app="tests.integration.gated_worker") as processes:
        client = httpx.Client(base_url=processes.url, timeout=30)
        try:
            yield Service(processes.url, processes.redis_url, processes.data_dir,
                          processes.webhook_secret, client)
        finally:
            client.close()
