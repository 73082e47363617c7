"""Webhook receivers that misbehave: one that trickles its answer a byte at a time, one
that redirects, and a name that rebinds from a public address to a private one."""

from __future__ import annotations

import math
from datetime import datetime
from functools import partial

import pytest

from tests.faults.harness import (
    WEBHOOK_ATTEMPTS,
    WEBHOOK_DEADLINE,
    WEBHOOK_THREADS,
    FaultService,
    received_ids,
    wait_for,
)
from tests.faults.ledger import Ledger
from tests.faults.report import FaultRecord
from tests.webhook_receiver import TricklingReceiver, WebhookReceiver

QUICK = {"prompt": "quick", "steps": 2}
SLOW_JOBS = 6  # more slow deliveries than the webhook worker has threads
REDIRECTED_JOBS = 2
PROMPT_JOBS = 4
# How far past its deadline an attempt may end: scheduling, not waiting.
DEADLINE_MARGIN = 0.5
# Every slow attempt holds a thread for the whole deadline: spread over the threads, plus
# one deadline for a delivery that queued behind them, plus slack for a loaded machine.
PROMPT_BOUND = (WEBHOOK_DEADLINE * math.ceil(SLOW_JOBS * WEBHOOK_ATTEMPTS / WEBHOOK_THREADS)
                + WEBHOOK_DEADLINE + 3)
SETTLE_BOUND = 60


def attempts_of(ledger: Ledger, job_id: str) -> list[dict]:
    """The job's recorded delivery attempts of its completed event."""
    return [attempt for attempt in ledger.job(job_id)["webhook_attempts"]
            if attempt["event_id"] == f"evt_{job_id}_completed"]


def delivered(ledger: Ledger, job_id: str) -> dict | None:
    """The job once its completed webhook was delivered."""
    job = ledger.job(job_id)
    return job if any(a["delivered"] for a in job["webhook_attempts"]) else None


def all_attempts_made(ledger: Ledger, job_id: str) -> bool:
    return len(attempts_of(ledger, job_id)) == WEBHOOK_ATTEMPTS


def delivered_after(job: dict) -> float:
    """Seconds from the job's end to the end of its delivered completed webhook."""
    [attempt] = [a for a in job["webhook_attempts"] if a["delivered"]]
    finished = datetime.fromisoformat(job["finished_at"])
    return (datetime.fromisoformat(attempt["at"]) - finished).total_seconds() + attempt[
        "duration_seconds"]


@pytest.mark.fault("7a", "slow (trickling) and redirecting webhook receivers")
def test_slow_and_redirecting_receivers_hold_up_no_one(
    service: FaultService, ledger: Ledger, fault: FaultRecord
) -> None:
    """Six jobs report to a receiver that sends its status line one byte every 0.1 s and
    never finishes it (six: more than the webhook worker's four threads), two to one
    that answers 302 to another path, then four to a prompt receiver."""
    service.ensure_workers(1)
    with TricklingReceiver(interval=0.1) as slow, WebhookReceiver() as redirecting:
        redirecting.script("/moved", [302], headers={"location": redirecting.url("/target")})
        slow_ids = [ledger.submit({**QUICK, "webhook": {"url": slow.url(), "events": [
            "completed"]}})["id"] for _ in range(SLOW_JOBS)]
        moved_ids = [ledger.submit({**QUICK, "webhook": {"url": redirecting.url("/moved"),
                                                         "events": ["completed"]}})["id"]
                     for _ in range(REDIRECTED_JOBS)]
        prompt_ids = [ledger.submit(QUICK)["id"] for _ in range(PROMPT_JOBS)]

        latencies = [delivered_after(wait_for(partial(delivered, ledger, job_id), 30,
                                              "the prompt receiver's webhook"))
                     for job_id in prompt_ids]
        # Every attempt the slow and redirecting receivers can get, then a marker later
        # than any retry: nothing else is coming.
        for job_id in slow_ids + moved_ids:
            wait_for(partial(all_attempts_made, ledger, job_id), SETTLE_BOUND,
                     f"{job_id}'s {WEBHOOK_ATTEMPTS} attempts")
        service.wait_past_webhook_retries(
            redirecting.url("/marker"),
            lambda marker: marker in received_ids(redirecting, "/marker"))
        slow_attempts = [a for job_id in slow_ids for a in attempts_of(ledger, job_id)]
        moved_attempts = [a for job_id in moved_ids for a in attempts_of(ledger, job_id)]
        connections = slow.connections
        redirected = len(redirecting.requests("/moved"))
        followed = len(redirecting.requests("/target"))

    longest = max(a["duration_seconds"] for a in slow_attempts)
    fault.figure("prompt webhooks: slowest, job end → delivered", max(latencies), "s")
    fault.figure("prompt webhooks: fastest", min(latencies), "s")
    fault.figure("bound asserted for the prompt webhooks", PROMPT_BOUND, "s")
    fault.figure("slow attempts (all timed out)", len(slow_attempts),
                 f"= {SLOW_JOBS} jobs × {WEBHOOK_ATTEMPTS}")
    fault.figure("slowest slow attempt", longest, f"s (deadline {WEBHOOK_DEADLINE} s)")
    fault.figure("connections the trickling receiver accepted", connections)
    fault.figure("redirect answers (302)", redirected, f"= {REDIRECTED_JOBS} jobs × "
                 f"{WEBHOOK_ATTEMPTS}")
    fault.figure("requests to the redirect target", followed)
    fault.note(f"Each trickled attempt was cut at its {WEBHOOK_DEADLINE:g} s deadline (longest "
               f"{longest:.2f} s; the receiver would have taken ~28 hours to send its 1 MB "
               f"header) and retried until its {WEBHOOK_ATTEMPTS} attempts were spent; the "
               f"prompt receiver still had every webhook within {max(latencies):.2f} s of its "
               f"job's end. Each 302 was recorded as 'redirect not followed' and retried; "
               f"the redirect target was never requested.")
    assert max(latencies) < PROMPT_BOUND, latencies
    assert len(slow_attempts) == SLOW_JOBS * WEBHOOK_ATTEMPTS == connections
    assert all(a["error"].startswith("timed out") and not a["delivered"] for a in slow_attempts)
    assert longest < WEBHOOK_DEADLINE + DEADLINE_MARGIN
    assert redirected == REDIRECTED_JOBS * WEBHOOK_ATTEMPTS == len(moved_attempts)
    assert all(a["status_code"] == 302 and "redirect not followed" in a["error"]
               for a in moved_attempts)
    assert followed == 0
    ledger.verify(SETTLE_BOUND)


