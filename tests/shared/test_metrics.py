"""The service-wide totals in Redis: what each transition (counted by the job store's own
scripts), webhook attempt and worker heartbeat adds, read back as a scrape reads them
(real redis-server)."""

from __future__ import annotations

import time

import pytest
import redis

from shared.heartbeat import beat
from shared.jobstore import JobStore, keys
from shared.metrics import (
    JOB_INFERENCE_SECONDS,
    JOB_QUEUE_SECONDS,
    JOB_TOTAL_SECONDS,
    JOBS_FINISHED,
    JOBS_REQUEUED,
    JOBS_STARTED,
    JOBS_SUBMITTED,
    WEBHOOK_ATTEMPTS,
    WEBHOOK_DELIVERIES,
    WORKERS_KEY,
    HistogramTotals,
    MetricsRecorder,
    WorkerStats,
    cumulative_buckets,
    encode_labels,
    publish_worker_stats,
    read_totals,
    read_worker_stats,
    webhook_outcome,
    withdraw_worker_stats,
)
from shared.records import JobRecord
from shared.schemas import ErrorCode, Metrics
from shared.settings import Settings
from tests.factories import make_plan, make_record

MODEL = "tiny-random"


@pytest.fixture
def metered(redis_client: redis.Redis) -> JobStore:
    """A store as the API and the generation worker build it: no hook of its own counts;
    its scripts do, in the step that writes the change."""
    settings = Settings(job_ttl_seconds=3600, task_max_attempts=2, heartbeat_interval_seconds=1)
    return JobStore(redis_client, settings)


def new_job(store: JobStore, **plan) -> JobRecord:
    return store.create(make_record(request=make_plan(**plan)))[0]


def test_each_transition_counts_once_by_model_status_and_error_code(
    metered: JobStore, redis_client: redis.Redis
) -> None:
    done, failed, canceled = new_job(metered), new_job(metered), new_job(metered)
    new_job(metered, model="emoji")
    for job in (done, failed):
        metered.mark_running(job.id, "w1")
    metered.update_progress(done.id, 1, 4, None, worker="w1")  # progress: not counted
    metered.mark_succeeded(done.id, [], Metrics(queue_seconds=0.5, inference_seconds=1.2,
                                                total_seconds=1.8), "w1")
    metered.mark_failed(failed.id, ErrorCode.GENERATION_FAILED, "boom", "w1")
    metered.request_cancel(canceled.id)
    metered.request_cancel(canceled.id)  # already canceled: no transition, no count
    metered.mark_succeeded(done.id, [], Metrics(), "w1")  # refused: terminal

    totals = read_totals(redis_client)
    assert totals.counters[JOBS_SUBMITTED] == {(MODEL,): 3, ("emoji",): 1}
    assert totals.counters[JOBS_STARTED] == {(MODEL,): 2}
    assert totals.counters[JOBS_FINISHED] == {
        (MODEL, "succeeded", ""): 1,
        (MODEL, "failed", "generation_failed"): 1,
        (MODEL, "canceled", "canceled"): 1,
    }
    assert totals.counters[JOBS_REQUEUED] == {}
    # One observation each, from the succeeded job's metrics (bounds are inclusive).
    for histogram, value, le in ((JOB_QUEUE_SECONDS, 0.5, "0.5"),
                                 (JOB_INFERENCE_SECONDS, 1.2, "2.5"),
                                 (JOB_TOTAL_SECONDS, 1.8, "2.5")):
        assert totals.histograms[histogram] == {(MODEL,): HistogramTotals({le: 1}, value)}


def test_a_job_taken_back_from_a_dead_worker_counts_as_requeued_not_submitted(
    metered: JobStore, redis_client: redis.Redis
) -> None:
    job = new_job(metered)
    metered.mark_running(job.id, "gone-worker")  # no heartbeat: stalled at once
    later = time.time() + 60
    [requeued] = metered.reclaim_stalled(now=later)
    assert requeued.status == "queued"
    metered.mark_running(job.id, "gone-worker")
    [lost] = metered.reclaim_stalled(now=later + 60)  # out of attempts: failed worker_lost
    assert lost.error is not None and lost.error.code is ErrorCode.WORKER_LOST
    counters = read_totals(redis_client).counters
    assert counters[JOBS_SUBMITTED] == {(MODEL,): 1}
    assert counters[JOBS_REQUEUED] == {(MODEL,): 1}
    assert counters[JOBS_STARTED] == {(MODEL,): 2}
    assert counters[JOBS_FINISHED] == {(MODEL, "failed", "worker_lost"): 1}


def test_the_scripts_bucket_each_value_as_the_python_definition_does(
    metered: JobStore, redis_client: redis.Redis
) -> None:
    # Every bound itself (inclusive), just above it, and past the last one.
    values = [v for bound in JOB_QUEUE_SECONDS.buckets for v in (bound, bound * 1.001)] + [1e6]
    for value in values:
        job = new_job(metered)
        metered.mark_running(job.id, "w1")
        metered.mark_succeeded(job.id, [], Metrics(inference_seconds=value), "w1")
    expected: dict[str, int] = {}
    for value in values:
        le = JOB_INFERENCE_SECONDS.bucket_of(value)
        expected[le] = expected.get(le, 0) + 1
    [(labels, totals)] = read_totals(redis_client).histograms[JOB_INFERENCE_SECONDS].items()
    assert labels == (MODEL,)
    assert totals.buckets == expected
    assert totals.sum == pytest.approx(sum(values))
    # Metrics the job did not report are not observed.
    assert read_totals(redis_client).histograms[JOB_QUEUE_SECONDS] == {}


