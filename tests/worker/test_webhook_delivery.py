"""Webhook delivery against a real redis-server, a real HTTP receiver and a real Celery worker.

This module never flushes Redis: the running worker's queue bindings live there. Every
test makes its own job ids and receiver paths instead.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from standardwebhooks import Webhook

from scripts.process_commands import WEBHOOK_WORKER, service_commands
from scripts.service_processes import start_process, stop_process
from shared.celery_app import make_celery
from shared.jobstore import JobStore
from shared.records import JobRecord, OutputImage
from shared.schemas import ErrorCode, EventType, Metrics, OutputFormat, WebhookSpec
from shared.settings import Settings
from shared.webhooks import WebhookPublisher, enqueue_webhook
from tests.factories import make_plan, make_record
from tests.webhook_receiver import (
    TricklingReceiver,
    WebhookReceiver,
    sent_before_marker,
    wait_past_any_retry,
)
from worker.webhook_tasks import (
    SECRET_MISSING,
    WebhookSender,
    deliver_and_record,
    retry_delay,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
WORKER_MAX_ATTEMPTS = 3
WORKER_THREADS = 4
WORKER_DEADLINE_SECONDS = 3.0
# How far past its deadline an attempt may end: scheduling, not waiting.
DEADLINE_MARGIN_SECONDS = 0.5
PUBLIC_ADDRESS = "93.184.216.34"


def make_job(store: JobStore, url: str, events: list[EventType]) -> JobRecord:
    plan = make_plan(webhook=WebhookSpec(url=url, events=events))
    stored, created = store.create(make_record(owner="alice", request=plan))
    assert created
    return stored


def unique_path() -> str:
    return f"/hook-{secrets.token_hex(4)}"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
def settings(redis_server: str) -> Settings:
    return Settings(redis_url=redis_server, webhook_secret=SECRET, webhook_allow_private=True)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)


@pytest.fixture
def sender() -> WebhookSender:
    return WebhookSender()


def deliver(store: JobStore, sender: WebhookSender, settings: Settings, job: JobRecord, url: str,
            attempt: int = 1):
    payload = json.dumps({"type": "job.completed", "data": {"id": job.id}})
    return deliver_and_record(
        store, sender, settings, job_id=job.id, event_id=f"evt_{job.id}_completed",
        event_type="completed", url=url, payload=payload, attempt=attempt,
    )


class ScriptedDNS:
    """Stands in for DNS in this process (``socket.getaddrinfo``): each scripted name gets
    its answers in turn, one per lookup, the last repeating; other names, and the numeric
    addresses Redis connects to, go to the real resolver."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]):
        self.lookups: dict[str, int] = dict.fromkeys(answers, 0)
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
            if host not in answers:
                return real(host, port, *args, **kwargs)
            scripted = answers[host]
            answer = scripted[min(self.lookups[host], len(scripted) - 1)]
            self.lookups[host] += 1
            return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM,
                     6, "", (address, port)) for address in answer]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# -- one attempt, in process ------------------------------------------------------

def test_2xx_is_delivered_signed_and_recorded(store, sender, settings, receiver) -> None:
    job = make_job(store, receiver.url(), [EventType.COMPLETED])
    outcome = deliver(store, sender, settings, job, receiver.url("/ok"))
    assert outcome.delivered and not outcome.retryable
    [request] = receiver.wait_for(1)
    assert request.method == "POST" and request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == f"evt_{job.id}_completed"
    assert Webhook(SECRET).verify(request.body, request.headers)["data"] == {"id": job.id}
    [attempt] = store.get(job.id).webhook_attempts
    assert (attempt.attempt, attempt.status_code, attempt.delivered, attempt.error) == (
        1, 200, True, None)
    assert attempt.event_type is EventType.COMPLETED and attempt.duration_seconds >= 0


@pytest.mark.parametrize(("status", "retryable"), [(410, False), (500, True), (429, True),
                                                    (404, True)])
def test_failures_are_recorded_and_only_410_is_final(store, sender, settings, receiver,
                                                      status, retryable) -> None:
    job = make_job(store, receiver.url(), [EventType.COMPLETED])
    receiver.script("/x", [status])
    outcome = deliver(store, sender, settings, job, receiver.url("/x"), attempt=4)
    assert (outcome.status_code, outcome.delivered, outcome.retryable) == (status, False, retryable)
    [attempt] = store.get(job.id).webhook_attempts
    assert (attempt.attempt, attempt.status_code, attempt.delivered) == (4, status, False)
    assert str(status) in attempt.error


