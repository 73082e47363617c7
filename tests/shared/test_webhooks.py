"""Webhook URL vetting, event bodies and ids, signing, and progress throttling."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.celery_app import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE
from shared.records import JobRecord, public_job, redact_url
from shared.schemas import EventType, Job, JobStatus, Progress, WebhookSpec
from shared.settings import Settings
from shared.webhooks import (
    PROGRESS_THROTTLE_KEY,
    WebhookHostUnresolvable,
    WebhookPublisher,
    WebhookTarget,
    WebhookURLRefused,
    build_event,
    check_webhook_url,
    enqueue_webhook,
    event_id,
    resolve_webhook_target,
    sign,
)
from tests.factories import make_plan, make_record

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def make_job(events: list[EventType] | None = None, url: str = "https://example.com/hook",
             **fields: Any) -> JobRecord:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    webhook = WebhookSpec(url=url, events=events) if events is not None else None
    return make_record(**{"status": JobStatus.RUNNING, "created_at": now, "updated_at": now,
                          "request": make_plan(webhook=webhook), **fields})


class RecordingCelery:
    """Stands in for the Celery app: records what would be published."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        self.sent.append({"name": name, "args": args, "queue": queue})


# -- URL vetting -----------------------------------------------------------------

REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.8.9.10:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",  # multicast
    "http://240.0.0.1/hook",  # reserved
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://[fec0::1]/hook",  # site-local (deprecated, still routed inside)
    "http://[2002:7f00:1::1]/hook",  # 6to4 of 127.0.0.1
    "http://[2002:a00:5::1]/hook",  # 6to4 of 10.0.0.5
    "http://[2002:a9fe:a9fe::1]/hook",  # 6to4 of 169.254.169.254
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",  # Teredo, client 192.0.2.45
    "http://[2001:0:a00:1:0:f227:80ff:fffe]/hook",  # Teredo, 10.0.0.1 and 127.0.0.1
    "ftp://93.184.216.34/hook",
    "file:///etc/passwd",
    "gopher://93.184.216.34/",
    "http:///nohost",
]


@pytest.mark.parametrize("url", REFUSED)
def test_private_or_non_http_urls_are_refused(url: str) -> None:
    with pytest.raises(WebhookURLRefused):
        check_webhook_url(url, Settings(webhook_allow_private=False))


@pytest.mark.parametrize("url", ["http://93.184.216.34/hook", "https://93.184.216.34:8443/x",
                                 "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
                                 "http://[2002:5db8:d822::1]/hook"])  # 6to4 of 93.184.216.34
def test_public_literal_ips_are_accepted_without_dns(url: str, monkeypatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise AssertionError("a literal IP must not need DNS")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    check_webhook_url(url, Settings(webhook_allow_private=False))


def test_a_name_with_any_private_record_is_refused(monkeypatch) -> None:
    def resolve(host: str, port: int, **kwargs: object) -> list:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(WebhookURLRefused, match="10.0.0.5"):
        check_webhook_url("https://hooks.example.com/x", Settings())


def test_a_name_whose_record_embeds_a_private_ipv4_is_refused(monkeypatch) -> None:
    def resolve(host: str, port: int, **kwargs: object) -> list:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:c0a8:101::1", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(WebhookURLRefused, match="2002:c0a8:101::1"):  # 192.168.1.1
        check_webhook_url("https://hooks.example.com/x", Settings())


def test_the_target_carries_every_checked_address_once(monkeypatch) -> None:
    lookups = []

    def resolve(host: str, port: int, **kwargs: object) -> list:
        lookups.append((host, port))
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:2800::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    target = resolve_webhook_target("https://Hooks.Example.com/x", Settings())
    assert target == WebhookTarget("hooks.example.com", 443, ("2606:2800::1", "93.184.216.34"))
    assert lookups == [("hooks.example.com", 443)]


def test_the_target_is_resolved_even_when_private_is_allowed(monkeypatch) -> None:
    def resolve(host: str, port: int, **kwargs: object) -> list:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    allowed = Settings(webhook_allow_private=True)
    # Nothing to check at submit, but delivery still connects only to what it resolved.
    check_webhook_url("http://inside.example:8080/x", allowed)
    assert resolve_webhook_target("http://inside.example:8080/x", allowed) == WebhookTarget(
        "inside.example", 8080, ("10.0.0.5",))
    with pytest.raises(WebhookURLRefused):
        resolve_webhook_target("http://inside.example:8080/x", Settings())


def test_a_name_that_does_not_resolve_is_unresolvable_not_refused(monkeypatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(WebhookHostUnresolvable):
        check_webhook_url("https://nowhere.invalid/x", Settings())


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/hook",
                                 "http://10.1.2.3/hook", "http://[::1]/hook"])
