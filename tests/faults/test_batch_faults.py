"""A generation worker killed while it runs a batch of several jobs.

Starts from two serving generation workers (replacing any an earlier test killed) and
ends with the ledger's invariants: nothing lost, nothing left running, one completed
event and one completed webhook per job.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.harness import (
    RECLAIM_BOUND,
    FaultService,
    kill_group,
    wait_for,
    worker_pid,
)
from tests.faults.ledger import Ledger
from tests.faults.report import FaultRecord
from tests.faults.test_worker_faults import HELD, SETTLE_BOUND
from tests.integration.gate import HOLD_METADATA_KEY

# One batch signature, other than HELD's: the blockers never join the batch.
BATCHED = {"prompt": "batched", "steps": 3}


@pytest.mark.fault(8, "kill -9 of a generation worker mid-batch")
def test_a_worker_killed_mid_batch_has_every_job_of_the_batch_taken_back(
    service: FaultService, ledger: Ledger, fault: FaultRecord
) -> None:
    """Both workers are kept busy with held jobs while three compatible jobs queue; one
    worker is let go, claims the three as one batch (the first is held after its first
    step, holding the batch), and its whole process group is sent SIGKILL. The other
    worker is then let go to take the jobs back."""
    service.ensure_workers(2)
    first_blocker = ledger.submit_held(HELD)
    second_blocker = ledger.submit_held(HELD)
    batch = [ledger.submit({**BATCHED, "seed": 1, "metadata": {HOLD_METADATA_KEY: True}})["id"],
             ledger.submit({**BATCHED, "seed": 2})["id"],
             ledger.submit({**BATCHED, "seed": 3})["id"]]
    service.release(first_blocker)
    victim = service.claimant(first_blocker)

    def batch_held() -> bool:
        jobs = [ledger.job(job_id) for job_id in batch]
        return (all(job["status"] == "running" for job in jobs)
                and jobs[0]["progress"]["step"] >= 1
                and {service.claimant(job_id) for job_id in batch} == {victim})

    wait_for(batch_held, 60, "the three jobs to run as one held batch")
    kill_group(worker_pid(victim), signal.SIGKILL)
    killed = time.monotonic()

    def all_requeued() -> bool:
        return all(any(at > killed for at, _ in service.tap.events(job_id, "queued"))
                   for job_id in batch)

    wait_for(all_requeued, RECLAIM_BOUND, "the reaper to re-queue every job of the batch")
    reclaimed = time.monotonic() - killed
    service.release(second_blocker)
    jobs = [ledger.drive(job_id, timeout=90) for job_id in batch]
    recovered = time.monotonic() - killed
    assert ledger.drive(second_blocker)["status"] == "succeeded"

    fault.figure("jobs in the killed batch", len(batch))
    fault.figure("kill → reaper re-queued all of them", reclaimed, "s")
    fault.figure("reclaim bound (3 heartbeats + 1 reaper round + 3 s slack)", RECLAIM_BOUND, "s")
    fault.figure("kill → all of them succeeded", recovered, "s")
    fault.figure("attempts", ", ".join(str(job["attempts"]) for job in jobs))
    fault.figure("images per pipeline call on the re-run",
                 ", ".join(str(job["metrics"]["batch_images"]) for job in jobs))
    fault.note(f"The three jobs were claimed as one batch under the killed worker's "
               f"heartbeat name; the reaper took each back on its own {reclaimed:.2f} s "
               "after the kill, and the other worker ran them again (batched again where "
               f"they were queued together) to success on attempt "
               f"{max(job['attempts'] for job in jobs)}.")
    assert all(job["status"] == "succeeded" and job["attempts"] == 2 for job in jobs), jobs
    ledger.verify(SETTLE_BOUND)
