"""What a generation worker process says about itself for ``GET /metrics`` and
``/v1/models``: the served models it has loaded, its resident memory and, on a CUDA
device, the GPU memory torch holds, published at every heartbeat (shared.metrics
``publish_worker_stats``) and expiring with it.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable, Sequence

import redis

from shared.heartbeat import HEARTBEAT_INTERVAL_SECONDS
from shared.metrics import WorkerStats, publish_worker_stats, withdraw_worker_stats
from worker.heartbeat import Heartbeat


def resident_memory_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``), else its peak."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes there, KiB here


def gpu_memory(device: str) -> tuple[int, int] | None:
    """``(allocated, reserved)`` bytes torch holds on ``device``; None off CUDA, or before
    this process has used CUDA (asking must not be what initialises it)."""
    if not device.startswith("cuda"):
        return None
    import torch  # the worker's, already loaded: only a CUDA worker gets here

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    where = torch.device(device)
    return torch.cuda.memory_allocated(where), torch.cuda.memory_reserved(where)


def worker_stats(
    models: list[str], device: str, loaded: Sequence[str] | None = None
) -> WorkerStats:
    """This process's stats: it serves ``models``, of which ``loaded`` are in memory
    (None: all of them)."""
    hot = tuple(loaded) if loaded is not None else None
    gpu = gpu_memory(device)
    if gpu is None:
        return WorkerStats(tuple(models), resident_memory_bytes(), loaded_models=hot)
    return WorkerStats(tuple(models), resident_memory_bytes(), device, *gpu, loaded_models=hot)


class MeteredHeartbeat(Heartbeat):
    """A heartbeat that also publishes this process's stats at each beat, for as long as
    its liveness keys live (same thread, same TTL: the stats of a dead worker expire with
    its heartbeat)."""

    def __init__(
        self,
        client: redis.Redis,
        models: list[str],
        device: str = "cpu",
        worker: str | None = None,
        interval_seconds: float = HEARTBEAT_INTERVAL_SECONDS,
        ttl_seconds: float | None = None,
        loaded: Callable[[], Sequence[str]] | None = None,
    ):
        super().__init__(client, models, worker, interval_seconds, ttl_seconds)
        self.device = device
        # Which served models are in memory now (worker/model_cache.py); None: all.
        self.loaded = loaded

    def beat_once(self) -> None:
        super().beat_once()
        loaded = self.loaded() if self.loaded is not None else None
        publish_worker_stats(self.client, self.worker,
                             worker_stats(self.models, self.device, loaded), self.ttl_seconds)

    def stop(self) -> None:
        super().stop()
        try:
            withdraw_worker_stats(self.client, self.worker)
        except redis.RedisError:
            pass  # they expire with the heartbeat keys
