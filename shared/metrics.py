"""Service-wide metrics in Redis: the counters and histograms every process adds to, and
the process stats each generation worker publishes with its heartbeat.

A job's changes are made by whichever process makes them (the API replica that took the
submit or the cancel, the worker that ran it, the reaper of any replica), and the workers
are Celery prefork children on many hosts that come and go. So the counts live in Redis,
which they all share already: a job's transitions are counted by the job store's own
scripts, in the same atomic step as the change they count (``COUNT_JOB_EVENT_LUA``,
part of every job script), so each change is counted exactly once and costs no round
trip of its own; webhook attempts are added by ``MetricsRecorder``, one MULTI/EXEC each.
Every API process's ``GET /metrics`` (api/services/metrics.py) reads the same totals, so
any replica gives the one service-wide view, and a process that restarts or crashes
loses none of the counts it made.

Layout (everything under ``latentd:metrics:``):
  latentd:metrics:<counter>        hash: JSON list of label values -> count
  latentd:metrics:<histogram>      hash: ``bucket:<le>:<labels JSON>`` -> observations in
                                   that bucket alone (not cumulative: the reader adds them
                                   up), ``sum:<labels JSON>`` -> their sum
  latentd:metrics:workers          set of the worker names that publish stats
  latentd:metrics:worker:<worker>  hash of one worker's stats (``WorkerStats``), expiring
                                   with its heartbeat
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
from prometheus_client.utils import floatToGoString
from redis.typing import EncodableT, FieldT

log = logging.getLogger(__name__)

PREFIX = "latentd:metrics"
WORKERS_KEY = f"{PREFIX}:workers"
WORKER_STATS_PREFIX = f"{PREFIX}:worker:"
INF = "+Inf"


@dataclass(frozen=True)
class Counter:
    """A counter family; ``name`` without ``_total`` (the exposition adds it)."""

    name: str
    help: str
    labels: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{PREFIX}:{self.name}"


@dataclass(frozen=True)
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]  # upper bounds, ascending; +Inf is implied

    @property
    def key(self) -> str:
        return f"{PREFIX}:{self.name}"

    def bucket_of(self, value: float) -> str:
        """The ``le`` of the first bucket that holds ``value`` (bounds are inclusive)."""
        index = bisect.bisect_left(self.buckets, value)
        return floatToGoString(self.buckets[index]) if index < len(self.buckets) else INF


# From one small image on a GPU (tens of ms) to a job that queued for an hour.
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                   1800.0, 3600.0)

JOBS_SUBMITTED = Counter("latentd_jobs_submitted", "Jobs accepted: stored and queued.",
                         ("model",))
JOBS_STARTED = Counter(
    "latentd_jobs_started",
    "Runs claimed by a generation worker (a job re-run after its worker died counts again).",
    ("model",))
JOBS_REQUEUED = Counter(
    "latentd_jobs_requeued",
    "Running jobs put back in the queue because their worker stopped beating.", ("model",))
JOBS_FINISHED = Counter(
    "latentd_jobs_finished",
    "Jobs that reached a terminal status; error_code is empty for succeeded jobs.",
    ("model", "status", "error_code"))
JOB_QUEUE_SECONDS = Histogram(
    "latentd_job_queue_seconds",
    "Seconds a succeeded job waited, from its submit to its (last) start.",
    ("model",), SECONDS_BUCKETS)
JOB_INFERENCE_SECONDS = Histogram(
    "latentd_job_inference_seconds", "Seconds the pipeline ran for a succeeded job.",
    ("model",), SECONDS_BUCKETS)
JOB_TOTAL_SECONDS = Histogram(
    "latentd_job_total_seconds",
    "Seconds from submit until a succeeded job's images were stored.", ("model",),
    SECONDS_BUCKETS)
WEBHOOK_ATTEMPTS = Counter(
    "latentd_webhook_attempts", "Webhook delivery attempts; result: delivered or failed.",
    ("event", "result"))
WEBHOOK_DELIVERIES = Counter(
    "latentd_webhook_deliveries",
    "Webhook events settled; outcome: delivered, gave_up (every attempt failed) or stopped "
    "(not retried: 410 Gone, a refused URL, no signing secret).",
    ("event", "outcome"))

COUNTERS = (JOBS_SUBMITTED, JOBS_STARTED, JOBS_REQUEUED, JOBS_FINISHED, WEBHOOK_ATTEMPTS,
            WEBHOOK_DELIVERIES)
HISTOGRAMS = (JOB_QUEUE_SECONDS, JOB_INFERENCE_SECONDS, JOB_TOTAL_SECONDS)


def encode_labels(values: Sequence[str]) -> str:
    return json.dumps(list(values), separators=(",", ":"))


# Which field of a succeeded job's ``metrics`` each job histogram observes.
JOB_HISTOGRAM_FIELDS = ((JOB_QUEUE_SECONDS, "queue_seconds"),
                        (JOB_INFERENCE_SECONDS, "inference_seconds"),
                        (JOB_TOTAL_SECONDS, "total_seconds"))


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _lua_count_job_event() -> str:
    """``count_job_event(f, event)``: counts a published job event from the job's hash
    fields ``f``, as ``encode_labels`` would label it, in the script that wrote it.

    The model's label text is written once, by Python at create (the job hash's
    ``labels``), so a model name of any characters gets exactly the label a Python
    writer gives it; a job stored before that field existed falls back to cjson's text,
    which the reader decodes to the same labels. Bucket bounds are inclusive, as in
    ``Histogram.bucket_of``, and named by the same text."""
    assert all(h.buckets == SECONDS_BUCKETS for h, _ in JOB_HISTOGRAM_FIELDS)
    buckets = ", ".join(f"{{{bound!r}, {_lua_string(floatToGoString(bound))}}}"
                        for bound in SECONDS_BUCKETS)
    histograms = ", ".join(f"{{{_lua_string(h.key)}, {_lua_string(name)}}}"
                           for h, name in JOB_HISTOGRAM_FIELDS)
    return f"""
