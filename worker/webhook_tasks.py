"""Webhook delivery: a signed POST per attempt, Celery retries with backoff, each attempt recorded.

Imports no torch: the webhook worker is a light process of its own.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from celery import shared_task

from shared.celery_app import DELIVER_WEBHOOK_TASK
from shared.jobstore import JobStore
from shared.metrics import MetricsRecorder
from shared.schemas import EventType, WebhookAttempt
from shared.settings import Settings
from shared.webhooks import (
    WebhookHostUnresolvable,
    WebhookTarget,
    resolve_webhook_target,
    sign,
)
from worker.webhook_http import PinnedBackend, PinnedTransport

logger = logging.getLogger(__name__)

USER_AGENT = "latentd-webhooks/0.1"
SECRET_MISSING = "LATENTD_WEBHOOK_SECRET is not set"


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt gave: HTTP status or error, and whether trying again can help."""

    status_code: int | None
    error: str | None
    delivered: bool
    retryable: bool


def retry_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential backoff with "equal jitter": the ceiling is ``base * 2**attempt``
    capped at ``cap``; half of it is fixed and half random. The fixed half bounds
    the schedule from below (with base 5 s the 7 waits between 8 attempts add up
    to at least 635 s, so a receiver down for 10 minutes still gets the event),
    and the random half keeps a fleet of retries from arriving in lockstep.
    """
    ceiling = min(cap, base * 2**attempt)
    return ceiling / 2 + rng.random() * ceiling / 2


class WebhookSender:
    """Sends one signed event per call over a fresh connection pinned to the vetted
    addresses. Built once per process: the TLS context loads the CA bundle once."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        # trust_env=False here and on the client: no CA bundle or proxy from the
        # environment, and no .netrc credentials sent to URLs that users choose.
        self.ssl_context = ssl_context or httpx.create_ssl_context(trust_env=False)

    def post_event(
        self, url: str, target: WebhookTarget, deadline: float, msg_id: str, payload: str,
        secret: str,
    ) -> DeliveryOutcome:
        """POST one signed event; 2xx delivers, 410 stops for good, anything else is retryable.

        ``deadline`` (time.monotonic seconds) ends the attempt: connect, send, status and
        headers. The body is never read.
        """
        headers = {
            **sign(secret, msg_id, datetime.now(UTC), payload),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        transport = PinnedTransport(PinnedBackend(target, deadline), self.ssl_context)
        try:
            # No httpx timeout: the backend's deadline bounds every socket operation.
            # Streamed and never read: only the status matters, and a receiver must not
            # be able to make us download a large body.
            with (
                httpx.Client(transport=transport, timeout=None, follow_redirects=False,
                             trust_env=False) as http,
                http.stream("POST", url, content=payload.encode(), headers=headers) as response,
            ):
                status = response.status_code
                location = response.headers.get("location")
        except httpx.TimeoutException as exc:
            return DeliveryOutcome(None, f"timed out: {type(exc).__name__}", False, True)
        except httpx.HTTPError as exc:
            return DeliveryOutcome(None, f"request failed: {type(exc).__name__}: {exc}",
                                   False, True)
        if 200 <= status < 300:
            return DeliveryOutcome(status, None, True, False)
        if status == 410:
            # Standard Webhooks: 410 Gone means the endpoint is gone; stop sending.
            return DeliveryOutcome(status, "endpoint answered 410 Gone", False, False)
        if 300 <= status < 400:
            # Redirects are not followed: the target would skip the SSRF check.
            return DeliveryOutcome(status, f"redirect not followed (location: {location})",
                                   False, True)
        return DeliveryOutcome(status, f"endpoint answered HTTP {status}", False, True)


# -- one attempt --------------------------------------------------------------------------


def attempt_delivery(
    sender: WebhookSender, settings: Settings, url: str, msg_id: str, payload: str
) -> DeliveryOutcome:
    """One attempt, after re-checking the URL (DNS may have changed since submission).

    The attempt's deadline starts here, so a slow DNS answer eats into it rather than
    adding to it.
    """
    deadline = time.monotonic() + settings.webhook_timeout_seconds
    if settings.webhook_secret is None:
        # Unsigned events could be forged by anyone who knows the URL: refuse to send.
        return DeliveryOutcome(None, SECRET_MISSING, False, False)
    try:
        target = resolve_webhook_target(url, settings)
    except WebhookHostUnresolvable as exc:
        return DeliveryOutcome(None, str(exc), False, True)
    except ValueError as exc:
        return DeliveryOutcome(None, f"refused: {exc}", False, False)
    return sender.post_event(url, target, deadline, msg_id, payload, settings.webhook_secret)


def deliver_and_record(
    store: JobStore,
    sender: WebhookSender,
    settings: Settings,
    *,
    job_id: str,
    event_id: str,
    event_type: str,
    url: str,
    payload: str,
    attempt: int,
) -> DeliveryOutcome:
    """Make attempt number ``attempt`` and record it on the job."""
    at = datetime.now(UTC)
    started = time.monotonic()
    outcome = attempt_delivery(sender, settings, url, event_id, payload)
    store.record_webhook_attempt(
        job_id,
        WebhookAttempt(
            event_id=event_id,
            event_type=EventType(event_type),
            attempt=attempt,
            at=at,
            status_code=outcome.status_code,
            error=outcome.error,
            duration_seconds=round(time.monotonic() - started, 4),
            delivered=outcome.delivered,
        ),
    )
    return outcome


@dataclass(frozen=True)
class WebhookRuntime:
    """What the webhook worker process holds: built once by worker/webhook_worker.py."""

    store: JobStore
    sender: WebhookSender
    settings: Settings
    metrics: MetricsRecorder | None = None  # None: attempts are not counted


_runtime: WebhookRuntime | None = None


def install_runtime(runtime: WebhookRuntime) -> None:
    global _runtime
    _runtime = runtime


def current_runtime() -> WebhookRuntime:
    if _runtime is None:
        raise RuntimeError("no webhook runtime: start the worker with -A worker.webhook_worker")
    return _runtime


def _retry_cap(settings: Settings) -> float:
    # The Redis broker hands a countdown task to a worker at once and redelivers it
    # if unacknowledged past the visibility timeout: keep waits well below it.
    return min(settings.webhook_retry_max_seconds, settings.broker_visibility_timeout / 2)


@shared_task(name=DELIVER_WEBHOOK_TASK, bind=True, acks_late=True, ignore_result=True)
def deliver_webhook(
    self, job_id: str, event_id: str, event_type: str, url: str, payload: str
) -> None:
    """Deliver one webhook event; on a retryable failure, retry later with backoff."""
    runtime = current_runtime()
    settings = runtime.settings
    attempt = self.request.retries + 1
    outcome = deliver_and_record(
        runtime.store, runtime.sender, settings, job_id=job_id, event_id=event_id,
        event_type=event_type, url=url, payload=payload, attempt=attempt,
    )
    if runtime.metrics is not None:
        runtime.metrics.record_webhook_attempt(event_type, outcome.delivered, outcome.retryable,
                                               attempt >= settings.webhook_max_attempts)
    if not outcome.retryable:
        return
    if attempt >= settings.webhook_max_attempts:
        logger.warning("webhook %s for job %s given up after %d attempts: %s",
                       event_id, job_id, attempt, outcome.error)
        return
    delay = retry_delay(attempt, settings.webhook_retry_base_seconds, _retry_cap(settings),
                        random.SystemRandom())
    # Same task id and arguments, so the same webhook-id goes out on every attempt.
    raise self.retry(countdown=delay, max_retries=settings.webhook_max_attempts - 1)
