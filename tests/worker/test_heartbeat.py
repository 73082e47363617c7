"""The worker heartbeat against a real redis-server, read back the way /readyz reads it."""

from __future__ import annotations

import os
import socket
import time

import pytest
import redis

from shared.heartbeat import beat, heartbeat_key, live_workers
from worker.heartbeat import Heartbeat, worker_name


def wait_until(condition, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_worker_name_is_host_and_pid() -> None:
    assert worker_name() == f"{socket.gethostname()}-{os.getpid()}"


def test_heartbeat_announces_every_model_until_stopped(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    heartbeat = Heartbeat(client, ["tiny-random", "emoji"], "host-1", interval_seconds=0.05,
                          ttl_seconds=1)
    heartbeat.start()
    try:
        assert live_workers(client, "tiny-random") == ["host-1"]
        assert live_workers(client, "emoji") == ["host-1"]
        key = heartbeat_key("tiny-random", "host-1")
        assert 0 < client.pttl(key) <= 1000
        # A key beaten once with the same TTL expires; the live one was refreshed meanwhile.
        beat(client, "tiny-random", "beaten-once", ttl_seconds=1)
        wait_until(lambda: not client.exists(heartbeat_key("tiny-random", "beaten-once")))
        assert client.exists(key)
    finally:
        heartbeat.stop()
    assert live_workers(client, "tiny-random") == [] and live_workers(client, "emoji") == []


def test_a_dead_workers_heartbeat_expires(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    Heartbeat(client, ["tiny-random"], "crashed", ttl_seconds=1).beat_once()
    assert live_workers(client, "tiny-random") == ["crashed"]
    wait_until(lambda: live_workers(client, "tiny-random") == [])


def test_heartbeat_keeps_trying_while_redis_is_unreachable(caplog) -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.1)
    heartbeat = Heartbeat(client, ["tiny-random"], "lonely", interval_seconds=0.02)
    heartbeat.start()
    # Three failed beats logged: the thread survived its failures and went on beating.
    wait_until(lambda: caplog.text.count("heartbeat failed") >= 3)
    assert heartbeat.running
    heartbeat.stop()  # withdrawing fails quietly too
    assert not heartbeat.running


def test_the_beats_name_the_job_being_run(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    heartbeat = Heartbeat(client, ["tiny-random", "emoji"], "host-1", interval_seconds=0.2)
    assert heartbeat.ttl_seconds == pytest.approx(0.6)  # three missed beats
    heartbeat.start()
    try:
        keys = [heartbeat_key("tiny-random", "host-1"), heartbeat_key("emoji", "host-1")]
        assert [client.get(key) for key in keys] == ["", ""]  # idle
        with heartbeat.running_job("job_1"):
            wait_until(lambda: [client.get(key) for key in keys] == ["job_1", "job_1"])
        wait_until(lambda: [client.get(key) for key in keys] == ["", ""])
        assert 0 < client.pttl(keys[0]) <= 600
    finally:
        heartbeat.stop()


def test_a_run_that_raised_leaves_the_beats_idle(redis_url: str) -> None:
    heartbeat = Heartbeat(redis.Redis.from_url(redis_url), ["tiny-random"], "host-1")
    try:
        with heartbeat.running_job("job_1"):
            assert heartbeat.job == "job_1"
            raise ConnectionError("Redis went away mid-run")
    except ConnectionError:
        pass
    assert heartbeat.job == ""
