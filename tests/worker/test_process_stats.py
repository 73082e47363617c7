"""A generation worker's own stats, published with its heartbeat (real redis-server); the
GPU figures where CUDA is present."""

from __future__ import annotations

import pytest
import redis
import torch

from shared.heartbeat import live_workers
from shared.metrics import read_worker_stats
from worker.process_stats import (
    MeteredHeartbeat,
    gpu_memory,
    resident_memory_bytes,
    worker_stats,
)


def test_resident_memory_is_this_process_size() -> None:
    # A Python process with torch imported holds tens of MB at least; and less than all RAM.
    assert 10 * 2**20 < resident_memory_bytes() < 2**44


def test_no_gpu_figures_off_cuda() -> None:
    assert gpu_memory("cpu") is None
    stats = worker_stats(["tiny-random"], "cpu")
    assert stats.gpu_device is None and stats.models == ("tiny-random",)


def test_stats_are_published_with_each_beat_and_withdrawn_at_stop(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    heartbeat = MeteredHeartbeat(client, ["tiny-random", "emoji"], worker="host-1",
                                 interval_seconds=0.05, ttl_seconds=1)
    heartbeat.start()
    try:
        assert live_workers(client, "tiny-random") == ["host-1"]
        [(worker, stats)] = read_worker_stats(client).items()
        assert worker == "host-1" and stats.models == ("tiny-random", "emoji")
        assert stats.resident_memory_bytes > 0
    finally:
        heartbeat.stop()
    assert read_worker_stats(client) == {} and live_workers(client, "emoji") == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_memory_is_what_torch_holds_once_cuda_is_in_use() -> None:
    tensor = torch.ones(64, 2**20 // 4, device="cuda")  # 64 MiB of float32
    try:
        allocated, reserved = gpu_memory("cuda")  # type: ignore[misc]
        assert allocated >= 64 * 2**20 and reserved >= allocated
        stats = worker_stats(["tiny-random"], "cuda:0")
        assert stats.gpu_device == "cuda:0" and stats.gpu_allocated_bytes >= 64 * 2**20
    finally:
        del tensor


def test_beats_publish_the_loaded_models_as_they_change(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    loaded = ["tiny-random"]
    heartbeat = MeteredHeartbeat(client, ["tiny-random", "emoji"], worker="host-1",
                                 interval_seconds=60, ttl_seconds=60,
                                 loaded=lambda: list(loaded))
    heartbeat.start()
    try:
        assert read_worker_stats(client)["host-1"].loaded_models == ("tiny-random",)
        loaded[:] = ["emoji"]
        heartbeat.beat_once()  # what the model cache does after a load or an eviction
        stats = read_worker_stats(client)["host-1"]
        assert stats.loaded_models == ("emoji",) and stats.models == ("tiny-random", "emoji")
        # Liveness still names every served model: a job for an evicted one loads it.
        assert live_workers(client, "tiny-random") == ["host-1"]
    finally:
        heartbeat.stop()