local SECONDS_BUCKETS = {{{buckets}}}
local JOB_HISTOGRAMS = {{{histograms}}}
local function count_job_event(f, event)
  if event ~= 'queued' and event ~= 'started' and event ~= 'completed' then return end
  local model = f.labels or cjson.encode({{cjson.decode(f.doc).request.model}})
  if event == 'queued' then
    local key = tonumber(f.attempts or '0') > 0 and {_lua_string(JOBS_REQUEUED.key)}
      or {_lua_string(JOBS_SUBMITTED.key)}
    redis.call('HINCRBY', key, model, 1)
  elseif event == 'started' then
    redis.call('HINCRBY', {_lua_string(JOBS_STARTED.key)}, model, 1)
  else
    local code = ''
    local err = f.error and cjson.decode(f.error)
    if type(err) == 'table' and type(err.code) == 'string' then code = err.code end
    redis.call('HINCRBY', {_lua_string(JOBS_FINISHED.key)},
               string.sub(model, 1, -2) .. ',"' .. f.status .. '","' .. code .. '"]', 1)
    if f.status == 'succeeded' and f.metrics then
      local metrics = cjson.decode(f.metrics)
      for _, histogram in ipairs(JOB_HISTOGRAMS) do
        local value = type(metrics) == 'table' and metrics[histogram[2]]
        if type(value) == 'number' then
          local le = {_lua_string(INF)}
          for _, bucket in ipairs(SECONDS_BUCKETS) do
            if value <= bucket[1] then le = bucket[2] break end
          end
          redis.call('HINCRBY', histogram[1], 'bucket:' .. le .. ':' .. model, 1)
          redis.call('HINCRBYFLOAT', histogram[1], 'sum:' .. model, value)
        end
      end
    end
  end
