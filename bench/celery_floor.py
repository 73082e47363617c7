"""The floor under the service's overhead per job that is Celery's own: a task that does
nothing but push one Redis list item, sent as the API sends a generation task and run as
the generation worker runs one (the service's Celery configuration, ``make_celery``; a
prefork pool of one process), timed from ``send_task`` to the client popping the item.

    .venv/bin/python -m bench.celery_floor [--samples N]     # starts its own redis-server

bench/service_overhead.py prints it beside the overhead per job, measured in the same run
on the service's own Redis, so that what the service adds can be told from what the queue
costs on the machine. As a worker entry point (``celery -A bench.celery_floor worker``)
this module builds its app at import from ``LATENTD_REDIS_URL``, like the real ones.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from celery import Celery, shared_task

from shared.celery_app import make_celery
from shared.settings import Settings

FLOOR_TASK = "latentd.bench.floor"
FLOOR_QUEUE = "latentd-bench-floor"
# Items the client waits on expire even if it went away.
REPLY_TTL_SECONDS = 60


@shared_task(name=FLOOR_TASK)
def floor(reply_key: str) -> None:
    """The whole task: tell the client it ran."""
    client = _client()
    client.rpush(reply_key, "ran")
    client.expire(reply_key, REPLY_TTL_SECONDS)


_redis: redis.Redis | None = None


def _client() -> redis.Redis:
    """One connection per worker process, as the generation worker keeps its store's."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["LATENTD_REDIS_URL"])
    return _redis


def _worker_app() -> Celery | None:
    if "LATENTD_REDIS_URL" not in os.environ or __name__ == "__main__":
        return None
    return make_celery(Settings(redis_url=os.environ["LATENTD_REDIS_URL"]))


app = _worker_app()


def celery_round_trips(redis_url: str, samples: int, log: Path) -> list[float]:
    """Seconds per round trip, ``samples`` of them one after another (after a few
    uncounted), through a worker process started here and stopped before returning."""
    env = {**os.environ, "LATENTD_REDIS_URL": redis_url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.celery_floor", "worker",
         "--pool", "prefork", "--concurrency", "1", "-Q", FLOOR_QUEUE, "--loglevel", "WARNING",
         "-n", f"bench-floor-{secrets.token_hex(3)}@%h"],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    sender = make_celery(Settings(redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    try:
        def round_trip(timeout: float) -> float:
            key = f"latentd:bench:floor:{secrets.token_hex(8)}"
            started = time.perf_counter()
            sender.send_task(FLOOR_TASK, args=[key], queue=FLOOR_QUEUE)
            if client.blpop([key], timeout=timeout) is None:
                raise RuntimeError(f"the floor task did not run within {timeout} s; see {log}")
            return time.perf_counter() - started

        round_trip(timeout=60)  # the worker starting up
        for _ in range(5):
            round_trip(timeout=10)
        return [round_trip(timeout=10) for _ in range(samples)]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args(argv)
    from scripts.service_processes import free_port, redis_command, start_process, stop_process

    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        server = start_process(redis_command(port, Path(workdir)), dict(os.environ),
                               Path(workdir) / "redis.log")
        try:
            time.sleep(0.3)
            seconds = celery_round_trips(f"redis://127.0.0.1:{port}/0", args.samples,
                                         Path(workdir) / "worker.log")
        finally:
            stop_process(server)
    quantiles = statistics.quantiles(seconds, n=10, method="inclusive")
    print(f"bare Celery round trip ({args.samples} tasks, prefork pool of 1): median "
          f"{1000 * statistics.median(seconds):.2f} ms, p90 {1000 * quantiles[-1]:.2f} ms")


if __name__ == "__main__":
    main()
