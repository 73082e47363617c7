"""Dynamic batching through the real service: compatible jobs queued together run in one
pipeline call, and each still gets its own images, cancel and place in the queue.

The service runs one generation worker process with the default LATENTD_MAX_BATCH (4);
a held job (tests/integration/gated_worker.py) keeps it busy while the jobs queue.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from tests.integration.conftest import Service
from tests.integration.gate import HOLD_METADATA_KEY
from tests.worker.test_engine_batch import BATCH_PIXEL_TOLERANCE

# Held by the gate after its first step; another batch signature (steps) than the jobs
# under test, so it never joins their batch.
BLOCKER = {"prompt": "held", "steps": 10}
BATCHED = {"steps": 4, "negative_prompt": "blurry"}


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_queued_compatible_jobs_run_as_one_batch_with_their_unbatched_images(
    service: Service,
) -> None:
    blocker = service.submit_held(BLOCKER)
    bodies = [{**BATCHED, "prompt": f"a cat number {i}", "seed": 500 + i} for i in range(3)]
    bodies.append({**BATCHED, "prompt": "two dogs", "seed": 600, "num_images": 1})
    queued = [service.submit(body)["id"] for body in bodies]
    service.release(blocker)
    batched = [service.wait(job_id) for job_id in queued]
    assert all(job["status"] == "succeeded" for job in batched), batched
    assert [job["metrics"]["batch_images"] for job in batched] == [4] * 4
    assert [job["attempts"] for job in batched] == [1] * 4

    # Each job again, alone (nothing else queued): the same images within the tolerance.
    for body, job in zip(bodies, batched, strict=True):
        alone = service.run(body)
        assert alone["metrics"]["batch_images"] == 1
        assert alone["images"][0]["seed"] == job["images"][0]["seed"] == body["seed"]
        difference = np.abs(pixels(service.image(job)) - pixels(service.image(alone)))
        assert difference.max() <= BATCH_PIXEL_TOLERANCE


def test_canceling_one_job_of_a_running_batch_lets_the_others_finish(service: Service) -> None:
    blocker = service.submit_held(BLOCKER)
    # The first is held after its first step, and holds its whole batch there.
    leader = service.submit({**BATCHED, "prompt": "leader", "seed": 1,
                             "metadata": {HOLD_METADATA_KEY: True}})["id"]
    victim = service.submit({**BATCHED, "prompt": "victim", "seed": 2})["id"]
    other = service.submit({**BATCHED, "prompt": "other", "seed": 3})["id"]
    service.release(blocker)
    for job_id in (leader, victim, other):
        _wait_running(service, job_id)
    # Held at step 1: the batch is past its wait for companions, mid-denoising.
    _wait_running(service, leader, step=1)

    answer = service.client.post(f"/v1/jobs/{victim}/cancel")
    assert answer.status_code == 200 and answer.json()["status"] == "running"
    service.release(leader)

    canceled = service.wait(victim)
    assert canceled["status"] == "canceled" and canceled["images"] == []
    assert canceled["error"]["code"] == "canceled"
    assert canceled["progress"]["step"] == 1  # stopped at the next step, not the batch's end
    for job_id in (leader, other):
        job = service.wait(job_id)
        assert job["status"] == "succeeded" and job["metrics"]["batch_images"] == 3, job
        assert len(job["images"]) == 1


def test_batches_keep_priorities_a_low_job_never_rides_ahead(service: Service) -> None:
    blocker = service.submit_held(BLOCKER)
    low = service.submit({**BATCHED, "prompt": "low", "priority": "low"})["id"]
    normal = service.submit({**BATCHED, "prompt": "normal"})["id"]
    other_kind = service.submit({"prompt": "three steps", "steps": 3})["id"]
    normal_too = service.submit({**BATCHED, "prompt": "normal too"})["id"]
    high = service.submit({**BATCHED, "prompt": "urgent", "priority": "high"})["id"]
    service.release(blocker)
    jobs = {job_id: service.wait(job_id) for job_id in (low, normal, other_kind, normal_too, high)}
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    started = {job_id: job["started_at"] for job_id, job in jobs.items()}
    batch = {job_id: job["metrics"]["batch_images"] for job_id, job in jobs.items()}

    # high first and alone (no compatible high job queued); the two normal jobs together
    # (one band: the later one rides with the first), then the other normal job; low last,
    # alone: it is compatible, but never taken into a batch of a better band.
    assert started[high] < started[normal] <= started[normal_too] < started[other_kind]
    assert started[other_kind] < started[low]
    assert batch == {high: 1, normal: 2, normal_too: 2, other_kind: 1, low: 1}


def _wait_running(service: Service, job_id: str, step: int = 0) -> None:
    deadline = time.monotonic() + 60
    while True:
        job = service.client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["step"] >= step:
            return
        assert time.monotonic() < deadline, f"{job_id} never reached step {step}"
        time.sleep(0.02)