def test_redirects_are_not_followed(store, sender, settings, receiver) -> None:
    job = make_job(store, receiver.url(), [EventType.COMPLETED])
    receiver.script("/moved", [302], headers={"location": receiver.url("/target")})
    outcome = deliver(store, sender, settings, job, receiver.url("/moved"))
    assert (outcome.status_code, outcome.delivered, outcome.retryable) == (302, False, True)
    assert "redirect" in outcome.error
    # A followed redirect would have been requested inside the call that just returned.
    assert receiver.requests("/target") == [] and len(receiver.requests("/moved")) == 1


def test_missing_secret_refuses_to_send_unsigned(store, sender, settings, receiver) -> None:
    job = make_job(store, receiver.url(), [EventType.COMPLETED])
    unsigned = settings.model_copy(update={"webhook_secret": None})
    outcome = deliver(store, sender, unsigned, job, receiver.url())
    assert not outcome.retryable and receiver.requests() == []
    [attempt] = store.get(job.id).webhook_attempts
    assert attempt.error == SECRET_MISSING and not attempt.delivered


def test_private_target_is_refused_at_delivery(store, sender, settings, receiver) -> None:
    job = make_job(store, receiver.url(), [EventType.COMPLETED])
    strict = settings.model_copy(update={"webhook_allow_private": False})
    outcome = deliver(store, sender, strict, job, receiver.url())
    assert not outcome.retryable and "non-public" in outcome.error
    assert receiver.requests() == []


def test_timeouts_and_refused_connections_are_retryable(store, sender, settings) -> None:
    impatient = settings.model_copy(update={"webhook_timeout_seconds": 0.3})
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        outcome = deliver(store, sender, impatient, make_job(store, url, [EventType.COMPLETED]),
                          url)
    assert outcome.retryable and outcome.status_code is None and "timed out" in outcome.error
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    outcome = deliver(store, sender, settings, make_job(store, url, [EventType.COMPLETED]), url)
    assert outcome.retryable and "request failed" in outcome.error
    assert f"127.0.0.1 port {port}" in outcome.error  # names the address it was pinned to


# -- pinned to the checked address (DNS rebinding) -------------------------------------

def test_delivery_connects_to_the_checked_address_not_a_later_answer(
        store, sender, settings, monkeypatch) -> None:
    # Private targets allowed, so both answers pass the check: the pin still applies.
    name = "hooks.rebind.test"
    with (WebhookReceiver("127.0.0.1") as checked,
          WebhookReceiver("127.0.0.2", port=checked.port) as rebound):
        dns = ScriptedDNS(monkeypatch, {name: [["127.0.0.1"], ["127.0.0.2"]]})
        url = checked.url("/pinned", host=name)
        job = make_job(store, url, [EventType.COMPLETED])
        assert deliver(store, sender, settings, job, url).delivered
        # One lookup, the check's: connecting asked nothing, so it could not be told 127.0.0.2.
        assert dns.lookups[name] == 1
        [request] = checked.requests("/pinned")
        assert request.headers["host"] == f"{name}:{checked.port}"
        assert rebound.requests() == []
        # The next attempt checks again and is pinned to that answer: the second server
        # was reachable all along, so the first attempt missed it because of the pin.
        assert deliver(store, sender, settings, job, url, attempt=2).delivered
        assert dns.lookups[name] == 2
        assert len(rebound.requests("/pinned")) == 1 and len(checked.requests()) == 1


def test_a_rebinding_name_never_reaches_the_private_address(
        store, sender, settings, receiver, monkeypatch) -> None:
    strict = settings.model_copy(update={"webhook_allow_private": False,
                                         "webhook_timeout_seconds": 1.0})
    name = "hooks.rebind.test"
    dns = ScriptedDNS(monkeypatch, {name: [[PUBLIC_ADDRESS], ["127.0.0.1"]]})
    url = receiver.url("/inside", host=name)
    job = make_job(store, url, [EventType.COMPLETED])
    outcome = deliver(store, sender, strict, job, url)
    # Pinned to the public answer (nothing listens there for this test): a failed,
    # retryable attempt, and not a byte to the receiver on 127.0.0.1.
    assert not outcome.delivered and outcome.retryable and outcome.status_code is None
    assert dns.lookups[name] == 1 and receiver.requests() == []
    # The retry's check sees the private answer and refuses it for good.
    outcome = deliver(store, sender, strict, job, url, attempt=2)
    assert not outcome.retryable and "non-public address 127.0.0.1" in outcome.error
    assert receiver.requests() == []