# -- DNS rebinding ----------------------------------------------------------------------

REBINDING_NAME = "hooks.rebind.faults.test"
MARKER_NAME = "marker.faults.test"
PUBLIC_ADDRESS = "93.184.216.34"  # stood in for locally: no packet leaves the machine


@pytest.mark.fault("7b", "DNS rebinding: public when checked, private later")
def test_a_rebinding_name_never_reaches_the_private_address(
    strict_service: FaultService, fault: FaultRecord
) -> None:
    """The service refuses private targets. A job's webhook names a host that resolves to
    a public address when the API checks it and when the first attempt checks it, and to
    127.0.0.1 (where a receiver listens) at every lookup after. DNS and the public host
    are scripted inside the API's and the webhook worker's own processes
    (tests/faults/fake_net/sitecustomize.py patches getaddrinfo and connect there; the
    public host is a local stand-in answering 500, so the delivery is retried)."""
    service, net = strict_service, strict_service.net
    assert net is not None
    ledger = Ledger(service, fault, hooked=False)
    with WebhookReceiver() as inside, WebhookReceiver() as public_host:
        public_host.script("/hook", [500])
        net.answer(REBINDING_NAME, [PUBLIC_ADDRESS], ["127.0.0.1"])
        net.answer(MARKER_NAME, [PUBLIC_ADDRESS])
        net.stand_in(PUBLIC_ADDRESS, public_host.port)
        refused = ledger.client.post("/v1/jobs", json={**QUICK, "webhook": {
            "url": inside.url("/hook")}})
        url = inside.url("/hook", host=REBINDING_NAME)
        job_id = ledger.submit({**QUICK, "webhook": {"url": url, "events": ["completed"]}})["id"]
        attempts = wait_for(lambda: len(found := attempts_of(ledger, job_id)) >= 2 and found,
                            SETTLE_BOUND, "both delivery attempts")
        service.wait_past_webhook_retries(
            public_host.url("/marker", host=MARKER_NAME),
            lambda marker: marker in received_ids(public_host, "/marker"))
        reached_inside = len(inside.requests())
        stand_in = public_host.requests("/hook")
        final = attempts_of(ledger, job_id)
    entries = net.entries()
    lookups = [e for e in entries if e["event"] == "lookup" and e["host"] == REBINDING_NAME]
    api_lookups = [e for e in lookups if "api.main" in e["process"]]
    worker_lookups = [e for e in lookups if "webhook_worker" in e["process"]]
    connects = [e for e in entries if e["event"] == "connect" and e["port"] == inside.port]

    fault.figure("requests that reached 127.0.0.1 (the rebinding target)", reached_inside)
    fault.figure("submit naming 127.0.0.1 directly", refused.status_code)
    fault.figure("lookups of the name by the API", len(api_lookups))
    fault.figure("lookups by the webhook worker", len(worker_lookups),
                 "(one per attempt, none to connect)")
    fault.figure("connects by the webhook worker", ", ".join(sorted(
        {e["address"] for e in connects})) or "none")
    fault.figure("attempt 1", f"{final[0]['status_code']} from the public host")
    fault.figure("attempt 2", final[1]["error"])
    fault.note("The API's check and the first attempt saw the public address; the attempt "
               f"connected to {PUBLIC_ADDRESS} only (its stand-in answered 500) and never "
               "asked DNS again to connect. The retry's check saw 127.0.0.1 and refused it "
               "for good: no request ever reached the private receiver. Scripted DNS is "
               "in-process patching, but inside the service's real processes.")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_webhook_url"
    assert len(api_lookups) == 1 and [e["answer"] for e in worker_lookups] == [
        [PUBLIC_ADDRESS], ["127.0.0.1"]]
    assert [e["address"] for e in connects] == [PUBLIC_ADDRESS]
    assert len(stand_in) == 1
    assert stand_in[0].headers["host"] == f"{REBINDING_NAME}:{inside.port}"
    assert final == attempts and len(final) == 2
    assert final[0]["status_code"] == 500
    assert "non-public address 127.0.0.1" in final[1]["error"]
    assert reached_inside == 0
    try:
        ledger.verify(SETTLE_BOUND)
    finally:
        ledger.close()
