"""Expired jobs' outputs are deleted from storage; live jobs' outputs stay."""

from __future__ import annotations

import time

import redis

from api.services.expiry import sweep_expired_outputs
from shared.jobstore import JobStore
from shared.records import JobRecord
from shared.settings import Settings
from shared.storage import LocalStorage, image_key
from tests.factories import make_record


def make_job(store: JobStore) -> JobRecord:
    return store.create(make_record())[0]


def test_sweep_deletes_only_expired_outputs(redis_url: str, tmp_path) -> None:
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, job_ttl_seconds=600)
    store = JobStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    storage = LocalStorage(settings.images_dir)
    job = make_job(store)
    storage.put(image_key(job.id, 0, "png"), b"png", "image/png")

    assert sweep_expired_outputs(store, storage) == 0
    assert storage.get(image_key(job.id, 0, "png")) == b"png"

    assert sweep_expired_outputs(store, storage, now=time.time() + 601) == 1
    assert not (settings.images_dir / "jobs" / job.id).exists()
