"""Generation workers killed, stopped, terminated, and fed a job that always fails.

Every test starts from two serving generation workers (replacing any an earlier test
killed), holds a job mid-run with the gate, injects its fault, and ends with the
ledger's invariants: nothing lost, nothing left running, one completed event and one
completed webhook per job.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from shared.heartbeat import heartbeat_key
from tests.faults.harness import (
    FAULT_ENV,
    MODEL,
    RECLAIM_BOUND,
    FaultService,
    kill_group,
    process_alive,
    wait_for,
    worker_pid,
)
from tests.faults.ledger import Ledger
from tests.faults.report import FaultRecord
from tests.integration.gate import POISON_METADATA_KEY

HELD = {"prompt": "held", "steps": 4, "seed": 7}
MAX_ATTEMPTS = int(FAULT_ENV["LATENTD_TASK_MAX_ATTEMPTS"])
QUICK = {"prompt": "quick", "steps": 2}
# A re-run job is terminal within a reclaim, a worker's start and its few steps.
SETTLE_BOUND = RECLAIM_BOUND + 30


@pytest.mark.fault(1, "kill -9 of the generation pool child")
def test_a_killed_pool_child_has_its_job_run_again_once(
    service: FaultService, ledger: Ledger, fault: FaultRecord
) -> None:
    """A job is held mid-run; the forked pool process running it (the pid its heartbeat
    names) is sent SIGKILL. Its Celery parent stays up and forks a new child."""
    service.ensure_workers(2)
    job_id = ledger.submit_held(HELD)
    victim = service.claimant(job_id)
    group = service.group_of(victim)
    os.kill(worker_pid(victim), signal.SIGKILL)
    killed = time.monotonic()

    rerun = wait_for(lambda: (job := ledger.job(job_id))["attempts"] >= 2 and job, 60,
                     "the job to run again")
    rerun_at = time.monotonic() - killed
    requeued = [at for at, _ in service.tap.events(job_id, "queued") if at > killed]
    how = ("the reaper re-queued it" if requeued
           else "Celery redelivered its task when the parent saw its child die")
    job = ledger.drive(job_id)
    recovered = time.monotonic() - killed
    where = ("a new pool process of the same worker" if service.group_of(
        service.claimant(job_id)) is group else "the other worker")

    fault.figure("kill → job claimed again", rerun_at, "s")
    fault.figure("kill → job succeeded", recovered, "s")
    fault.figure("attempts", job["attempts"])
    fault.note(f"The job was claimed again {rerun_at:.2f} s after the kill ({how}), by "
               f"{where}, and succeeded with {len(job['images'])} image(s) on attempt "
               f"{job['attempts']}; the worker's parent forked a new pool process.")
    if job["attempts"] > 2:
        fault.note(f"{job['attempts'] - 2} more claim(s) than runs needed: a second message "
                   "for the job (Celery's redelivery and the reaper's re-publish) was taken "
                   "by another worker while the first re-run was under way.")
    assert rerun["status"] in ("queued", "running")
    assert job["status"] == "succeeded" and job["attempts"] <= MAX_ATTEMPTS, job
    ledger.verify(SETTLE_BOUND)


@pytest.mark.fault(2, "kill -9 of the whole generation worker (parent and child)")
def test_a_killed_worker_has_its_job_requeued_for_a_replacement(
    service: FaultService, ledger: Ledger, fault: FaultRecord
) -> None:
    """A job is held mid-run while the other worker is kept busy with a second held job;
    the first worker's whole process group (Celery parent and pool child) is sent
    SIGKILL, so nothing is left to hand its task back. A replacement worker is started
    once the job is back in the queue."""
    service.ensure_workers(2)
    job_id = ledger.submit_held(HELD)
    busy_id = ledger.submit_held(HELD)  # the other worker: nobody free to take the job
    victim = service.claimant(job_id)
    kill_group(worker_pid(victim), signal.SIGKILL)
    killed = time.monotonic()

    wait_for(lambda: any(at > killed for at, _ in service.tap.events(job_id, "queued")),
             RECLAIM_BOUND, "the reaper to re-queue the job")
    reclaimed = time.monotonic() - killed
    assert ledger.job(job_id)["status"] == "queued"
    started = time.monotonic()
    replacement = service.start_worker()
    wait_for(lambda: (job := ledger.job(job_id))["attempts"] == 2
             and job["status"] == "running", 90, "the replacement to take the job")
    taken = time.monotonic() - started
    assert service.group_of(service.claimant(job_id)) is replacement
    job = ledger.drive(job_id)
    recovered = time.monotonic() - killed
    assert ledger.drive(busy_id)["status"] == "succeeded"

    fault.figure("kill → reaper re-queued the job", reclaimed, "s")
    fault.figure("reclaim bound (3 heartbeats + 1 reaper round + 3 s slack)", RECLAIM_BOUND, "s")
    fault.figure("replacement started → it claimed the job", taken, "s")
    fault.figure("kill → job succeeded", recovered, "s")
    fault.figure("attempts", job["attempts"])
    fault.note(f"The reaper put the job back in the queue {reclaimed:.2f} s after the kill; "
               "it waited there (queued, not running) until the replacement worker took it "
               f"{taken:.1f} s after being started, and it succeeded on attempt "
               f"{job['attempts']}.")
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    ledger.verify(SETTLE_BOUND)


@pytest.mark.fault(4, "SIGSTOP of the pool child (a hung process)")
def test_a_stopped_pool_child_has_its_job_taken_back_without_a_duplicate(
    service: FaultService, ledger: Ledger, fault: FaultRecord
) -> None:
    """A job is held mid-run; its pool process is sent SIGSTOP (it stops beating and
    holds its claim). Once the job has run elsewhere, the process gets SIGCONT and
    its stale run goes on."""
    service.ensure_workers(2)
    job_id = ledger.submit_held(HELD)
    victim = service.claimant(job_id)
    pid = worker_pid(victim)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: any(at > stopped for at, _ in service.tap.events(job_id, "queued")),
                 RECLAIM_BOUND, "the reaper to re-queue the job")
        reclaimed = time.monotonic() - stopped
        wait_for(lambda: (job := ledger.job(job_id))["attempts"] == 2
                 and job["progress"]["step"] >= 1, 30, "the job to run again")
        assert service.claimant(job_id) != victim
        # The stopped process's wait on the gate is first in line at Redis: release twice.
        service.release(job_id)
        job = ledger.drive(job_id)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    # The stale run resumes, finds the job no longer its own at its next step and ends:
    # its beats then name no job. Only then could a duplicate have been written.
    wait_for(lambda: service.redis.get(heartbeat_key(MODEL, victim)) == "", 30,
             "the stale run to end")
    stale_ended = time.monotonic() - resumed
    after = ledger.job(job_id)

    fault.figure("SIGSTOP → reaper re-queued the job", reclaimed, "s")
    fault.figure("reclaim bound", RECLAIM_BOUND, "s")
    fault.figure("SIGCONT → stale run ended", stale_ended, "s")
    fault.figure("completed events", service.tap.count(job_id, "completed"))
    fault.note(f"The reaper re-queued the job {reclaimed:.2f} s after SIGSTOP and another "
               "worker ran it to success; after SIGCONT the stopped process's run ended "
               f"within {stale_ended:.2f} s without writing anything: the job's record is "
               "unchanged and the stopped process still serves.")
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    unchanged = ("status", "attempts", "updated_at", "finished_at", "images", "error")
    assert {key: after[key] for key in unchanged} == {key: job[key] for key in unchanged}
    assert process_alive(pid) and victim in service.serving()
    ledger.verify(SETTLE_BOUND)


@pytest.mark.fault(5, "SIGTERM to a generation worker's process group")
def test_sigterm_to_a_worker_group_puts_its_job_back_for_a_replacement(
    service: FaultService, ledger: Ledger, fault: FaultRecord
) -> None:
    """A job is held mid-run while the other worker is kept busy; the running worker's
    whole process group gets SIGTERM (what systemd's default KillMode and ``kill --
    -pgid`` send) and the job is released at once, so a warm shutdown could finish it.
    A replacement worker is started once the terminated worker has exited."""
    service.ensure_workers(2)
    job_id = ledger.submit_held(HELD)
    busy_id = ledger.submit_held(HELD)
    victim = service.claimant(job_id)
    group = service.group_of(victim)
    kill_group(worker_pid(victim), signal.SIGTERM)
    terminated = time.monotonic()
    service.release(job_id)

    wait_for(lambda: not group.alive(), 30, "the terminated worker to exit")
    exited = time.monotonic() - terminated
    at_exit = ledger.job(job_id)
    finished_there = at_exit["status"] == "succeeded" and at_exit["attempts"] == 1
    if not finished_there:
        wait_for(lambda: ledger.job(job_id)["status"] == "queued", RECLAIM_BOUND,
                 "the job to be back in the queue")
    requeued = [at - terminated for at, _ in service.tap.events(job_id, "queued")
                if at > terminated]
    started = time.monotonic()
    service.start_worker()
    job = ledger.drive(job_id, timeout=90)
    recovered = time.monotonic() - terminated
    assert ledger.drive(busy_id)["status"] == "succeeded"

    fault.figure("job status when the terminated worker had exited", at_exit["status"])
    fault.figure("SIGTERM → worker exited", exited, "s")
    if requeued:
        fault.figure("SIGTERM → reaper re-queued the job", requeued[0], "s")
    fault.figure("replacement started → job succeeded", time.monotonic() - started, "s")
    fault.figure("SIGTERM → job succeeded", recovered, "s")
    fault.figure("attempts", job["attempts"])
    if finished_there:
        fault.note("Warm shutdown: the pool child finished the running job before the "
                   f"worker exited ({exited:.2f} s).")
    else:
        fault.note("The pool child died of the SIGTERM at once (Celery logs 'Worker exited "
                   "prematurely: signal 15'), so the running job did not finish there: the "
                   f"parent exited after {exited:.2f} s, the job was back in the queue "
                   + (f"(re-queued by the reaper {requeued[0]:.2f} s after the signal) "
                      if requeued else "") +
                   f"and the replacement ran it to success (attempt {job['attempts']}).")
    assert job["status"] == "succeeded", job
    ledger.verify(SETTLE_BOUND)


# The planner refuses what a model cannot run (sizes below its minimum, ...), so the poison
# is the gated worker's: metadata.poison makes the pipeline raise at step 1, on every run.
POISON = {"prompt": "poison", "steps": 2, "metadata": {POISON_METADATA_KEY: True}}


@pytest.mark.fault(6, "a poison job (the pipeline raises on every run)")
def test_a_poison_job_fails_once_and_spares_the_others(
    service: FaultService, ledger: Ledger, fault: FaultRecord
) -> None:
    """A job that fails in the pipeline on every run (the gated worker's poison switch) is
    submitted between ordinary jobs."""
    before = service.ensure_workers(2)
    ids = [ledger.submit(QUICK)["id"], ledger.submit(POISON)["id"],
           ledger.submit(QUICK)["id"], ledger.submit(QUICK)["id"]]
    submitted = time.monotonic()
    jobs = [ledger.drive(job_id) for job_id in ids]
    settled = time.monotonic() - submitted
    poison = jobs[1]

    fault.figure("poison job", f"{poison['status']} "
                 f"({(poison['error'] or {}).get('code')}) after {poison['attempts']} attempt(s)")
    others = [job for job in jobs if job is not poison]
    fault.figure("other jobs succeeded", sum(job["status"] == "succeeded" for job in others),
                 f"of {len(others)}")
    fault.figure("submit → all four terminal", settled, "s")
    fault.note(f"The poison job failed once with {(poison['error'] or {}).get('code')} "
               f"(\"{(poison['error'] or {}).get('message', '')[:120]}\") after "
               f"{poison['attempts']} attempt; the jobs around it succeeded and the worker "
               "processes that ran them are the same ones as before.")
    assert poison["status"] == "failed" and poison["error"]["code"] == "generation_failed"
    assert poison["attempts"] == 1
    assert all(job["status"] == "succeeded" for job in others)
    assert sorted(service.serving()) == sorted(before)
    ledger.verify(SETTLE_BOUND)
