"""Worker liveness in Redis: each generation worker refreshes one expiring key per model.

A worker that dies simply stops refreshing and its key expires, so "is anyone serving
model X" is a key scan, with no registry to clean up. The key's value is the job the
worker is running ('' when idle): the API's reaper (api/services/reaper.py) takes back
a running job whose claiming worker's key expired, or names another job.
"""

from __future__ import annotations

import redis

HEARTBEAT_PREFIX = "latentd:workers"
# A worker beats every HEARTBEAT_INTERVAL_SECONDS (LATENTD_HEARTBEAT_INTERVAL_SECONDS);
# missing three beats means gone. The key's lifetime bounds how fast a dead worker's job
# is noticed.
HEARTBEAT_INTERVAL_SECONDS = 5
MISSED_BEATS = 3
HEARTBEAT_TTL_SECONDS = MISSED_BEATS * HEARTBEAT_INTERVAL_SECONDS


def heartbeat_key(model: str, worker: str) -> str:
    return f"{HEARTBEAT_PREFIX}:{model}:{worker}"


def beat(
    client: redis.Redis, model: str, worker: str, ttl_seconds: float = HEARTBEAT_TTL_SECONDS,
    job_id: str = "",
) -> None:
    """Mark ``worker`` as serving ``model``, running ``job_id`` ('' = idle), for the next
    ``ttl_seconds``."""
    client.set(heartbeat_key(model, worker), job_id, px=max(1, round(ttl_seconds * 1000)))


def stop(client: redis.Redis, model: str, worker: str) -> None:
    """Withdraw at clean shutdown, so readiness drops at once instead of after the TTL."""
    client.delete(heartbeat_key(model, worker))


def live_workers(client: redis.Redis, model: str) -> list[str]:
    """Names of the workers whose heartbeat for ``model`` has not expired."""
    prefix = f"{HEARTBEAT_PREFIX}:{model}:"
    names = []
    for key in client.scan_iter(match=_escape_glob(prefix) + "*", count=500):
        key = key.decode() if isinstance(key, bytes) else key
        names.append(key.removeprefix(prefix))
    return sorted(names)


def _escape_glob(text: str) -> str:
    # Model names may hold glob characters; SCAN's MATCH must see them literally.
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