def test_each_checked_address_is_tried_in_turn(store, sender, settings, receiver,
                                               monkeypatch) -> None:
    name = "hooks.two.test"
    # Nothing listens on 127.0.0.3 at the receiver's port: refused, then the next one.
    dns = ScriptedDNS(monkeypatch, {name: [["127.0.0.3", "127.0.0.1"]]})
    url = receiver.url("/second", host=name)
    assert deliver(store, sender, settings, make_job(store, url, [EventType.COMPLETED]),
                   url).delivered
    assert len(receiver.requests("/second")) == 1 and dns.lookups[name] == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.example.test only (no IP in it): cert, key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=hooks.example.test",
         "-addext", "subjectAltName=DNS:hooks.example.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_https_is_pinned_with_sni_host_and_certificate_for_the_name(
        store, settings, certificate, monkeypatch) -> None:
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    sender = WebhookSender(ssl_context=ssl.create_default_context(cafile=str(cert)))
    name, other = "hooks.example.test", "other.example.test"
    with WebhookReceiver(tls=server_tls) as tls_receiver:
        dns = ScriptedDNS(monkeypatch, {name: [["127.0.0.1"], ["127.0.0.2"]],
                                        other: [["127.0.0.1"]]})
        url = tls_receiver.url("/tls", host=name)
        job = make_job(store, url, [EventType.COMPLETED])
        outcome = deliver(store, sender, settings, job, url)
        assert outcome.delivered, outcome.error
        # Connected to the pinned 127.0.0.1, yet spoke to it as hooks.example.test: SNI,
        # Host header, and a certificate that names no IP verified against the name.
        [request] = tls_receiver.requests("/tls")
        assert request.headers["host"] == f"{name}:{tls_receiver.port}"
        assert tls_receiver.server_names == [name] and dns.lookups[name] == 1
        # The same server under a name its certificate does not carry is refused.
        url = tls_receiver.url("/tls", host=other)
        outcome = deliver(store, sender, settings, job, url, attempt=2)
        assert not outcome.delivered and outcome.retryable
        assert "certificate verify failed" in outcome.error
        assert len(tls_receiver.requests()) == 1


# -- one deadline per attempt ----------------------------------------------------------

def test_a_trickling_receiver_is_cut_off_at_the_deadline(store, sender, settings) -> None:
    deadline = 1.0
    hurried = settings.model_copy(update={"webhook_timeout_seconds": deadline})
    # A byte every 0.1 s: far inside any per-read timeout, so only the deadline ends it.
    with TricklingReceiver(interval=0.1) as slow:
        job = make_job(store, slow.url(), [EventType.COMPLETED])
        started = time.monotonic()
        outcome = deliver(store, sender, hurried, job, slow.url())
        elapsed = time.monotonic() - started
        assert slow.connections == 1
    print(f"\ntrickling receiver: attempt ended after {elapsed:.3f} s (deadline {deadline} s)")
    assert elapsed < deadline + DEADLINE_MARGIN_SECONDS
    assert outcome.retryable and not outcome.delivered and outcome.status_code is None
    assert outcome.error.startswith("timed out")
    [attempt] = store.get(job.id).webhook_attempts
    assert attempt.error.startswith("timed out") and not attempt.delivered
    assert attempt.duration_seconds < deadline + DEADLINE_MARGIN_SECONDS


# -- backoff ------------------------------------------------------------------------

class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_retry_delay_is_exponential_with_equal_jitter_and_capped() -> None:
    for attempt in range(1, 12):
        ceiling = min(100.0, 5 * 2**attempt)
        assert retry_delay(attempt, 5, 100, FixedRandom(0.0)) == ceiling / 2
        assert retry_delay(attempt, 5, 100, FixedRandom(0.999999)) == pytest.approx(ceiling)
        assert ceiling / 2 <= retry_delay(attempt, 5, 100, random.Random(attempt)) <= ceiling
    assert retry_delay(11, 5, 100, FixedRandom(0.5)) == 75


def test_default_schedule_spreads_attempts_over_ten_minutes() -> None:
    defaults = Settings()
    waits = range(1, defaults.webhook_max_attempts)  # a wait after each failed attempt but the last
    assert defaults.webhook_max_attempts >= 6

    def total(rng: random.Random) -> float:
        return sum(retry_delay(n, defaults.webhook_retry_base_seconds,
                               defaults.webhook_retry_max_seconds, rng) for n in waits)

    assert total(FixedRandom(0.0)) >= 600  # even with the unluckiest jitter
    assert total(FixedRandom(0.5)) >= 600  # the expected schedule
    assert total(FixedRandom(0.999999)) < 2 * 3600  # and nobody waits for hours


