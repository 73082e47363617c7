"""Webhooks from the real service to a real local receiver, verified with standardwebhooks."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
from standardwebhooks import Webhook

from shared.celery_app import make_celery
from shared.settings import Settings
from tests.integration.conftest import Service
from tests.webhook_receiver import WebhookReceiver, sent_before_marker, wait_past_any_retry


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def job_after_attempts(service: Service, job_id: str, count: int, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = service.client.get(f"/v1/jobs/{job_id}").json()
        if len(job["webhook_attempts"]) >= count or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_signed_events_for_every_subscribed_type(service: Service, receiver: WebhookReceiver) -> None:
    job = service.submit({
        "prompt": "hooked", "steps": 20, "width": 256, "height": 256,
        "webhook": {"url": receiver.url("/all"), "events": ["started", "progress", "completed"]},
    })
    service.wait(job["id"])
    verifier = Webhook(service.webhook_secret)
    deadline = time.monotonic() + 20
    while not any(json.loads(r.body)["type"] == "job.completed" for r in receiver.requests("/all")):
        assert time.monotonic() < deadline, "no completed webhook"
        time.sleep(0.1)
    types = []
    for request in receiver.requests("/all"):
        payload = verifier.verify(request.body, request.headers)  # raises if the signature is bad
        assert payload["data"]["id"] == job["id"]
        types.append(payload["type"])
    assert types.count("job.started") == 1 and types.count("job.completed") == 1
    assert "job.progress" in types
    completed = next(json.loads(r.body) for r in receiver.requests("/all")
                     if json.loads(r.body)["type"] == "job.completed")
    assert completed["data"]["status"] == "succeeded"
    assert completed["data"]["images"]


def test_retry_after_500_keeps_the_webhook_id(service: Service, receiver: WebhookReceiver) -> None:
    receiver.script("/flaky", [500, 200])
    job = service.run({"prompt": "retry", "steps": 2, "webhook": {"url": receiver.url("/flaky")}})
    first, second = receiver.wait_for(2, timeout=20, path="/flaky")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    Webhook(service.webhook_secret).verify(second.body, second.headers)
    recorded = job_after_attempts(service, job["id"], 2)["webhook_attempts"]
    assert [(a["status_code"], a["delivered"]) for a in recorded] == [(500, False), (200, True)]


def test_410_stops_deliveries(service: Service, receiver: WebhookReceiver) -> None:
    receiver.script("/gone", [410])
    job = service.run({"prompt": "gone", "steps": 2, "webhook": {"url": receiver.url("/gone")}})
    receiver.wait_for(1, timeout=20, path="/gone")
    app = make_celery(Settings(redis_url=service.redis_url))
    try:
        wait_past_any_retry(app, receiver, job["id"], "/gone")
    finally:
        app.close()
    assert len(sent_before_marker(receiver, "/gone")) == 1
    recorded = job_after_attempts(service, job["id"], 2)["webhook_attempts"]
    assert [a["status_code"] for a in recorded if a["event_id"].startswith("evt_job")] == [410]


def test_webhook_credentials_and_query_are_hidden_but_used(service: Service,
                                                          receiver: WebhookReceiver) -> None:
    url = f"http://hook-user:s3cret@127.0.0.1:{receiver.port}/private?token=abc"
    shown = f"http://***@127.0.0.1:{receiver.port}/private?***"
    submitted = service.submit({"prompt": "secret", "steps": 2, "webhook": {"url": url}})
    assert submitted["request"]["webhook"]["url"] == shown
    job = service.wait(submitted["id"])
    assert job["request"]["webhook"]["url"] == shown
    listed = service.client.get("/v1/jobs").json()["jobs"]
    assert [j["request"]["webhook"]["url"] for j in listed if j["id"] == job["id"]] == [shown]
    # Delivered to the URL as given: its query, and its userinfo as basic auth.
    [request] = receiver.wait_for(1, timeout=20, path="/private?token=abc")
    credentials = base64.b64encode(b"hook-user:s3cret").decode()
    assert request.headers["authorization"] == f"Basic {credentials}"
    body = Webhook(service.webhook_secret).verify(request.body, request.headers)
    assert body["data"]["request"]["webhook"]["url"] == shown
    assert b"s3cret" not in request.body and b"token=abc" not in request.body