def test_private_urls_are_allowed_when_configured(url: str) -> None:
    check_webhook_url(url, Settings(webhook_allow_private=True))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http://127.0.0.1:99999/"])
def test_scheme_and_port_are_checked_even_when_private_is_allowed(url: str) -> None:
    with pytest.raises(ValueError):
        check_webhook_url(url, Settings(webhook_allow_private=True))


# -- events ----------------------------------------------------------------------

def test_event_ids_are_deterministic() -> None:
    job = make_job([EventType.COMPLETED], attempts=2, progress=Progress(step=7, total_steps=9))
    assert event_id(job, EventType.COMPLETED) == f"evt_{job.id}_completed"
    assert event_id(job, EventType.STARTED) == f"evt_{job.id}_started_2"
    assert event_id(job, EventType.PROGRESS) == f"evt_{job.id}_progress_7"
    rerun = job.model_copy(update={"attempts": 3, "updated_at": datetime.now(UTC)})
    assert event_id(rerun, EventType.COMPLETED) == event_id(job, EventType.COMPLETED)
    assert event_id(rerun, EventType.STARTED) != event_id(job, EventType.STARTED)
    with pytest.raises(ValueError):
        event_id(job, EventType.QUEUED)


def test_build_event_carries_the_job_as_json() -> None:
    job = make_job([EventType.COMPLETED], status=JobStatus.SUCCEEDED, metadata={"k": "v"})
    body = build_event(job, EventType.COMPLETED)
    assert body["type"] == "job.completed"
    assert datetime.fromisoformat(body["timestamp"]) == job.updated_at
    assert body["data"]["id"] == job.id and body["data"]["status"] == "succeeded"
    # The public job, as GET /v1/jobs/{id} shows it: no owner, no storage keys.
    assert Job.model_validate(json.loads(json.dumps(body))["data"]) == public_job(job)
    assert "owner" not in body["data"] and "inputs" not in body["data"]
    assert build_event(job, EventType.STARTED)["type"] == "job.started"
    assert build_event(job, EventType.PROGRESS)["type"] == "job.progress"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:s3cret@hooks.example.com/path?token=abc&x=1",
     "https://***@hooks.example.com/path?***"),
    ("https://token@hooks.example.com:8443/a/b", "https://***@hooks.example.com:8443/a/b"),
    ("http://hooks.example.com/x?sig=1", "http://hooks.example.com/x?***"),
    ("http://u:p@[2606:2800::1]:8080/x?q", "http://***@[2606:2800::1]:8080/x?***"),
    ("https://hooks.example.com/plain", "https://hooks.example.com/plain"),
])
def test_redact_url_hides_userinfo_and_query(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_public_job_and_event_hide_webhook_credentials_but_the_record_keeps_them() -> None:
    url = "https://user:s3cret@hooks.example.com/path?token=abc"
    job = make_job([EventType.COMPLETED], url=url, status=JobStatus.SUCCEEDED)
    shown = "https://***@hooks.example.com/path?***"
    assert str(public_job(job).request.webhook.url) == shown
    body = json.dumps(build_event(job, EventType.COMPLETED))
    assert json.loads(body)["data"]["request"]["webhook"]["url"] == shown
    assert "s3cret" not in body and "token=abc" not in body and "user" not in body
    assert str(job.request.webhook.url) == url  # delivery reads the stored record
    assert public_job(job).request.webhook.events == [EventType.COMPLETED]
    unhooked = make_job(None)
    assert public_job(unhooked).request == unhooked.request


# -- signing ---------------------------------------------------------------------

def test_signature_verifies_with_the_standard_webhooks_library() -> None:
    body = json.dumps({"type": "job.completed", "data": {"id": "job_1"}})
    headers = sign(SECRET, "evt_job_1_completed", datetime.now(UTC), body)
    assert headers["webhook-id"] == "evt_job_1_completed"
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)


