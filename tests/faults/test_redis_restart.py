"""Redis killed outright and started again on its own port and files (append-only file,
fsync every second): what was accepted survives, and the outage is a clean 503.

Runs on the strict service (private webhook targets refused, as in production), whose
completed webhooks reach the test's receiver through the scripted network.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.faults.harness import RECLAIM_BOUND, FaultService, wait_for
from tests.faults.ledger import Ledger
from tests.faults.report import FaultRecord

OUTAGE_SECONDS = 3.0
# Workers retry the broker every 2 s (Celery) and beat every 0.3 s: back within seconds.
RECONNECT_BOUND = 30
QUICK = {"prompt": "quick", "steps": 2}


@pytest.fixture
def strict_ledger(strict_service: FaultService, fault: FaultRecord) -> Iterator[Ledger]:
    book = Ledger(strict_service, fault)
    try:
        yield book
    finally:
        book.close()


@pytest.mark.fault(3, "kill -9 of Redis, then a restart on the same port and files")
def test_redis_killed_and_restarted_loses_no_accepted_job(
    strict_service: FaultService, strict_ledger: Ledger, fault: FaultRecord
) -> None:
    """Two jobs have finished, one is held mid-run and three wait in the queue behind it
    (one worker) when redis-server gets SIGKILL. For 3 s the test polls GET
    /v1/jobs/{id}, POST /v1/jobs, GET /v1/jobs and GET /readyz; then redis-server is
    started again with the same command (port, directory, append-only file)."""
    service, ledger = strict_service, strict_ledger
    finished = [ledger.drive(ledger.submit(QUICK)["id"])["id"] for _ in range(2)]
    held = ledger.submit_held({"prompt": "held", "steps": 4})
    queued = [ledger.submit(QUICK)["id"] for _ in range(3)]
    before = {job_id: ledger.job(job_id)["status"] for job_id in ledger.jobs}
    assert [before[job_id] for job_id in queued] == ["queued"] * 3

    with ledger.outage():
        os.kill(service.redis_pid(), signal.SIGKILL)
        killed = time.monotonic()
        seen: Counter[str] = Counter()
        while time.monotonic() - killed < OUTAGE_SECONDS:
            for name, call in (
                ("GET /v1/jobs/{id}", lambda: ledger.client.get(f"/v1/jobs/{held}")),
                ("POST /v1/jobs", lambda: ledger.client.post("/v1/jobs", json=QUICK)),
                ("GET /v1/jobs", lambda: ledger.client.get("/v1/jobs")),
                ("GET /readyz", lambda: ledger.client.get("/readyz")),
            ):
                response = call()
                seen[f"{name} {response.status_code}"] += 1
                if response.status_code == 503 and name == "POST /v1/jobs":
                    assert response.headers.get("retry-after"), response.headers
            time.sleep(0.1)
        healthz = ledger.client.get("/healthz").status_code
        service.restart_redis()
        restarted = time.monotonic()
        wait_for(lambda: ledger.client.get("/readyz").status_code == 200, RECONNECT_BOUND,
                 "/readyz to answer 200 again (Redis back, a worker beating)", every=0.1)
    ready = time.monotonic() - restarted

    after_restart = {job_id: response.json()["status"] for job_id in ledger.jobs
                     if (response := ledger.client.get(f"/v1/jobs/{job_id}")).status_code == 200}
    job = ledger.drive(held, timeout=RECONNECT_BOUND + RECLAIM_BOUND)
    reaped = any(at > restarted for at, _ in service.tap.events(held, "queued"))
    for job_id in queued:
        ledger.drive(job_id, timeout=RECONNECT_BOUND)
    drained = time.monotonic() - restarted
    fresh = ledger.drive(ledger.submit(QUICK)["id"], timeout=RECONNECT_BOUND)
    stored = ledger.client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]

    fault.figure("jobs accepted before the kill and found after the restart",
                 f"{len(after_restart.keys() & before.keys())} of {len(before)}")
    fault.figure("outage (kill → restart)", restarted - killed, "s")
    fault.figure("restart → /readyz 200", ready, "s")
    fault.figure("restart → every earlier job terminal", drained, "s")
    fault.figure("statuses before the kill", _tally(before))
    fault.figure("statuses right after the restart", _tally(after_restart))
    fault.figure("held job after the restart", f"{job['status']} on attempt {job['attempts']}")
    fault.figure("GET /healthz during the outage", healthz)
    fault.figure("event subscriptions made again after the restart",
                 service.tap.subscriptions - 1)
    for name, count in sorted(seen.items()):
        fault.figure(f"during the outage: {name}", count, "answers")
    taken_back = "was taken back by the reaper and " if reaped else ""
    fault.note("Every job accepted before the kill was there after the restart; the held "
               f"job, whose run lost Redis, {taken_back}ran again (attempt {job['attempts']}), "
               "the queued ones ran once the worker had reconnected, and a new submit "
               "succeeded. During the outage every API answer but /healthz was 503; none of "
               f"the {seen_posts(seen)} refused submits was stored.")
    assert after_restart.keys() == before.keys()
    assert all(after_restart[job_id] == "succeeded" for job_id in finished)
    assert fresh["status"] == "succeeded"
    assert job["status"] == "succeeded", job
    assert healthz == 200
    assert all(key.endswith(" 503") for key in seen), seen
    # Nothing half-written: the job list is exactly what was accepted with a 202.
    assert sorted(j["id"] for j in stored) == sorted(ledger.jobs)
    # Events published while the tap re-subscribed are not seen: at most one, not exactly.
    ledger.verify(RECONNECT_BOUND, exact_events=False)


def _tally(statuses: dict[str, str]) -> str:
    return ", ".join(f"{count} {status}" for status, count in sorted(Counter(
        statuses.values()).items()))


def seen_posts(seen: Counter[str]) -> int:
    return sum(count for key, count in seen.items() if key.startswith("POST "))
