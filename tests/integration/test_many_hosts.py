"""Many hosts, no shared filesystem: one Redis, one S3 bucket (moto's server over HTTP),
two API processes (one streams images, one redirects to presigned URLs) and TWO generation
workers, each a real Celery process with a data directory of its own, as on two GPU hosts.
Both workers run jobs, and every image either worker made is fetchable from either API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from scripts.process_commands import API, GENERATION_WORKER, service_commands
from scripts.service_processes import free_port, start_process, stop_process
from shared.heartbeat import live_workers
from tests.integration.conftest import Service
from tests.s3_server import S3Endpoint, running_s3

HOSTS = ("gpu-a", "gpu-b")
PREFIX = "outputs"
JOBS = 4
READY_SECONDS = 180
# The real generation worker plus the hold gate (tests/integration/gated_worker.py).
GATED_APP = "tests.integration.gated_worker"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Deployment:
    api: Service  # LATENTD_IMAGE_DELIVERY=stream (the default)
    redirecting: httpx.Client  # another API process, LATENTD_IMAGE_DELIVERY=redirect
    redis: redis.Redis
    s3: S3Endpoint
    bucket: str
    workers: dict[str, int]  # host → pid of its Celery main process
    workdir: Path

    def host_of(self, job_id: str) -> str:
        """The host whose worker ran the job: the claim names the worker process
        (``<hostname>-<pid>``, its heartbeat name), whose parent is that host's Celery."""
        name = self.redis.hget(f"latentd:job:{job_id}", "worker")
        assert name, f"{job_id} names no worker"
        parent = parent_pid(int(name.rsplit("-", 1)[1]))
        [host] = [host for host, pid in self.workers.items() if pid == parent]
        return host

    def stored(self, job_id: str, index: int) -> bytes:
        """The image's bytes as they lie in the bucket, under the URL's prefix."""
        key = f"{PREFIX}/jobs/{job_id}/images/{index}.png"
        return self.s3.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("many-hosts")
    with running_s3() as s3:
        bucket = s3.create_bucket()
        redis_port = free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        # What every host shares: the Redis and the bucket. Nothing else.
        shared = {
            **os.environ, **s3.env(),
            "LATENTD_REDIS_URL": redis_url,
            "LATENTD_STORAGE_URL": f"s3://{bucket}/{PREFIX}",
            "LATENTD_DEFAULT_MODEL": "tiny-random",
            "LATENTD_TORCH_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        procs: list[subprocess.Popen] = []
        try:
            procs.append(start_process(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--dir", str(workdir), "--save", "", "--appendonly", "no"],
                shared, workdir / "redis.log"))
            workers = {}
            for host in HOSTS:
                argv = service_commands(sys.executable, host="127.0.0.1", port=0, node_tag=host,
                                        generation_app=GATED_APP)[GENERATION_WORKER]
                env = {**shared, "LATENTD_DATA_DIR": str(workdir / host / "data")}
                proc = start_process(argv, env, workdir / f"{host}.log")
                procs.append(proc)
                workers[host] = proc.pid
            urls = {}
            for delivery in ("stream", "redirect"):
                port = free_port()
                argv = service_commands(sys.executable, host="127.0.0.1", port=port,
                                        node_tag="api")[API]
                env = {**shared, "LATENTD_DATA_DIR": str(workdir / f"api-{delivery}" / "data"),
                       "LATENTD_PORT": str(port), "LATENTD_IMAGE_DELIVERY": delivery}
                procs.append(start_process(argv, env, workdir / f"api-{delivery}.log"))
                urls[delivery] = f"http://127.0.0.1:{port}"
            client = redis.Redis.from_url(redis_url, decode_responses=True)
            _wait_until_ready(list(urls.values()), client, procs, workdir)
            with (httpx.Client(base_url=urls["stream"], timeout=30) as streaming,
                  httpx.Client(base_url=urls["redirect"], timeout=30) as redirecting):
                api = Service(urls["stream"], redis_url, workdir / "api-stream" / "data", "",
                              streaming)
                yield Deployment(api, redirecting, client, s3, bucket, workers, workdir)
        finally:
            for proc in reversed(procs):
                stop_process(proc)


def _wait_until_ready(urls: list[str], client: redis.Redis, procs: list[subprocess.Popen],
                      workdir: Path) -> None:
    """Both APIs answer /readyz 200 and both workers beat (each has loaded the model)."""
    deadline = time.monotonic() + READY_SECONDS
    while True:
        if any(proc.poll() is not None for proc in procs):
            pytest.fail(f"a process exited early:\n{_logs(workdir)}")
        try:
            ready = all(httpx.get(f"{url}/readyz", timeout=5).status_code == 200 for url in urls)
        except httpx.TransportError:
            ready = False
        if ready and len(live_workers(client, "tiny-random")) == len(HOSTS):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not ready after {READY_SECONDS} s:\n{_logs(workdir)}")
        time.sleep(0.2)


def _logs(workdir: Path) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                     for path in sorted(workdir.glob("*.log")))


def test_both_workers_run_jobs_and_every_image_is_served_from_the_bucket(
    deployment: Deployment,
) -> None:
    api = deployment.api
    # One worker holds this job after its first step, so the other is the only one free.
    held = api.submit_held({"prompt": "held", "seed": 1})
    held_host = deployment.host_of(held)
    others = [api.submit({"prompt": f"job {n}", "seed": 10 + n, "num_images": 2})["id"]
              for n in range(JOBS)]
    deadline = time.monotonic() + 60
    while not (done := [job_id for job_id in others if api.client.get(
            f"/v1/jobs/{job_id}").json()["status"] == "succeeded"]):
        assert time.monotonic() < deadline, "no job finished while one worker was held"
        time.sleep(0.05)
    assert deployment.host_of(done[0]) != held_host
    api.release(held)

    jobs = [api.wait(job_id, timeout=120) for job_id in [held, *others]]
    assert [job["status"] for job in jobs] == ["succeeded"] * len(jobs), jobs
    hosts = {job["id"]: deployment.host_of(job["id"]) for job in jobs}
    assert set(hosts.values()) == set(HOSTS), hosts

    for job in jobs:
        assert len(job["images"]) == job["request"]["num_images"]
        for info in job["images"]:
            stored = deployment.stored(job["id"], info["index"])
            assert stored.startswith(PNG_SIGNATURE)
            # Streamed by one API process...
            assert api.image(job, info["index"]) == stored
            # ...and redirected to the bucket by the other.
            response = deployment.redirecting.get(
                f"/v1/jobs/{job['id']}/images/{info['index']}", follow_redirects=False)
            assert response.status_code == 307, response.text
            assert httpx.get(response.headers["location"]).content == stored
    # No host wrote an image to its own disk: the bucket is the only place they are.
    assert not [path for path in deployment.workdir.rglob("*")
                if path.suffix in (".png", ".jpeg", ".webp")]
