"""One test's view of the service under fault: the jobs it submits, every answer the API
gives it, and ``Ledger.verify``, which checks the service's reliability promises on them
and writes them into the test's record: no accepted job lost, none left non-terminal, at
most one ``completed`` event and exactly one delivered ``completed`` webhook per job, and
no 5xx but 503 while Redis was down.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tests.faults.harness import TERMINAL, FaultService, received_ids, wait_for
from tests.faults.report import FaultRecord
from tests.integration.gate import HOLD_METADATA_KEY


@dataclass
class SeenResponse:
    at: float
    method: str
    path: str
    status: int
    during_outage: bool


class Ledger:
    """The jobs one test submits and every answer the API gives it; ``verify`` checks the
    invariants on them and writes them into the test's record."""

    def __init__(self, service: FaultService, record: FaultRecord, hooked: bool = True
                 ) -> None:
        self.service = service
        self.record = record
        self.jobs: list[str] = []
        self.responses: list[SeenResponse] = []
        self._outage = False
        # Jobs submitted without a webhook of their own report to this path.
        self.hooked = hooked
        self.path = f"/completed-{secrets.token_hex(4)}"
        self.client = httpx.Client(base_url=service.url, timeout=30,
                                   event_hooks={"response": [self._seen]})

    def close(self) -> None:
        self.client.close()

    def _seen(self, response: httpx.Response) -> None:
        self.responses.append(SeenResponse(time.monotonic(), response.request.method,
                                           response.request.url.path, response.status_code,
                                           self._outage))

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Answers inside the block are counted as given while Redis was down."""
        self._outage = True
        try:
            yield
        finally:
            self._outage = False

    # jobs

    def submit(self, body: dict) -> dict:
        """Submit a job (202 expected); it reports ``completed`` to the ledger's receiver
        unless it names its own webhook."""
        if self.hooked and "webhook" not in body:
            body = {**body, "webhook": {"url": self.service.hook_url(self.path),
                                        "events": ["completed"]}}
        response = self.client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job = response.json()
        self.jobs.append(job["id"])
        return job

    def submit_held(self, body: dict) -> str:
        """Submit a job the gate holds after its first step; its id once it is held."""
        job_id = self.submit({**body, "metadata": {HOLD_METADATA_KEY: True}})["id"]
        wait_for(lambda: (job := self.job(job_id))["status"] == "running"
                 and job["progress"]["step"] >= 1, 60, f"{job_id} to be held")
        return job_id

    def job(self, job_id: str) -> dict:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def drive(self, job_id: str, timeout: float = 60) -> dict:
        """Release each run of a held job once it is held, until the job is terminal."""
        released: set[int] = set()

        def finished() -> dict | None:
            job = self.job(job_id)
            if job["status"] in TERMINAL:
                return job
            if (job["status"] == "running" and job["progress"]["step"] >= 1
                    and job["attempts"] not in released):
                released.add(job["attempts"])
                self.service.release(job_id)
            return None

        return wait_for(finished, timeout, f"{job_id} to finish")

    # the invariants

    def verify(self, bound: float, *, exact_events: bool = True) -> dict[str, Any]:
        """Check every job of this ledger: found, terminal within ``bound`` seconds, at most
        one completed event (exactly one when ``exact_events``: the tap saw every
        publish) and, for jobs reporting to the ledger, exactly one delivered completed
        webhook; no 5xx outside an outage, only 503 inside one. Records the counts."""
        started = time.monotonic()
        final: dict[str, dict | None] = {}
        deadline = started + bound
        for job_id in self.jobs:
            while True:
                response = self.client.get(f"/v1/jobs/{job_id}")
                job = response.json() if response.status_code == 200 else None
                if job is None or job["status"] in TERMINAL or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            final[job_id] = job
        settled = time.monotonic() - started
        lost = [job_id for job_id, job in final.items() if job is None]
        stuck = [job_id for job_id, job in final.items()
                 if job is not None and job["status"] not in TERMINAL]
        hooked = [job_id for job_id, job in final.items()
                  if job is not None and job["request"].get("webhook")
                  and job["request"]["webhook"]["url"].endswith(self.path)]
        receiver = self.service.receiver
        if hooked:
            wait_for(lambda: all(received_ids(receiver, self.path)[f"evt_{j}_completed"]
                                 for j in hooked if j not in stuck), 20,
                     "every completed webhook")
            self.service.wait_past_webhook_retries(
                self.service.hook_url(self.path),
                lambda marker: marker in received_ids(receiver, self.path))
        webhooks = received_ids(receiver, self.path)
        webhook_counts = {job_id: webhooks[f"evt_{job_id}_completed"] for job_id in hooked}
        event_counts = {job_id: self.service.tap.count(job_id, "completed") for job_id in final}
        outside = [r for r in self.responses if r.status >= 500 and not r.during_outage]
        during = Counter(f"{r.method} {_route(r.path)} {r.status}"
                         for r in self.responses if r.during_outage)
        invariants = {
            "jobs accepted (202)": len(self.jobs),
            "jobs lost": len(lost),
            "jobs not terminal in time": len(stuck),
            "seconds until all terminal": round(settled, 2),
            "most completed events for one job": max(event_counts.values(), default=0),
            "most completed webhooks for one job": max(webhook_counts.values(), default=0),
            "jobs with a completed webhook checked": len(hooked),
            "API answers": len(self.responses),
            "5xx outside a Redis outage": len(outside),
            "answers during the outage": dict(sorted(during.items())),
        }
        self.record.invariants.update(invariants)
        assert not lost, f"jobs lost: {lost}"
        assert not stuck, f"jobs not terminal after {bound:.1f} s: {stuck}"
        assert max(event_counts.values(), default=0) <= 1, event_counts
        if exact_events:
            assert all(count == 1 for count in event_counts.values()), event_counts
        assert all(count == 1 for count in webhook_counts.values()), webhook_counts
        assert not outside, [(r.method, r.path, r.status) for r in outside]
        assert all(r.status == 503 for r in self.responses
                   if r.during_outage and r.status >= 500), during
        return {job_id: job for job_id, job in final.items() if job is not None}


def _route(path: str) -> str:
    """``/v1/jobs/job_…`` → ``/v1/jobs/{id}``: answers grouped by route."""
    parts = path.split("/")
    return "/".join("{id}" if part.startswith("job_") else part for part in parts)
