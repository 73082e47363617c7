"""The generation worker's liveness beacon: a daemon thread refreshing one expiring Redis
key per served model (format and TTL in shared.heartbeat, which /readyz and the API's
reaper read), whose value is the job this process is running (the jobs, space separated,
when it runs a batch).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from shared.heartbeat import HEARTBEAT_INTERVAL_SECONDS, MISSED_BEATS, beat, stop

logger = logging.getLogger(__name__)


def worker_name() -> str:
    """``<hostname>-<pid>``: unique per worker process across hosts."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Heartbeat:
    """Announces that this process serves ``models`` (and which job it runs) until stopped
    or killed. ``ttl_seconds`` defaults to three intervals."""

    def __init__(
        self,
        client: redis.Redis,
        models: list[str],
        worker: str | None = None,
        interval_seconds: float = HEARTBEAT_INTERVAL_SECONDS,
        ttl_seconds: float | None = None,
    ):
        self.client = client
        self.models = list(models)
        self.worker = worker or worker_name()
        self.interval_seconds = interval_seconds
        self.ttl_seconds = ttl_seconds or MISSED_BEATS * interval_seconds
        # The job(s) this process runs, space separated ('' = idle): each beat writes it,
        # and the reaper takes back a job whose claiming worker's key stops naming it.
        self.job = ""
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def running_job(self, job_id: str) -> Iterator[None]:
        """Name ``job_id`` in the beats while the block runs (set before the job is claimed,
        so no beat after the claim can say otherwise)."""
        self.job = job_id
        try:
            yield
        finally:
            self.job = ""

    def also_running(self, job_ids: list[str]) -> None:
        """Name ``job_ids`` too (the companions claimed into this run's batch), beating at
        once so the keys say so before the run goes on; inside ``running_job``."""
        if not job_ids:
            return
        self.job = " ".join([self.job, *job_ids]) if self.job else " ".join(job_ids)
        self._beat_logging_failures()

    def beat_once(self) -> None:
        job = self.job
        for model in self.models:
            beat(self.client, model, self.worker, self.ttl_seconds, job)

    def start(self) -> None:
        """Beat now (so readiness flips before the first interval) and keep beating."""
        self._beat_logging_failures()
        self._thread = threading.Thread(target=self._run, name="latentd-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and withdraw the keys, so readiness drops at once."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_seconds + 1)
        try:
            for model in self.models:
                stop(self.client, model, self.worker)
        except redis.RedisError:
            logger.warning("could not withdraw heartbeat (keys expire in %ss)", self.ttl_seconds)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_seconds):
            self._beat_logging_failures()

    def _beat_logging_failures(self) -> None:
        try:
            self.beat_once()
        except redis.RedisError as exc:
            # Redis being away is not this thread's to fix: keep trying; the keys
            # expiring meanwhile is exactly what readiness should see.
            logger.warning("heartbeat failed: %s", exc)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
