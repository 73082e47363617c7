"""Worker liveness in Redis: each generation worker refreshes one expiring key per model.

A worker that dies simply stops refreshing and its key expires. Each beat also files the
worker's name in the model's index set, so "who serves model X" reads that set and checks
each name's key (one script, whatever the size of the keyspace; names whose key expired
leave the set as they are seen), instead of scanning every key in Redis: with 100,000
jobs stored, that scan took 100 ms. The key's value is the job the worker is running (''
when idle): the API's reaper (api/services/reaper.py) takes back a running job whose
claiming worker's key expired, or names another job.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

HEARTBEAT_PREFIX = "latentd:workers"
# set per model: the names of the workers that beat for it (some perhaps expired since)
WORKER_INDEX_PREFIX = "latentd:worker-index"
# A worker beats every HEARTBEAT_INTERVAL_SECONDS (LATENTD_HEARTBEAT_INTERVAL_SECONDS);
# missing three beats means gone. The key's lifetime bounds how fast a dead worker's job
# is noticed.
HEARTBEAT_INTERVAL_SECONDS = 5
MISSED_BEATS = 3
HEARTBEAT_TTL_SECONDS = MISSED_BEATS * HEARTBEAT_INTERVAL_SECONDS


def heartbeat_key(model: str, worker: str) -> str:
    return f"{HEARTBEAT_PREFIX}:{model}:{worker}"


def worker_index_key(model: str) -> str:
    return f"{WORKER_INDEX_PREFIX}:{model}"


# The live workers of each model whose index set is in KEYS (ARGV: each model's heartbeat
# key prefix, in the same order): each name whose key exists; the others leave the set.
_LIVE_WORKERS = r"""
local found = {}
for i, index in ipairs(KEYS) do
  local live = {}
  for _, worker in ipairs(redis.call('SMEMBERS', index)) do
    if redis.call('EXISTS', ARGV[i] .. worker) == 1 then
      live[#live + 1] = worker
    else
      redis.call('SREM', index, worker)
    end
  end
  found[i] = live
end
return found
"""


def beat(
    client: redis.Redis, model: str, worker: str, ttl_seconds: float = HEARTBEAT_TTL_SECONDS,
    job_id: str = "",
) -> None:
    """Mark ``worker`` as serving ``model``, running ``job_id`` ('' = idle), for the next
    ``ttl_seconds``."""
    pipe = client.pipeline(transaction=False)
    pipe.set(heartbeat_key(model, worker), job_id, px=max(1, round(ttl_seconds * 1000)))
    pipe.sadd(worker_index_key(model), worker)
    pipe.execute()


def stop(client: redis.Redis, model: str, worker: str) -> None:
    """Withdraw at clean shutdown, so readiness drops at once instead of after the TTL."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(heartbeat_key(model, worker))
    pipe.srem(worker_index_key(model), worker)
    pipe.execute()


def live_workers(client: redis.Redis, model: str) -> list[str]:
    """Names of the workers whose heartbeat for ``model`` has not expired."""
    return live_workers_of(client, [model])[model]


def live_workers_of(client: redis.Redis, models: Sequence[str]) -> dict[str, list[str]]:
    """``live_workers`` of each of ``models``, in one round trip (sorted names)."""
    models = list(dict.fromkeys(models))
    if not models:
        return {}
    found = client.register_script(_LIVE_WORKERS)(
        keys=[worker_index_key(model) for model in models],
        args=[heartbeat_key(model, "") for model in models])
    return {model: sorted(_text(name) for name in names) or _scanned(client, model)
            for model, names in zip(models, found, strict=True)}


def _scanned(client: redis.Redis, model: str) -> list[str]:
    """The workers of ``model`` found by scanning the keyspace: those of a version that
    beat without the index (a rolling upgrade); costs a pass over every key, so only
    asked when the index names none."""
    prefix = f"{HEARTBEAT_PREFIX}:{model}:"
    return sorted(_text(key).removeprefix(prefix)
                  for key in client.scan_iter(match=_escape_glob(prefix) + "*", count=500))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _escape_glob(text: str) -> str:
    # Model names may hold glob characters; SCAN's MATCH must see them literally.
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
