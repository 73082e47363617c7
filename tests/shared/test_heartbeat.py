"""Who serves a model: the workers' index sets and their expiring keys, never a key scan
while any worker of the model beats with the index."""

from __future__ import annotations

import time

import redis

from shared.heartbeat import (
    beat,
    heartbeat_key,
    live_workers,
    live_workers_of,
    stop,
    worker_index_key,
)


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_the_live_workers_of_several_models_are_one_script_call(
    redis_client: redis.Redis
) -> None:
    beat(redis_client, "emoji", "gen-2")
    beat(redis_client, "emoji", "gen-1")
    beat(redis_client, "tiny-random", "gen-1")
    # Jobs are most of the keyspace: a scan would walk them all.
    redis_client.mset({f"latentd:job:job_{n:024x}": "" for n in range(2000)})
    live_workers_of(redis_client, ["emoji"])  # loads the script
    scans, scripts = _calls(redis_client, "scan"), _calls(redis_client, "evalsha")

    found = live_workers_of(redis_client, ["emoji", "tiny-random", "emoji"])

    assert found == {"emoji": ["gen-1", "gen-2"], "tiny-random": ["gen-1"]}
    assert _calls(redis_client, "scan") == scans
    assert _calls(redis_client, "evalsha") - scripts == 1


def test_a_worker_whose_beat_expired_is_gone_and_leaves_the_index(
    redis_client: redis.Redis
) -> None:
    beat(redis_client, "emoji", "alive")
    beat(redis_client, "emoji", "dying", ttl_seconds=0.05)
    time.sleep(0.1)
    assert live_workers(redis_client, "emoji") == ["alive"]
    assert redis_client.smembers(worker_index_key("emoji")) == {"alive"}


def test_a_stopped_worker_is_gone_at_once(redis_client: redis.Redis) -> None:
    beat(redis_client, "emoji", "gen-1")
    stop(redis_client, "emoji", "gen-1")
    assert live_workers(redis_client, "emoji") == []
    assert not redis_client.exists(worker_index_key("emoji"))


def test_a_worker_that_beats_without_the_index_is_still_found(
    redis_client: redis.Redis
) -> None:
    # A worker of the version before the index (a rolling upgrade) only sets its key.
    redis_client.set(heartbeat_key("emoji", "old-gen"), "", px=60_000)
    assert live_workers(redis_client, "emoji") == ["old-gen"]
    assert live_workers_of(redis_client, ["emoji", "tiny-random"]) == {
        "emoji": ["old-gen"], "tiny-random": []}


def test_a_model_name_with_glob_characters_finds_only_its_own_workers(
    redis_client: redis.Redis
) -> None:
    beat(redis_client, "sd*", "gen-1")
    beat(redis_client, "sdxl", "gen-2")
    assert live_workers_of(redis_client, ["sd*", "sdxl"]) == {
        "sd*": ["gen-1"], "sdxl": ["gen-2"]}