end
"""


COUNT_JOB_EVENT_LUA = _lua_count_job_event()


def decode_labels(text: str, count: int) -> tuple[str, ...] | None:
    """Label values stored by ``encode_labels``; None for a field of another shape (a
    family whose labels changed between versions is skipped, not misread)."""
    try:
        values = json.loads(text)
    except ValueError:
        return None
    if not isinstance(values, list) or len(values) != count:
        return None
    return tuple(str(value) for value in values)


# -- writing: one MULTI/EXEC per change ----------------------------------------------


class MetricsRecorder:
    """Adds a webhook delivery attempt to the service-wide totals (a job's transitions
    count themselves: ``COUNT_JOB_EVENT_LUA``).

    Each call is one MULTI/EXEC round trip, so a scrape never sees a histogram's bucket
    without its sum. A failure is logged and dropped: a count must never undo or repeat
    the change it counts.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def record_webhook_attempt(
        self, event: str, delivered: bool, retryable: bool, last_attempt: bool
    ) -> None:
        """Count one delivery attempt of a webhook event, and the event once it is settled."""
        pipe = self._redis.pipeline(transaction=True)
        _count(pipe, WEBHOOK_ATTEMPTS, (event, "delivered" if delivered else "failed"))
        outcome = webhook_outcome(delivered, retryable, last_attempt)
        if outcome is not None:
            _count(pipe, WEBHOOK_DELIVERIES, (event, outcome))
        self._execute(pipe)

    def _execute(self, pipe: redis.client.Pipeline) -> None:
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not record metrics: %s", exc)


def webhook_outcome(delivered: bool, retryable: bool, last_attempt: bool) -> str | None:
    """How an attempt settles its event (``WEBHOOK_DELIVERIES``); None: it will be retried."""
    if delivered:
        return "delivered"
    if not retryable:
        return "stopped"
    return "gave_up" if last_attempt else None


def _count(pipe: redis.client.Pipeline, counter: Counter, labels: Sequence[str]) -> None:
    pipe.hincrby(counter.key, encode_labels(labels), 1)


# -- reading: what a scrape turns into metric families ------------------------------


@dataclass
class HistogramTotals:
    """One label set's histogram: observations per bucket (not cumulative) and their sum."""

    buckets: dict[str, int] = field(default_factory=dict)
    sum: float = 0.0


@dataclass
class Totals:
    counters: dict[Counter, dict[tuple[str, ...], int]]
    histograms: dict[Histogram, dict[tuple[str, ...], HistogramTotals]]


def read_totals(client: redis.Redis) -> Totals:
    """Every counter and histogram as Redis holds it now (one round trip)."""
    pipe = client.pipeline(transaction=True)
    for family in (*COUNTERS, *HISTOGRAMS):
        pipe.hgetall(family.key)
    replies = iter(pipe.execute())
    counters: dict[Counter, dict[tuple[str, ...], int]] = {}
    for counter in COUNTERS:
        counts = counters[counter] = {}
        for text, value in _text_items(next(replies)):
            labels = decode_labels(text, len(counter.labels))
            if labels is not None:
                counts[labels] = int(value)
    histograms: dict[Histogram, dict[tuple[str, ...], HistogramTotals]] = {}
    for histogram in HISTOGRAMS:
        series = histograms[histogram] = {}
        for text, value in _text_items(next(replies)):
            kind, _, rest = text.partition(":")
            le = None
            if kind == "bucket":
                le, _, rest = rest.partition(":")
            labels = decode_labels(rest, len(histogram.labels))
            if labels is None:
                continue
            totals = series.setdefault(labels, HistogramTotals())
            if le is not None:
                totals.buckets[le] = int(value)
            elif kind == "sum":
                totals.sum = float(value)
    return Totals(counters, histograms)


