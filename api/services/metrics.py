"""``GET /metrics``: the whole service's metrics, read from Redis at each scrape.

The counters and histograms are the service-wide totals every process adds to
(shared/metrics.py); the gauges are measured now: queue depth and the oldest queued job's
age per model, running jobs, live workers per model (their heartbeat keys), and each
generation worker's memory (the stats its heartbeat publishes). Nothing here is about
this API process alone, so every replica answers the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from shared.heartbeat import live_workers_of
from shared.jobstore.keys import RUNNING_KEY, queue_key
from shared.jobstore.transitions import LEVEL_WEIGHT, QUEUE_EPOCH_US
from shared.metrics import (
    JOBS_REQUEUED,
    JOBS_STARTED,
    JOBS_SUBMITTED,
    cumulative_buckets,
    read_totals,
    read_worker_stats,
)
from shared.priorities import PRIORITY_BANDS

log = logging.getLogger(__name__)

QUEUE_LEVELS = sorted({level for band in PRIORITY_BANDS.values() for level in band})
# Counters with only a model label start at 0 for every registered model, so that a
# rate() over them works from the first job on.
_PER_MODEL = (JOBS_SUBMITTED, JOBS_STARTED, JOBS_REQUEUED)


class ServiceCollector:
    """A prometheus_client collector over the Redis the service shares."""

    def __init__(self, client: redis.Redis, models: Sequence[str]) -> None:
        self._redis = client
        self._models = list(models)

    def collect(self) -> Iterable[Metric]:
        try:
            families, up = [*self._totals(), *self._queues(), *self._workers()], 1
        except redis.RedisError as exc:
            # Still a 200 with redis_up 0: "the service's store is down" is an answer an
            # alert can use, a failed scrape is not.
            log.warning("metrics: Redis is unreachable: %s", exc)
            families, up = [], 0
        yield GaugeMetricFamily("latentd_redis_up", "1 when the scrape could read Redis.",
                                value=up)
        yield from families

    def _totals(self) -> Iterator[Metric]:
        totals = read_totals(self._redis)
        for counter, counts in totals.counters.items():
            family = CounterMetricFamily(counter.name, counter.help, labels=counter.labels)
            if counter in _PER_MODEL:
                counts = {(model,): 0 for model in self._models} | counts
            for labels, value in sorted(counts.items()):
                family.add_metric(labels, value)
            yield family
        for histogram, series in totals.histograms.items():
            hist = HistogramMetricFamily(histogram.name, histogram.help,
                                         labels=histogram.labels)
            for labels, data in sorted(series.items()):
                hist.add_metric(labels, cumulative_buckets(histogram, data), data.sum)
            yield hist

    def _queues(self) -> Iterator[Metric]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.zcard(RUNNING_KEY)
        for model in self._models:
            pipe.zcard(queue_key(model))
            for level in QUEUE_LEVELS:
                # A queue score is level * LEVEL_WEIGHT + µs since QUEUE_EPOCH_US at which
                # the job was queued (shared/jobstore/transitions.py): each level's first
                # entry is its oldest job.
                pipe.zrangebyscore(queue_key(model), level * LEVEL_WEIGHT,
                                   f"({(level + 1) * LEVEL_WEIGHT}", start=0, num=1,
                                   withscores=True)
        replies = iter(pipe.execute())
        seconds, micros = next(replies)
        now_us = seconds * 10**6 + micros - QUEUE_EPOCH_US
        running = GaugeMetricFamily("latentd_jobs_running", "Jobs running now.",
                                    value=next(replies))
        depth = GaugeMetricFamily("latentd_queue_depth", "Jobs queued now.", labels=["model"])
        age = GaugeMetricFamily(
            "latentd_queue_oldest_age_seconds",
            "Seconds the longest-waiting queued job has waited since it was queued (or "
            "queued again); 0 when the queue is empty.", labels=["model"])
        for model in self._models:
            depth.add_metric([model], next(replies))
            queued_at = [score - level * LEVEL_WEIGHT
                         for level in QUEUE_LEVELS for _, score in next(replies)]
            age.add_metric([model], max(0.0, (now_us - min(queued_at)) / 1e6)
                           if queued_at else 0.0)
        yield from (running, depth, age)

    def _workers(self) -> Iterator[Metric]:
        alive = GaugeMetricFamily("latentd_workers_alive",
                                  "Generation worker processes whose heartbeat is live.",
                                  labels=["model"])
        for model, count in self._live_workers().items():
            alive.add_metric([model], count)
        rss = GaugeMetricFamily("latentd_worker_resident_memory_bytes",
                                "Resident memory of a generation worker process.",
                                labels=["worker"])
        allocated = GaugeMetricFamily(
            "latentd_worker_gpu_memory_allocated_bytes",
            "GPU memory a generation worker's tensors hold (torch.cuda.memory_allocated).",
            labels=["worker", "device"])
        reserved = GaugeMetricFamily(
            "latentd_worker_gpu_memory_reserved_bytes",
            "GPU memory a generation worker's torch caching allocator holds "
            "(torch.cuda.memory_reserved).", labels=["worker", "device"])
        for worker, stats in read_worker_stats(self._redis).items():
            rss.add_metric([worker], stats.resident_memory_bytes)
            if stats.gpu_device is not None:
                allocated.add_metric([worker, stats.gpu_device], stats.gpu_allocated_bytes or 0)
                reserved.add_metric([worker, stats.gpu_device], stats.gpu_reserved_bytes or 0)
        yield from (alive, rss, allocated, reserved)

    def _live_workers(self) -> dict[str, int]:
        """Live heartbeats per model (shared/heartbeat.py: the models' index sets)."""
        return {model: len(names)
                for model, names in live_workers_of(self._redis, self._models).items()}


def build_metrics_registry(client: redis.Redis, models: Sequence[str]) -> CollectorRegistry:
    """The registry ``GET /metrics`` renders: the service's metrics, not this process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(client, models))
    return registry
