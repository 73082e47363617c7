"""The real service for integration tests: its own redis-server, a generation worker and a
webhook worker (real Celery processes), and the API served by uvicorn, all over HTTP.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # Own process group: Celery's prefork children go down with their parent.
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("service")
    redis_port, api_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    env = {
        **os.environ,
        "LATENTD_REDIS_URL": redis_url,
        "LATENTD_DATA_DIR": str(workdir / "data"),
        "LATENTD_PORT": str(api_port),
        "LATENTD_DEFAULT_MODEL": "tiny-random",
        "LATENTD_WEBHOOK_SECRET": secret,
        "LATENTD_WEBHOOK_ALLOW_PRIVATE": "true",
        "LATENTD_WEBHOOK_RETRY_BASE_SECONDS": "0.3",
        "LATENTD_WEBHOOK_TIMEOUT_SECONDS": "3",
        "LATENTD_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    procs = [
        _start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                "--dir", str(workdir), "--save", "", "--appendonly", "no"],
               env, workdir / "redis.log"),
    ]
    time.sleep(0.3)
    procs += [
        _start([str(BIN / "celery"), "-A", "worker.generation_worker", "worker", "--pool",
                "prefork", "--concurrency", "1", "--loglevel", "INFO", "-n", "gen-test@%h"],
               env, workdir / "worker.log"),
        _start([str(BIN / "celery"), "-A", "worker.webhook_worker", "worker", "--pool",
                "threads", "--concurrency", "4", "-Q", "webhooks", "--loglevel", "INFO",
                "-n", "webhooks-test@%h"],
               env, workdir / "webhook-worker.log"),
        _start([str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port",
                str(api_port)], env, workdir / "api.log"),
    ]
    url = f"http://127.0.0.1:{api_port}"
    client = httpx.Client(base_url=url, timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[:3]} exited early; logs in {workdir}")
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"service not ready after 120 s; logs in {workdir}")
            time.sleep(0.2)
        yield Service(url, redis_url, workdir / "data", secret, client)
    finally:
        client.close()
        for proc in reversed(procs):
            _stop(proc)