def test_signature_fails_for_a_changed_body_id_or_secret() -> None:
    body = '{"a":1}'
    headers = sign(SECRET, "evt_1", datetime.now(UTC), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify('{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, {**headers, "webhook-id": "evt_2"})
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_signature_timestamp_is_unix_seconds_of_any_timezone() -> None:
    at = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
    local = at.astimezone(UTC).astimezone(tz=None)
    assert sign(SECRET, "e", at, "x") == sign(SECRET, "e", local, "x")
    assert sign(SECRET, "e", at, "x")["webhook-timestamp"] == str(int(at.timestamp()))
    stale = sign(SECRET, "e", datetime.now(UTC) - timedelta(minutes=10), "{}")
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify("{}", stale)


# -- enqueueing --------------------------------------------------------------------

def test_enqueue_sends_only_json_for_subscribed_events() -> None:
    app = RecordingCelery()
    job = make_job([EventType.COMPLETED], url="https://example.com/hook?x=1")
    assert not enqueue_webhook(job, EventType.STARTED, app)
    assert not enqueue_webhook(make_job(None), EventType.COMPLETED, app)
    assert app.sent == []
    assert enqueue_webhook(job, EventType.COMPLETED, app)
    [sent] = app.sent
    assert sent["name"] == DELIVER_WEBHOOK_TASK and sent["queue"] == WEBHOOK_QUEUE
    job_id, msg_id, event_type, url, payload = sent["args"]
    assert (job_id, msg_id, event_type) == (job.id, f"evt_{job.id}_completed", "completed")
    assert url == "https://example.com/hook?x=1"  # the real URL, to deliver to
    assert json.loads(payload) == build_event(job, EventType.COMPLETED)
    assert json.loads(payload)["data"]["request"]["webhook"]["url"] == (
        "https://example.com/hook?***")  # the body shows the redacted one
    json.dumps(sent["args"])  # nothing but JSON crosses the queue


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_progress_is_throttled_to_one_per_second_per_job(client: redis.Redis) -> None:
    app = RecordingCelery()
    publish = WebhookPublisher(client, app)
    job = make_job([EventType.PROGRESS, EventType.COMPLETED])
    other = make_job([EventType.PROGRESS])
    for step in range(1, 6):
        publish(job.model_copy(update={"progress": Progress(step=step, total_steps=9)}),
                EventType.PROGRESS)
    publish(other, EventType.PROGRESS)
    publish(job, EventType.COMPLETED)  # never throttled
    assert [s["args"][1] for s in app.sent] == [
        f"evt_{job.id}_progress_1", f"evt_{other.id}_progress_0", f"evt_{job.id}_completed"]
    # The slot frees when its key expires (Redis's TTL), not when a fixed sleep says so.
    deadline = time.monotonic() + 5
    while client.exists(PROGRESS_THROTTLE_KEY.format(job_id=job.id)):
        assert time.monotonic() < deadline, "the throttle slot never expired"
        time.sleep(0.05)
    publish(job.model_copy(update={"progress": Progress(step=8, total_steps=9)}),
            EventType.PROGRESS)
    assert app.sent[-1]["args"][1] == f"evt_{job.id}_progress_8"


def test_unsubscribed_progress_takes_no_throttle_slot(client: redis.Redis) -> None:
    app = RecordingCelery()
    publish = WebhookPublisher(client, app)
    job = make_job([EventType.COMPLETED])
    publish(job, EventType.PROGRESS)
    assert app.sent == [] and client.keys("*") == []


def test_publisher_failure_does_not_break_the_caller(client: redis.Redis, caplog) -> None:
    class BrokenCelery:
        def send_task(self, *args: object, **kwargs: object) -> None:
            raise ConnectionError("broker down")

    publish = WebhookPublisher(client, BrokenCelery())  # type: ignore[arg-type]
    publish(make_job([EventType.COMPLETED]), EventType.COMPLETED)
    assert "could not enqueue webhook" in caplog.text
