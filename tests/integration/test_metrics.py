"""GET /metrics and the log lines of the real service: jobs run through real workers are
counted once, service-wide, and every process logs JSON lines that name their job."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from shared.storage import job_prefix
from tests.integration.conftest import DISTILLED_MODEL, Service
from tests.metrics_scrape import Scrape
from tests.webhook_receiver import WebhookReceiver

MODEL = "tiny-random"
HELD_JOB = {"prompt": "held", "steps": 10}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def scrape(service: Service) -> Scrape:
    response = service.client.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Delta:
    """How much each sample moved between two scrapes."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return self.after.value(name, **labels) - self.before.value(name, **labels)


def test_jobs_run_by_the_service_are_counted_once(service: Service,
                                                  receiver: WebhookReceiver) -> None:
    before = scrape(service)
    plain = service.run({"prompt": "counted", "steps": 2})
    hooked = service.run({"prompt": "hooked", "steps": 2,
                          "webhook": {"url": receiver.url("/metrics-hook")}})
    # While a held job runs, two more wait: one to be canceled, one whose input vanishes.
    held = service.submit_held(HELD_JOB)
    doomed = service.submit({"prompt": "never", "steps": 2})["id"]
    broken = service.submit({"task": "image-to-image", "prompt": "lost input", "steps": 2,
                             "init_image": png_b64()})["id"]
    shutil.rmtree(service.data_dir / "images" / job_prefix(broken) / "inputs")
    time.sleep(0.2)
    waiting = scrape(service)
    assert waiting.value("latentd_queue_depth", model=MODEL) == \
        before.value("latentd_queue_depth", model=MODEL) + 2
    assert waiting.value("latentd_queue_oldest_age_seconds", model=MODEL) >= 0.2
    assert waiting.value("latentd_jobs_running") >= 1
    assert service.client.post(f"/v1/jobs/{doomed}/cancel").json()["status"] == "canceled"
    service.release(held)
    assert service.wait(held)["status"] == "succeeded"
    failed = service.wait(broken)
    assert failed["status"] == "failed" and failed["error"]["code"] == "generation_failed"

    receiver.wait_for(1, timeout=20, path="/metrics-hook")
    deadline = time.monotonic() + 10  # the delivery is counted once the POST has answered
    while True:
        after = scrape(service)
        delta = Delta(before, after)
        if delta("latentd_webhook_deliveries_total", event="completed") >= 1:
            break
        assert time.monotonic() < deadline, "the webhook delivery was never counted"
        time.sleep(0.1)

    assert delta("latentd_jobs_submitted_total", model=MODEL) == 5
    assert delta("latentd_jobs_started_total", model=MODEL) == 4  # not the canceled one
    finished = {(s.labels["status"], s.labels["error_code"]): s.value
                for s in after.matching("latentd_jobs_finished_total", model=MODEL)}
    earlier = {(s.labels["status"], s.labels["error_code"]): s.value
               for s in before.matching("latentd_jobs_finished_total", model=MODEL)}
    moved = {key: value - earlier.get(key, 0) for key, value in finished.items()
             if value != earlier.get(key, 0)}
    assert moved == {("succeeded", ""): 3, ("canceled", "canceled"): 1,
                     ("failed", "generation_failed"): 1}
    for name in ("latentd_job_queue_seconds", "latentd_job_inference_seconds",
                 "latentd_job_total_seconds"):
        assert delta(f"{name}_count", model=MODEL) == 3
        assert delta(f"{name}_bucket", model=MODEL, le="+Inf") == 3
    assert delta("latentd_job_inference_seconds_sum", model=MODEL) == pytest.approx(
        sum(job["metrics"]["inference_seconds"] for job in (plain, hooked,
                                                            service.wait(held))), abs=1e-6)
    assert delta("latentd_webhook_deliveries_total", event="completed",
                 outcome="delivered") == 1
    assert delta("latentd_webhook_attempts_total", event="completed", result="delivered") == 1

    assert after.value("latentd_queue_depth", model=MODEL) == \
        before.value("latentd_queue_depth", model=MODEL)
    assert after.value("latentd_workers_alive", model=MODEL) >= 1
    assert after.value("latentd_workers_alive", model=DISTILLED_MODEL) >= 1
    # Each worker process with torch and its pipelines loaded holds well over 50 MB.
    sizes = [s.value for s in after.matching("latentd_worker_resident_memory_bytes")]
    assert sizes and max(sizes) > 50 * 2**20
    assert after.value("latentd_redis_up") == 1


def json_lines(log: Path, preamble: int) -> list[dict]:
    """Every line of a process's log (stdout and stderr) once its logging is configured,
    each one JSON object. Before it, at most ``preamble`` lines in their own format: what
    a library prints while the process imports it (transformers' advice to install
    torchvision), or uvicorn before it imports the app."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("{"))
    assert start <= preamble, lines[:start]
    parsed = [json.loads(line) for line in lines[start:]]  # raises on a line not JSON
    for line in parsed:
        assert {"time", "level", "logger", "message", "service"} <= line.keys(), line
    return parsed


def about(lines: list[dict], job_id: str) -> list[dict]:
    """The lines that mention the job, anywhere."""
    return [line for line in lines if job_id in json.dumps(line)]


def test_each_process_logs_json_lines_that_carry_their_job_id(
    service: Service, receiver: WebhookReceiver
) -> None:
    job = service.run({"prompt": "logged", "steps": 2,
                       "webhook": {"url": receiver.url("/logged?token=s3cret")}})
    receiver.wait_for(1, timeout=20, path="/logged?token=s3cret")
    time.sleep(0.5)  # the webhook worker logs its request once it has answered
    workdir = service.data_dir.parent

    worker = json_lines(workdir / "worker.log", preamble=3)
    assert {line["service"] for line in worker} == {"generation-worker"}
    mine = about(worker, job["id"])
    assert {line["logger"] for line in mine} >= {"worker.tasks", "celery.app.trace"}
    assert all(line.get("job_id") == job["id"] for line in mine), mine
    # Celery's "succeeded" line names only its task; it carries the job id all the same.
    assert any("succeeded in" in line["message"] for line in mine)

    webhooks = json_lines(workdir / "webhook-worker.log", preamble=0)
    mine = about(webhooks, job["id"])
    assert mine and all(line.get("job_id") == job["id"] for line in mine), mine
    assert any("succeeded in" in line["message"] for line in mine)
    # The webhook's secret query is in no line (Celery's task arguments, httpx's URL).
    assert "s3cret" not in (workdir / "webhook-worker.log").read_text()

    api = json_lines(workdir / "api.log", preamble=2)
    mine = about(api, job["id"])
    assert any(line["logger"] == "uvicorn.access" for line in mine)
    assert all(line.get("job_id") == job["id"] for line in mine), mine
