"""The worker heartbeat against a real redis-server, read back the way /readyz reads it."""

from __future__ import annotations

import os
import socket
import time

import redis

from shared.heartbeat import heartbeat_key, live_workers
from worker.heartbeat import Heartbeat, worker_name


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
        # Refreshed well before the TTL runs out.
        time.sleep(1.3)
        assert client.exists(key)
    finally:
        heartbeat.stop()
    assert live_workers(client, "tiny-random") == [] and live_workers(client, "emoji") == []


def test_a_dead_workers_heartbeat_expires(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    Heartbeat(client, ["tiny-random"], "crashed", ttl_seconds=1).beat_once()
    assert live_workers(client, "tiny-random") == ["crashed"]
    time.sleep(1.2)
    assert live_workers(client, "tiny-random") == []


def test_heartbeat_keeps_trying_while_redis_is_unreachable() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.1)
    heartbeat = Heartbeat(client, ["tiny-random"], "lonely", interval_seconds=0.02)
    heartbeat.start()
    time.sleep(0.2)
    assert heartbeat.running
    heartbeat.stop()  # withdrawing fails quietly too
    assert not heartbeat.running
