"""The ``make run`` launcher (scripts/run.py) as a supervisor, with the real service: one
SIGTERM stops everything gracefully, a crashed child is started again, and a child that
keeps crashing stops the launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import run as launcher  # scripts/ is on sys.path (tests/scripts/conftest.py)
from process_supervisor import STOP_TIMEOUT_SECONDS

from shared.jobstore import JobStore
from shared.settings import Settings
from tests.scripts.launcher_process import HELD_WORKER, LauncherProcess, is_held, release

JOB = {"prompt": "red heart", "steps": 4, "seed": 1}


@contextmanager
def launched(data_dir: Path, *args: str) -> Iterator[LauncherProcess]:
    service = LauncherProcess(data_dir, launcher.free_port(), *args)
    try:
        yield service
    finally:
        service.close()


def stored_job(data_dir: Path, job_id: str) -> str:
    """The status of ``job_id`` as the launcher's Redis stored it, read by a redis-server
    started on its append-only file while the launcher is down."""
    port = launcher.free_port()
    server = subprocess.Popen(launcher.redis_command(data_dir / "redis", port))
    try:
        client = redis.Redis(port=port, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                record = JobStore(client, Settings()).get(job_id)
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the stored Redis did not start"
                time.sleep(0.05)
        assert record is not None, job_id
        return record.status.value
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.timeout(600)
def test_one_sigterm_to_the_group_stops_gracefully_and_no_job_is_left_running(
    tmp_path, leftover_processes
):
    """The group's SIGTERM and make's forwarded copy arrive together: one graceful stop. A
    job held past the warm shutdown goes back on the queue and runs after a restart; a job
    that can finish does so before the worker exits."""
    with launched(tmp_path, "--generation-app", HELD_WORKER) as first:
        first.wait_ready()
        requeued = first.submit_held(JOB)

        code, seconds = first.stop_in_group()

        print(f"stop with a job held: {seconds:.1f} s")
        assert code == 0, first.output
        assert seconds < STOP_TIMEOUT_SECONDS + 1, first.output
        assert "killing" not in first.output, first.output  # no hurry, no SIGKILL
    assert leftover_processes() == []

    with launched(tmp_path, "--generation-app", HELD_WORKER) as second:
        redis_url = second.wait_ready()
        # Back from the queue: attempt 2, held again at its first step.
        second.wait_job(requeued, is_held(attempt=2), timeout=120)
        release(redis_url, requeued)
        assert second.wait_job(requeued, lambda job: job["status"] == "succeeded")
        finishing = second.submit_held(JOB)

        started = time.monotonic()
        os.killpg(second.pid, signal.SIGTERM)
        second.signal_again_once_stopping(started)
        release(redis_url, finishing)  # the worker is in its warm shutdown: it finishes
        code = second.wait_exit(timeout=STOP_TIMEOUT_SECONDS + 15)
        seconds = time.monotonic() - started

        print(f"stop while a job finishes: {seconds:.1f} s")
        assert code == 0, second.output
        assert seconds < STOP_TIMEOUT_SECONDS + 1, second.output
        assert "killing" not in second.output, second.output
    assert leftover_processes() == []
    # Finished by the warm shutdown: a job the cold shutdown had cancelled would still be
    # running in the store, waiting for the next start.
    assert stored_job(tmp_path, finishing) == "succeeded"


@pytest.mark.timeout(600)
def test_a_killed_worker_or_redis_is_restarted_and_the_service_serves_again(
    tmp_path, leftover_processes
):
    with launched(tmp_path) as service:
        service.wait_ready()
        before = service.run_job(JOB)
        assert before["status"] == "succeeded", before

        for marker in ("-n gen-", "redis-server"):  # -n: the generation worker's node name
            old_pid = service.child_pid(marker)
            assert old_pid is not None, service.output
            killed = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)

            service.wait_child_replaced(marker, old_pid)
            restarted = time.monotonic() - killed
            job = service.run_job(JOB)
            print(f"{marker}: restarted after {restarted:.1f} s, "
                  f"a job succeeded {time.monotonic() - killed:.1f} s after the kill")
            assert job["status"] == "succeeded", job
            status, body = service.request("/readyz")
            assert status == 200, body
        # Redis came back from its append-only file with the jobs it had accepted.
        assert service.job(before["id"])["status"] == "succeeded"
        assert "restarting it in" in service.output

        code, seconds = service.stop_in_group()
        print(f"stop when idle: {seconds:.1f} s")
        assert code == 0, service.output
    assert leftover_processes() == []


def corrupt_append_only_file(data_dir: Path) -> tuple[list[str], str]:
    """Redis exits at once on start; its log (which the launcher shows) says why."""
    manifest = data_dir / "redis" / "appendonlydir" / "appendonly.aof.manifest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("not a manifest\n")
    return [], "Invalid AOF manifest"


def missing_worker_app(_data_dir: Path) -> tuple[list[str], str]:
    """Celery exits at once, while Redis, the webhook worker and the API run."""
    return ["--generation-app", "tests.scripts.no_such_worker_app"], "Unable to load celery"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("child", "break_it"),
    [("redis-server", corrupt_append_only_file), ("generation worker", missing_worker_app)],
)
def test_a_child_that_keeps_crashing_makes_the_launcher_give_up(
    tmp_path, leftover_processes, child, break_it
):
    args, reason = break_it(tmp_path)
    started = time.monotonic()
    with launched(tmp_path, *args) as service:
        code = service.wait_exit(timeout=120)
        seconds = time.monotonic() - started

        print(f"{child}: gave up after {seconds:.1f} s")
        assert code == 1, service.output
        assert f"latentd: {child} exited 5 times within 60 s" in service.output
        assert service.output.count(f"latentd: {child} exited (exit code") == 4
        assert reason in service.output
        assert "latentd is ready" not in service.output
    assert leftover_processes() == []