def cumulative_buckets(histogram: Histogram, totals: HistogramTotals) -> list[tuple[str, float]]:
    """``(le, observations <= le)`` for every bound, ascending, ending with +Inf; bounds
    stored by an older version with other buckets are kept in their place."""
    bounds = {floatToGoString(bound) for bound in histogram.buckets} | set(totals.buckets)
    bounds.discard(INF)
    running = 0
    cumulative = []
    for le in sorted(bounds, key=float):
        running += totals.buckets.get(le, 0)
        cumulative.append((le, float(running)))
    cumulative.append((INF, float(running + totals.buckets.get(INF, 0))))
    return cumulative


def _text_items(reply: dict) -> list[tuple[str, str]]:
    return [(_text(key), _text(value)) for key, value in reply.items()]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- worker process stats -------------------------------------------------------------


@dataclass(frozen=True)
class WorkerStats:
    """What a generation worker process reports of itself at each heartbeat."""

    models: tuple[str, ...]
    resident_memory_bytes: int
    gpu_device: str | None = None  # None: no CUDA device in use
    gpu_allocated_bytes: int | None = None  # torch.cuda.memory_allocated
    gpu_reserved_bytes: int | None = None  # torch.cuda.memory_reserved (the cache)
    # The served models whose weights are in memory now (None: not reported, i.e. all of
    # ``models``); the rest load when a job needs them (LATENTD_WORKER_MEMORY_BUDGET).
    loaded_models: tuple[str, ...] | None = None

    @property
    def hot_models(self) -> tuple[str, ...]:
        return self.models if self.loaded_models is None else self.loaded_models


def worker_stats_key(worker: str) -> str:
    return WORKER_STATS_PREFIX + worker


def publish_worker_stats(
    client: redis.Redis, worker: str, stats: WorkerStats, ttl_seconds: float
) -> None:
    """Replace ``worker``'s stats, to expire after ``ttl_seconds`` unless published again."""
    key = worker_stats_key(worker)
    fields: dict[FieldT, EncodableT] = {"models": json.dumps(list(stats.models)),
              "resident_memory_bytes": stats.resident_memory_bytes}
    if stats.loaded_models is not None:
        fields["loaded_models"] = json.dumps(list(stats.loaded_models))
    if stats.gpu_device is not None:
        fields["gpu_device"] = stats.gpu_device
        fields["gpu_allocated_bytes"] = stats.gpu_allocated_bytes or 0
        fields["gpu_reserved_bytes"] = stats.gpu_reserved_bytes or 0
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=fields)
    pipe.pexpire(key, max(1, round(ttl_seconds * 1000)))
    pipe.sadd(WORKERS_KEY, worker)
    pipe.execute()


def withdraw_worker_stats(client: redis.Redis, worker: str) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.delete(worker_stats_key(worker))
    pipe.srem(WORKERS_KEY, worker)
    pipe.execute()


def read_worker_stats(client: redis.Redis) -> dict[str, WorkerStats]:
    """Stats of every worker whose stats have not expired; forgets the ones that have."""
    workers = sorted(_text(name) for name in client.smembers(WORKERS_KEY))
    if not workers:
        return {}
    pipe = client.pipeline(transaction=False)
    for worker in workers:
        pipe.hgetall(worker_stats_key(worker))
    stats, gone = {}, []
    for worker, reply in zip(workers, pipe.execute(), strict=True):
        fields = dict(_text_items(reply))
        if not fields:
            gone.append(worker)
            continue
        device = fields.get("gpu_device")
        loaded = fields.get("loaded_models")
        stats[worker] = WorkerStats(
            models=tuple(json.loads(fields.get("models", "[]"))),
            resident_memory_bytes=int(fields.get("resident_memory_bytes", 0)),
            gpu_device=device,
            gpu_allocated_bytes=int(fields["gpu_allocated_bytes"]) if device else None,
            gpu_reserved_bytes=int(fields["gpu_reserved_bytes"]) if device else None,
            loaded_models=tuple(json.loads(loaded)) if loaded is not None else None,
        )
    if gone:
        # A worker that comes back meanwhile adds itself again at its next beat.
        client.srem(WORKERS_KEY, *gone)
    return stats
