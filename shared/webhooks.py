"""Webhook events: URL vetting (SSRF), event bodies and ids, signing, and enqueueing.

Events follow the Standard Webhooks spec (https://www.standardwebhooks.com): the body is
``{"type", "timestamp", "data"}``, and the ``webhook-id``/``webhook-timestamp``/
``webhook-signature`` headers let receivers verify and de-duplicate. Delivery itself
runs in the webhook worker (worker/webhook_tasks.py); only JSON crosses the queue.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery
from standardwebhooks import Webhook

from shared.celery_app import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE
from shared.records import JobRecord, public_job
from shared.schemas import EventType
from shared.settings import Settings

logger = logging.getLogger(__name__)

EVENT_TYPE_NAMES = {
    EventType.STARTED: "job.started",
    EventType.PROGRESS: "job.progress",
    EventType.COMPLETED: "job.completed",
}

# Receivers get at most one progress event per job per this many seconds.
PROGRESS_THROTTLE_SECONDS = 1
PROGRESS_THROTTLE_KEY = "latentd:webhook:progress-throttle:{job_id}"


class WebhookURLRefused(ValueError):
    """The URL is not allowed as a webhook target (scheme or address)."""


class WebhookHostUnresolvable(ValueError):
    """The URL's host did not resolve; may be transient (DNS), so delivery retries it."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class WebhookTarget:
    """Where one delivery attempt may connect: the URL's host and port, and the addresses
    the host resolved to when it was checked. Delivery connects to these and never looks
    the name up again, so a DNS answer that changes after the check (rebinding) cannot
    steer the request elsewhere."""

    host: str
    port: int
    # As the resolver gave them (an IPv6 zone kept, so link-local still connects), in its
    # order, without repeats.
    addresses: tuple[str, ...]


def check_webhook_url(url: str, settings: Settings) -> None:
    """Raise ValueError unless ``url`` is http(s) and, unless allowed, points at public addresses.

    Every address the host resolves to must be public, or a name with one private
    record could still steer the request inside. Checked at submit time and again
    before each delivery attempt (``resolve_webhook_target``), because DNS answers change.
    """
    host, port = _host_and_port(url)
    if not settings.webhook_allow_private:
        _vetted_addresses(host, port, settings)


def resolve_webhook_target(url: str, settings: Settings) -> WebhookTarget:
    """Resolve the URL's host once and vet every address; the attempt connects only to these.

    Resolved even when private targets are allowed: the connection is pinned either way.
    """
    host, port = _host_and_port(url)
    return WebhookTarget(host, port, _vetted_addresses(host, port, settings))


def _host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookURLRefused(f"webhook url must use http or https, not '{parts.scheme}'")
    host = parts.hostname
    if not host:
        raise WebhookURLRefused("webhook url has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookURLRefused(f"webhook url has an invalid port: {exc}") from None
    return host, port


def _vetted_addresses(host: str, port: int, settings: Settings) -> tuple[str, ...]:
    addresses = _resolve(host, port)
    if not settings.webhook_allow_private:
        for address in addresses:
            if not _is_public(_ip(address)):
                raise WebhookURLRefused(
                    f"webhook url host '{host}' resolves to non-public address {address}; "
                    "set LATENTD_WEBHOOK_ALLOW_PRIVATE=true to allow local receivers"
                )
    return addresses


def _resolve(host: str, port: int) -> tuple[str, ...]:
    try:
        # Literal IPs need no DNS; the zone of a link-local IPv6 ("fe80::1%eth0") is dropped.
        return (str(ipaddress.ip_address(host.split("%", 1)[0])),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookHostUnresolvable(
            f"webhook url host '{host}' does not resolve: {exc}"
        ) from None
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def _ip(address: str) -> IPAddress:
    return ipaddress.ip_address(address.split("%", 1)[0])


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # "::ffff:127.0.0.1" reaches 127.0.0.1, so judge the IPv4 address it maps to.
        if address.ipv4_mapped is not None:
            return _is_public(address.ipv4_mapped)
        # Site-local (fec0::/10, deprecated) is still routed inside some networks, and
        # Python counts it as global.
        if address.is_site_local:
            return False
        # 6to4 (2002::/16) and Teredo (2001::/32) tunnel to the IPv4 addresses they
        # embed: "2002:7f00:1::" is a way to say 127.0.0.1.
        embedded = [address.sixtofour] if address.sixtofour is not None else []
        embedded += list(address.teredo or ())
        if not all(_is_public(ipv4) for ipv4 in embedded):
            return False
    # is_global alone lets multicast through, hence the explicit list.
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def event_id(job: JobRecord, event_type: EventType) -> str:
    """Deterministic id, so receivers can de-duplicate: one ``completed`` id per job, ever."""
    if event_type is EventType.COMPLETED:
        return f"evt_{job.id}_completed"
    if event_type is EventType.STARTED:
        return f"evt_{job.id}_started_{job.attempts}"
    if event_type is EventType.PROGRESS:
        return f"evt_{job.id}_progress_{job.progress.step}"
    raise ValueError(f"event type '{event_type}' is not sent as a webhook")


def build_event(job: JobRecord, event_type: EventType) -> dict[str, Any]:
    """The Standard Webhooks body for this job event: ``{"type", "timestamp", "data"}``;
    ``data`` is the public job, as ``GET /v1/jobs/{id}`` shows it."""
    data = public_job(job).model_dump(mode="json")
    return {
        "type": EVENT_TYPE_NAMES[event_type],
        # The time the job changed, not the time of sending: stable across retries.
        "timestamp": data["updated_at"],
        "data": data,
    }


def sign(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """Standard Webhooks headers (id, timestamp, signature) for ``body`` sent at ``timestamp``."""
    timestamp = timestamp.astimezone(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, timestamp, body),
    }


def wants_event(job: JobRecord, event_type: EventType) -> bool:
    """True if the job asked for a webhook on this event."""
    spec = job.request.webhook
    return spec is not None and event_type in spec.events


def enqueue_webhook(job: JobRecord, event_type: EventType, app: Celery) -> bool:
    """Publish a delivery task if the job's webhook asks for this event; True if published."""
    spec = job.request.webhook
    if spec is None or event_type not in spec.events:
        return False
    msg_id = event_id(job, event_type)
    # Serialised once here, so every retry signs and sends the very same bytes.
    payload = json.dumps(build_event(job, event_type), separators=(",", ":"))
    app.send_task(
        DELIVER_WEBHOOK_TASK,
        args=[job.id, msg_id, event_type.value, str(spec.url), payload],
        queue=WEBHOOK_QUEUE,
    )
    return True


class WebhookPublisher:
    """The job store's ``on_event`` callback: enqueues webhooks, throttling progress per job."""

    def __init__(self, client: redis.Redis, app: Celery) -> None:
        self.client = client
        self.app = app

    def __call__(self, job: JobRecord, event_type: EventType) -> None:
        if not wants_event(job, event_type):
            return
        if event_type is EventType.PROGRESS and not self._take_progress_slot(job.id):
            return
        try:
            enqueue_webhook(job, event_type, self.app)
        except Exception:
            # The job's state change is already stored; failing the caller would not
            # bring the event back, so report it and let the job go on.
            logger.exception("could not enqueue webhook %s for job %s", event_type, job.id)

    def _take_progress_slot(self, job_id: str) -> bool:
        key = PROGRESS_THROTTLE_KEY.format(job_id=job_id)
        return bool(self.client.set(key, 1, nx=True, ex=PROGRESS_THROTTLE_SECONDS))
