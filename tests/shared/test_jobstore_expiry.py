"""The expiry index: each job is popped once, when its TTL has passed."""

from __future__ import annotations

from shared.jobstore import JobStore
from tests.factories import make_record


def test_jobs_are_popped_once_after_their_ttl(store: JobStore) -> None:
    first, _ = store.create(make_record())
    second, _ = store.create(make_record())
    created = first.created_at.timestamp()
    assert store.pop_expired() == []  # default: Redis's clock, now
    assert store.pop_expired(now=created + 3500) == []  # store_settings: TTL 3600 s
    assert store.pop_expired(now=created + 3700, limit=1) == [first.id]
    assert store.pop_expired(now=created + 3700) == [second.id]
    assert store.pop_expired(now=created + 3700) == []