# -- a real webhook worker ------------------------------------------------------------

@pytest.fixture(scope="module")
def worker(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real ``celery -A worker.webhook_worker`` process; yields its log file."""
    log = tmp_path_factory.mktemp("webhook-worker") / "worker.log"
    env = {
        **os.environ,
        "LATENTD_REDIS_URL": redis_server,
        "LATENTD_WEBHOOK_SECRET": SECRET,
        "LATENTD_WEBHOOK_ALLOW_PRIVATE": "true",
        "LATENTD_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "LATENTD_WEBHOOK_MAX_ATTEMPTS": str(WORKER_MAX_ATTEMPTS),
        "LATENTD_WEBHOOK_TIMEOUT_SECONDS": str(WORKER_DEADLINE_SECONDS),
        "PYTHONUNBUFFERED": "1",
    }
    command = service_commands(sys.executable, host="127.0.0.1", port=0,
                               node_tag=f"test-{os.getpid()}", webhook_concurrency=WORKER_THREADS,
                               webhook_loglevel="INFO")[WEBHOOK_WORKER]
    cmd = [*command, "--without-gossip", "--without-mingle", "--without-heartbeat"]
    proc = start_process(cmd, env, log)
    try:
        yield log
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def publisher_app(redis_server: str) -> Iterator[Celery]:
    app = make_celery(Settings(redis_url=redis_server))
    yield app
    app.close()


def wait_for(receiver: WebhookReceiver, n: int, path: str, log: Path) -> list:
    try:
        return receiver.wait_for(n, timeout=30, path=path)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; worker log:\n{log.read_text()[-3000:]}") from None


def wait_for_attempts(store: JobStore, job_id: str, n: int, timeout: float = 10) -> list:
    deadline = time.monotonic() + timeout
    while len(attempts := store.get(job_id).webhook_attempts) < n:
        assert time.monotonic() < deadline, f"{len(attempts)} attempt(s) recorded, wanted {n}"
        time.sleep(0.05)
    return attempts


def test_worker_retries_with_the_same_id_until_delivered(worker, publisher_app, store,
                                                         receiver) -> None:
    path = unique_path()
    receiver.script(path, [500, 200])
    job = make_job(store, receiver.url(path), [EventType.STARTED])
    started = store.mark_running(job.id)
    assert enqueue_webhook(started, EventType.STARTED, publisher_app)
    first, second = wait_for(receiver, 2, path, worker)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == (
        f"evt_{job.id}_started_1")
    assert first.body == second.body
    for request in (first, second):
        assert Webhook(SECRET).verify(request.body, request.headers)["type"] == "job.started"
    attempts = wait_for_attempts(store, job.id, 2)
    assert [(a.attempt, a.status_code, a.delivered) for a in attempts] == [
        (1, 500, False), (2, 200, True)]
    assert (attempts[1].at - attempts[0].at).total_seconds() >= 0.2  # backed off, base 0.2 s
    wait_past_any_retry(publisher_app, receiver, job.id, path)
    assert len(sent_before_marker(receiver, path)) == 2


def test_worker_stops_at_410(worker, publisher_app, store, receiver) -> None:
    path = unique_path()
    receiver.script(path, [410, 200])
    job = make_job(store, receiver.url(path), [EventType.COMPLETED])
    store.mark_running(job.id)
    done = store.mark_failed(job.id, ErrorCode.GENERATION_FAILED, "it broke")
    assert enqueue_webhook(done, EventType.COMPLETED, publisher_app)
    wait_for(receiver, 1, path, worker)
    wait_past_any_retry(publisher_app, receiver, job.id, path)
    assert len(sent_before_marker(receiver, path)) == 1
    attempt = wait_for_attempts(store, job.id, 2)[0]
    assert (attempt.status_code, attempt.delivered) == (410, False)


def test_worker_does_not_follow_redirects_and_gives_up(worker, publisher_app, store,
                                                       receiver) -> None:
    path, target = unique_path(), unique_path()
    receiver.script(path, [302], headers={"location": receiver.url(target)})
    job = make_job(store, receiver.url(path), [EventType.COMPLETED])
    store.mark_running(job.id)
    done = store.mark_canceled(job.id)
    assert enqueue_webhook(done, EventType.COMPLETED, publisher_app)
    wait_for(receiver, WORKER_MAX_ATTEMPTS, path, worker)
    attempts = wait_for_attempts(store, job.id, WORKER_MAX_ATTEMPTS)
    wait_past_any_retry(publisher_app, receiver, job.id, path)  # the last was the last
    assert len(sent_before_marker(receiver, path)) == WORKER_MAX_ATTEMPTS
    assert receiver.requests(target) == []
    assert [(a.attempt, a.status_code, a.delivered) for a in attempts] == [
        (n, 302, False) for n in range(1, WORKER_MAX_ATTEMPTS + 1)]


def test_job_store_events_reach_the_receiver(worker, publisher_app, settings, receiver) -> None:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = JobStore(client, settings, on_event=WebhookPublisher(client, publisher_app))
    path = unique_path()
    job = make_job(store, receiver.url(path), [EventType.STARTED, EventType.COMPLETED])
    store.mark_running(job.id)
    store.mark_succeeded(job.id, [OutputImage(index=0, seed=1, width=64, height=64,
                                              format=OutputFormat.PNG)], Metrics())
    requests = wait_for(receiver, 2, path, worker)
    bodies = sorted((Webhook(SECRET).verify(r.body, r.headers) for r in requests),
                    key=lambda b: b["type"])
    assert [b["type"] for b in bodies] == ["job.completed", "job.started"]
    assert bodies[0]["data"]["status"] == "succeeded"
    assert bodies[0]["data"]["images"][0]["url"] == f"/v1/jobs/{job.id}/images/0"
    assert {r.headers["webhook-id"] for r in requests} == {
        f"evt_{job.id}_started_1", f"evt_{job.id}_completed"}


def test_worker_retries_a_trickling_receiver_as_timeouts(worker, publisher_app, store) -> None:
    with TricklingReceiver(interval=0.5) as slow:
        job = make_job(store, slow.url(unique_path()), [EventType.COMPLETED])
        assert enqueue_webhook(job, EventType.COMPLETED, publisher_app)
        attempts = wait_for_attempts(store, job.id, 2, timeout=4 * WORKER_DEADLINE_SECONDS)
    assert [a.attempt for a in attempts[:2]] == [1, 2]
    for attempt in attempts[:2]:
        assert attempt.error.startswith("timed out") and not attempt.delivered
        assert attempt.duration_seconds < WORKER_DEADLINE_SECONDS + DEADLINE_MARGIN_SECONDS


def test_trickling_receivers_do_not_hold_up_a_healthy_one(worker, publisher_app, store,
                                                          receiver) -> None:
    slow_count = 2 * WORKER_THREADS  # every thread busy with a trickle, twice over
    with TricklingReceiver(interval=0.5) as slow:
        slow_jobs = [make_job(store, slow.url(unique_path()), [EventType.COMPLETED])
                     for _ in range(slow_count)]
        for job in slow_jobs:  # queued first, so the healthy event waits behind them all
            assert enqueue_webhook(job, EventType.COMPLETED, publisher_app)
        path = unique_path()
        healthy = make_job(store, receiver.url(path), [EventType.COMPLETED])
        sent = time.monotonic()
        assert enqueue_webhook(healthy, EventType.COMPLETED, publisher_app)
        wait_for(receiver, 1, path, worker)
        delay = time.monotonic() - sent
        firsts = [wait_for_attempts(store, job.id, 1)[0] for job in slow_jobs]
    # Each thread frees at its trickle's deadline: the healthy event starts after
    # ceil(slow / threads) deadlines. The bound leaves one deadline and 5 s spare; without
    # a deadline it is never reached, as the trickles last for hours.
    rounds = math.ceil(slow_count / WORKER_THREADS)
    bound = (rounds + 1) * WORKER_DEADLINE_SECONDS + 5
    print(f"\nhealthy webhook behind {slow_count} trickling receivers ({WORKER_THREADS} threads, "
          f"{WORKER_DEADLINE_SECONDS} s deadline): arrived {delay:.2f} s after enqueueing "
          f"(expected about {rounds * WORKER_DEADLINE_SECONDS:.0f} s, bound {bound:.0f} s)")
    assert delay < bound
    for attempt in firsts:
        assert attempt.error.startswith("timed out")
        assert attempt.duration_seconds < WORKER_DEADLINE_SECONDS + DEADLINE_MARGIN_SECONDS


def test_webhook_worker_imports_no_torch() -> None:
    check = "import sys, worker.webhook_worker; assert 'torch' not in sys.modules, 'torch loaded'"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
