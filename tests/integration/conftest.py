"""The real service for integration tests: its own redis-server, a generation worker and a
webhook worker (real Celery processes), and the API served by uvicorn, all over HTTP
(started by scripts/service_processes.py, which the benchmarks share).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from scripts.service_processes import running_service


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

    def image(self, job: dict, index: int = 0) -> bytes:
        response = self.client.get(f"/v1/jobs/{job['id']}/images/{index}")
        assert response.status_code == 200, response.text
        return response.content


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("service")) as processes:
        client = httpx.Client(base_url=processes.url, timeout=30)
        try:
            yield Service(processes.url, processes.redis_url, processes.data_dir,
                          processes.webhook_secret, client)
        finally:
            client.close()
