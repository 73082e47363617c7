"""Cancel, priority, Prefer: wait, idempotency and SSE through the real service."""

from __future__ import annotations

import json
import time
import uuid

import httpx

from tests.integration.conftest import Service

# Held by the test's gate after its first step (tests/integration/gated_worker.py).
HELD_JOB = {"prompt": "held", "steps": 10}


def test_cancel_running_job_stops_within_a_step(service: Service) -> None:
    job_id = service.submit_held(HELD_JOB)
    response = service.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "running"
    service.release(job_id)
    job = service.wait(job_id)
    assert job["status"] == "canceled"
    assert (job["progress"]["step"], job["progress"]["total_steps"]) == (1, 10)
    assert job["images"] == []
    # Terminal: cancelling again changes nothing.
    assert service.client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"


def test_canceled_queued_job_never_runs(service: Service) -> None:
    blocker = service.submit_held(HELD_JOB)
    queued = service.submit({"prompt": "never", "steps": 2})["id"]
    assert service.client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "canceled"
    service.release(blocker)
    service.wait(blocker)
    marker = service.run({"prompt": "after", "steps": 2})  # the worker got past the queue
    job = service.client.get(f"/v1/jobs/{queued}").json()
    assert job["status"] == "canceled"
    assert job["started_at"] is None and job["attempts"] == 0
    assert marker["status"] == "succeeded"


def test_high_priority_job_runs_before_queued_normal_ones(service: Service) -> None:
    blocker = service.submit_held(HELD_JOB)
    normal = [service.submit({"prompt": f"n{i}", "steps": 2})["id"] for i in range(3)]
    high = service.submit({"prompt": "urgent", "steps": 2, "priority": "high"})
    assert high["queue_position"] == 0
    assert service.client.get(f"/v1/jobs/{normal[0]}").json()["queue_position"] == 1
    service.release(blocker)
    assert service.wait(blocker)["status"] == "succeeded"
    started = {job_id: service.wait(job_id)["started_at"] for job_id in [*normal, high["id"]]}
    assert started[high["id"]] < min(started[n] for n in normal)
    assert [started[n] for n in normal] == sorted(started[n] for n in normal)


def test_prefer_wait_returns_the_finished_job(service: Service) -> None:
    response = service.client.post(
        "/v1/jobs", json={"prompt": "x", "steps": 2}, headers={"Prefer": "wait=30"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"


def test_prefer_wait_gives_up_with_202(service: Service) -> None:
    held = service.submit_held(HELD_JOB)
    started = time.monotonic()
    response = service.client.get(f"/v1/jobs/{held}", headers={"Prefer": "wait=1"})
    assert response.status_code == 202 and response.json()["status"] == "running"
    assert response.headers["Preference-Applied"] == "wait=1"
    assert 0.9 < time.monotonic() - started < 10
    service.release(held)
    assert service.wait(held)["status"] == "succeeded"


def test_idempotency_key_replays_and_conflicts(service: Service) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = service.submit({"prompt": "same", "steps": 2}, headers=key)
    again = service.client.post("/v1/jobs", json={"prompt": "same", "steps": 2}, headers=key)
    assert again.status_code in (200, 202) and again.json()["id"] == first["id"]
    other = service.client.post("/v1/jobs", json={"prompt": "different", "steps": 2}, headers=key)
    assert other.status_code == 409
    assert other.json()["error"]["code"]
    assert len([j for j in service.client.get("/v1/jobs?limit=100").json()["jobs"]
                if j["request"]["prompt"] == "same"]) == 1


def read_sse(service: Service, job_id: str) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    with httpx.stream("GET", f"{service.url}/v1/jobs/{job_id}/events", timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line.split(":", 1)[1])))
                if name == "completed":
                    break
    return events


def test_sse_streams_events_in_order(service: Service) -> None:
    job_id = service.submit({"prompt": "stream", "steps": 20})["id"]
    events = read_sse(service, job_id)
    names = [name for name, _ in events]
    assert names[0] in ("queued", "started")
    assert names[-1] == "completed" and names.count("completed") == 1
    assert "started" in names and "progress" in names
    assert names.index("started") < names.index("progress")
    steps = [data["progress"]["step"] for name, data in events if name == "progress"]
    assert steps == sorted(steps) and steps[-1] == 20
    # Each event carries the job as it was when the event happened.
    assert all(data["status"] == "running" for name, data in events if name == "progress")
    # (The first event is the state found on connecting, which may already be mid-run.)
    assert all(data["progress"]["step"] == 0 for name, data in events[1:] if name == "started")
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["images"]
    # A finished job's stream is just its completion.
    assert [name for name, _ in read_sse(service, job_id)] == ["completed"]


def test_list_and_delete(service: Service) -> None:
    job = service.run({"prompt": "to delete", "steps": 2})
    listed = service.client.get("/v1/jobs", params={"status": "succeeded", "limit": 2}).json()
    assert len(listed["jobs"]) <= 2 and all(j["status"] == "succeeded" for j in listed["jobs"])
    assert service.client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert service.client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert service.client.get(f"/v1/jobs/{job['id']}/images/0").status_code == 404
    assert not (service.data_dir / "images" / "jobs" / job["id"]).exists()
