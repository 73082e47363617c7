"""Following a job: ``Prefer: wait`` and the SSE stream, with the job driven by hand."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

from fastapi.testclient import TestClient

from shared.jobstore import JobStore
from shared.schemas import ErrorCode, Metrics
from shared.settings import Settings

UNKNOWN = "job_" + "0" * 24


def submit(client: TestClient) -> str:
    response = client.post("/v1/jobs", json={"prompt": "a cat"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def once_someone_waits(store: JobStore, job_id: Callable[[], str | None],
                       action: Callable[[str], object]) -> threading.Thread:
    """Run ``action(id)`` in a thread as soon as a waiter has subscribed to the job's channel
    (so the test proves the waiter wakes on the event, whatever the timing)."""

    def run() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            current = job_id()
            if current and store._redis.pubsub_numsub(JobStore.channel(current))[0][1]:
                action(current)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_to_success(store: JobStore, job_id: str) -> None:
    store.mark_running(job_id)
    store.mark_succeeded(job_id, [], Metrics())


def test_prefer_wait_times_out_with_202(client: TestClient) -> None:
    job_id = submit(client)
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=1"})
    elapsed = time.monotonic() - started
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=1"
    assert 0.9 <= elapsed < 3


def test_prefer_wait_is_capped_by_the_server(
    client: TestClient, settings: Settings
) -> None:
    settings.max_wait_seconds = 1
    started = time.monotonic()
    response = client.post("/v1/jobs", json={"prompt": "a cat"},
                           headers={"Prefer": "respond-async, wait=600"})
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=1"
    assert time.monotonic() - started < 3


def test_prefer_wait_returns_200_as_soon_as_the_job_finishes(
    client: TestClient, store: JobStore
) -> None:
    job_id = submit(client)
    thread = once_someone_waits(store, lambda: job_id, lambda i: run_to_success(store, i))
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=5"})
    elapsed = time.monotonic() - started
    thread.join()
    assert response.status_code == 200 and response.json()["status"] == "succeeded"
    assert elapsed < 3


def test_submit_with_prefer_wait_returns_the_finished_job(
    client: TestClient, store: JobStore
) -> None:
    def newest_job() -> str | None:
        jobs, _ = store.list_jobs("public")
        return jobs[0].id if jobs else None

    thread = once_someone_waits(store, newest_job, lambda i: run_to_success(store, i))
    response = client.post("/v1/jobs", json={"prompt": "a cat"}, headers={"Prefer": "wait=5"})
    thread.join()
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"


def test_get_without_prefer_does_not_wait(client: TestClient) -> None:
    job_id = submit(client)
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200 and time.monotonic() - started < 1


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs from an SSE line stream; comments (pings) skipped."""
    event, data = None, []
    for line in lines:
        if line.startswith(":"):
            continue
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].strip())
        elif not line and event:
            yield event, json.loads("\n".join(data))
            event, data = None, []


def test_sse_relays_the_job_from_queued_to_completed(
    client: TestClient, store: JobStore
) -> None:
    job_id = submit(client)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
        received = [next(events)]  # the current state, sent after subscribing

        store.mark_running(job_id)
        store.update_progress(job_id, 1, 4, 0.3)
        store.update_progress(job_id, 2, 4, 0.2)
        store.mark_succeeded(job_id, [], Metrics(total_seconds=1.0))
        received += list(events)  # ends by itself after "completed"

    assert [name for name, _ in received] == [
        "queued", "started", "progress", "progress", "completed"]
    assert [data["status"] for _, data in received] == [
        "queued", "running", "running", "running", "succeeded"]
    assert [data["progress"]["step"] for _, data in received[1:4]] == [0, 1, 2]
    assert all(data["id"] == job_id for _, data in received)


def test_sse_starts_from_the_state_the_job_is_in(client: TestClient, store: JobStore) -> None:
    job_id = submit(client)
    store.mark_running(job_id)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        events = sse_events(response.iter_lines())
        first = next(events)
        store.mark_failed(job_id, ErrorCode.GENERATION_FAILED, "it broke")
        rest = list(events)
    assert first[0] == "started" and first[1]["status"] == "running"
    assert [(name, data["status"]) for name, data in rest] == [("completed", "failed")]


def test_sse_for_a_finished_job_sends_completed_and_closes(
    client: TestClient, store: JobStore
) -> None:
    job_id = submit(client)
    run_to_success(store, job_id)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        received = list(sse_events(response.iter_lines()))
    assert [(name, data["status"]) for name, data in received] == [("completed", "succeeded")]


def test_sse_for_an_unknown_job_is_a_404(client: TestClient) -> None:
    response = client.get(f"/v1/jobs/{UNKNOWN}/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"
