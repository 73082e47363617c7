"""Reading a job's events in tests: subscribe first, then drain up to a marker."""

from __future__ import annotations

import redis

from shared.jobstore import JobStore
from shared.records import JobEvent

_END = "test:end-of-events"


class Listener:
    """A subscription to one job's channel, opened before the job is touched."""

    def __init__(self, client: redis.Redis, job_id: str):
        self._client = client
        self._channel = JobStore.channel(job_id)
        self._pubsub = client.pubsub()
        self._pubsub.subscribe(self._channel)
        # Wait for the confirmation: from here on every publish reaches us.
        while (message := self._pubsub.get_message(timeout=5)) is not None:
            if message["type"] == "subscribe":
                return
        raise AssertionError("no subscribe confirmation")

    def drain(self) -> list[JobEvent]:
        """Every event published so far: publishes a marker and reads up to it."""
        self._client.publish(self._channel, _END)
        events = []
        while (message := self._pubsub.get_message(timeout=5)) is not None:
            if message["type"] != "message":
                continue
            if message["data"] == _END:
                return events
            events.append(JobStore.decode_event(message["data"]))
        raise AssertionError(f"the marker never arrived; got {events}")

    def close(self) -> None:
        self._pubsub.close()