@pytest.mark.parametrize("model", ["org/sdxl-base", "modèle \"ç\"", "猫"])
def test_any_model_name_is_labelled_as_python_labels_it(
    metered: JobStore, redis_client: redis.Redis, model: str
) -> None:
    job = new_job(metered, model=model)
    metered.mark_running(job.id, "w1")
    metered.mark_failed(job.id, ErrorCode.TIMEOUT, "slow", "w1")
    assert redis_client.hgetall(JOBS_SUBMITTED.key) == {encode_labels([model]): "1"}
    counters = read_totals(redis_client).counters
    assert counters[JOBS_STARTED] == {(model,): 1}
    assert counters[JOBS_FINISHED] == {(model, "failed", "timeout"): 1}


def test_a_job_stored_before_labels_were_kept_is_still_counted_under_its_model(
    metered: JobStore, redis_client: redis.Redis
) -> None:
    job = new_job(metered, model="org/sdxl-base")
    redis_client.hdel(keys.job_key(job.id), "labels")  # as an earlier version stored it
    metered.mark_running(job.id, "w1")
    assert read_totals(redis_client).counters[JOBS_STARTED] == {("org/sdxl-base",): 1}


def test_histogram_buckets_add_up_cumulatively_and_keep_unknown_bounds() -> None:
    totals = HistogramTotals({"0.5": 2, "7.0": 1, "+Inf": 1}, 20.0)  # 7.0: an old bound
    buckets = dict(cumulative_buckets(JOB_QUEUE_SECONDS, totals))
    assert list(buckets)[-1] == "+Inf" and buckets["+Inf"] == 4
    assert buckets["0.25"] == 0 and buckets["0.5"] == 2 and buckets["5.0"] == 2
    assert buckets["7.0"] == 3 and buckets["3600.0"] == 3
    bounds = [float(le) for le in buckets]
    assert bounds == sorted(bounds)
    assert JOB_QUEUE_SECONDS.bucket_of(0.05) == "0.05"
    assert JOB_QUEUE_SECONDS.bucket_of(0.051) == "0.1"
    assert JOB_QUEUE_SECONDS.bucket_of(1e9) == "+Inf"


def test_fields_of_another_shape_are_skipped_not_misread(redis_client: redis.Redis) -> None:
    redis_client.hset(JOBS_SUBMITTED.key, mapping={'["a","b"]': 5, "not json": 1, '["ok"]': 2})
    assert read_totals(redis_client).counters[JOBS_SUBMITTED] == {("ok",): 2}


@pytest.mark.parametrize(
    ("delivered", "retryable", "last", "outcome"),
    [(True, False, False, "delivered"), (True, False, True, "delivered"),
     (False, True, False, None), (False, True, True, "gave_up"),
     (False, False, False, "stopped")],
)
def test_a_webhook_attempt_settles_its_event_when_nothing_follows(
    delivered: bool, retryable: bool, last: bool, outcome: str | None
) -> None:
    assert webhook_outcome(delivered, retryable, last) == outcome


def test_webhook_attempts_and_settled_events_are_counted(redis_client: redis.Redis) -> None:
    recorder = MetricsRecorder(redis_client)
    recorder.record_webhook_attempt("completed", False, True, False)
    recorder.record_webhook_attempt("completed", True, False, False)
    recorder.record_webhook_attempt("started", False, False, False)
    counters = read_totals(redis_client).counters
    assert counters[WEBHOOK_ATTEMPTS] == {("completed", "failed"): 1,
                                          ("completed", "delivered"): 1,
                                          ("started", "failed"): 1}
    assert counters[WEBHOOK_DELIVERIES] == {("completed", "delivered"): 1,
                                            ("started", "stopped"): 1}


def test_recording_without_redis_logs_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2)
    MetricsRecorder(unreachable).record_webhook_attempt("completed", True, False, False)
    assert "could not record metrics" in caplog.text


def test_worker_stats_live_as_long_as_they_are_published(redis_client: redis.Redis) -> None:
    publish_worker_stats(redis_client, "host-1", WorkerStats((MODEL,), 1000), ttl_seconds=0.3)
    gpu = WorkerStats((MODEL, "emoji"), 2000, "cuda:0", 3000, 4000)
    publish_worker_stats(redis_client, "host-2", gpu, ttl_seconds=60)
    assert read_worker_stats(redis_client) == {"host-1": WorkerStats((MODEL,), 1000),
                                               "host-2": gpu}
    time.sleep(0.4)  # host-1 stopped publishing: its stats expire, and are forgotten
    assert read_worker_stats(redis_client) == {"host-2": gpu}
    assert redis_client.smembers(WORKERS_KEY) == {"host-2"}
    withdraw_worker_stats(redis_client, "host-2")
    assert read_worker_stats(redis_client) == {}
    beat(redis_client, MODEL, "host-3")  # a heartbeat alone publishes no stats
    assert read_worker_stats(redis_client) == {}


def test_worker_stats_say_which_served_models_are_loaded(redis_client: redis.Redis) -> None:
    budgeted = WorkerStats((MODEL, "emoji"), 1000, loaded_models=("emoji",))
    publish_worker_stats(redis_client, "host-1", budgeted, ttl_seconds=60)
    publish_worker_stats(redis_client, "host-2", WorkerStats((MODEL,), 1000), ttl_seconds=60)
    stats = read_worker_stats(redis_client)
    assert stats["host-1"] == budgeted and stats["host-1"].hot_models == ("emoji",)
    # A worker that does not report its loaded set has all its models loaded.
    assert stats["host-2"].loaded_models is None and stats["host-2"].hot_models == (MODEL,)
    budgeted_none = WorkerStats((MODEL,), 1000, loaded_models=())
    publish_worker_stats(redis_client, "host-1", budgeted_none, ttl_seconds=60)
    assert read_worker_stats(redis_client)["host-1"].hot_models == ()
