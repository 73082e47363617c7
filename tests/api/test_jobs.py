"""Submitting, reading, listing, cancelling and deleting jobs over the API."""

from __future__ import annotations

import base64
import io

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from shared.heartbeat import beat, heartbeat_key
from shared.jobstore import JobStore
from shared.records import OutputImage
from shared.schemas import Job, Metrics, OutputFormat
from shared.storage import Storage, image_key, input_key
from tests.api.conftest import png_b64, queued_tasks, task_job_ids

UNKNOWN = "job_" + "0" * 24


def submit(client: TestClient, body: dict | None = None, **headers: str) -> dict:
    response = client.post("/v1/jobs", json=body or {"prompt": "a cat"}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def finish(store: JobStore, storage: Storage, job_id: str, count: int = 1) -> None:
    """Drive a job to succeeded by hand, as a worker would, with ``count`` stored PNGs."""
    store.mark_running(job_id)
    images = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (index, 0, 0)).save(buffer, format="PNG")
        storage.put(image_key(job_id, index, "png"), buffer.getvalue(), "image/png")
        images.append(OutputImage(index=index, seed=index, width=64, height=64,
                                  format=OutputFormat.PNG))
    store.mark_succeeded(job_id, images, Metrics(total_seconds=0.1))


def test_submit_answers_202_with_defaults_and_seeds_resolved(
    client: TestClient, broker: redis.Redis
) -> None:
    job = submit(client, {"prompt": "a cat", "seed": 42, "num_images": 3})

    assert job["id"].startswith("job_") and job["status"] == "queued"
    assert job["queue_position"] == 0 and job["warnings"] == []
    params = job["request"]
    # tiny-random's defaults fill what the request left out.
    assert (params["model"], params["width"], params["height"]) == ("tiny-random", 64, 64)
    assert (params["steps"], params["guidance_scale"], params["scheduler"]) == (4, 5.0, "ddim")
    assert params["seeds"] == [42, 43, 44] and params["strength"] is None
    assert list(queued_tasks(broker)) == ["gen.tiny-random:3"]  # normal: its band's first level
    assert task_job_ids(broker) == [job["id"]]


def test_seeds_wrap_at_2_to_the_32(client: TestClient) -> None:
    job = submit(client, {"prompt": "a cat", "seed": 2**32 - 1, "num_images": 2})
    assert job["request"]["seeds"] == [2**32 - 1, 0]


def test_server_picks_a_seed_when_none_given(client: TestClient) -> None:
    first = submit(client, {"prompt": "a cat", "num_images": 2})["request"]
    second = submit(client, {"prompt": "a cat", "num_images": 2})["request"]
    assert first["seeds"][1] == (first["seeds"][0] + 1) % 2**32
    assert first["seeds"][0] != second["seeds"][0]  # 1 in 2**32 to fail by chance


def test_priority_picks_the_broker_list_and_the_queue_position(
    client: TestClient, broker: redis.Redis
) -> None:
    normal = submit(client, {"prompt": "a cat"})
    low = submit(client, {"prompt": "a cat", "priority": "low"})
    high = submit(client, {"prompt": "a cat", "priority": "high"})

    # Each priority's band (high 0-2, normal 3-6, low 7-9), one level back per job the
    # same key already has queued (fair share): normal 3, then low 8, then high 1.
    assert sorted(queued_tasks(broker)) == [
        "gen.tiny-random:1", "gen.tiny-random:3", "gen.tiny-random:8"]
    assert high["queue_position"] == 0
    positions = {j["id"]: client.get(f"/v1/jobs/{j['id']}").json()["queue_position"]
                 for j in (normal, low, high)}
    assert positions == {high["id"]: 0, normal["id"]: 1, low["id"]: 2}


def test_image_to_image_sizes_follow_the_init_image(
    client: TestClient, storage: Storage
) -> None:
    body = {"prompt": "a cat", "task": "image-to-image", "init_image": png_b64((100, 70))}
    job = submit(client, body)
    assert (job["request"]["width"], job["request"]["height"]) == (96, 64)  # rounded down to 8
    stored = Image.open(io.BytesIO(storage.get(input_key(job["id"], "init"))))
    assert stored.size == (96, 64)

    # One side given: the other keeps the image's aspect ratio (70 * 64/100 = 44.8 → 40).
    job = submit(client, {**body, "width": 64})
    assert (job["request"]["width"], job["request"]["height"]) == (64, 40)


def half_white_mask(size: tuple[int, int]) -> str:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_inpaint_mask_is_resized_once_to_the_output_keeping_its_edge_hard(
    client: TestClient, storage: Storage
) -> None:
    body = {"prompt": "a cat", "task": "inpaint", "init_image": png_b64((80, 80)),
            "mask_image": half_white_mask((20, 20)), "width": 64, "height": 48}
    job = submit(client, body)
    mask = Image.open(io.BytesIO(storage.get(input_key(job["id"], "mask"))))
    init = Image.open(io.BytesIO(storage.get(input_key(job["id"], "init"))))
    assert mask.size == init.size == (64, 48)
    assert mask.mode == "L"
    # Nearest-neighbour: only black and white, no blurred band along the edge.
    assert [value for value, count in enumerate(mask.histogram()) if count] == [0, 255]
    assert job["request"]["strength"] == 0.75


def test_outpaint_record_is_the_canvas_and_the_stored_init_is_the_inner_image(
    client: TestClient, storage: Storage
) -> None:
    body = {"prompt": "a cat", "task": "outpaint", "init_image": png_b64((100, 100)),
            "width": 64, "height": 48, "outpaint": {"left": 16, "top": 8}, "strength": 0.3}
    job = submit(client, body)
    assert (job["request"]["width"], job["request"]["height"]) == (80, 56)
    assert job["request"]["strength"] == 1.0
    assert [w["field"] for w in job["warnings"]] == ["strength"]
    init = Image.open(io.BytesIO(storage.get(input_key(job["id"], "init"))))
    assert init.size == (64, 48)


def test_the_public_job_has_no_storage_keys_or_internals(client: TestClient) -> None:
    body = {"prompt": "a cat", "task": "inpaint", "init_image": png_b64((64, 64)),
            "mask_image": png_b64((64, 64), "L")}
    job = submit(client, body)
    assert set(job) == set(Job.model_fields)
    assert "owner" not in job and "inputs" not in job
    text = client.get(f"/v1/jobs/{job['id']}").text
    assert "inputs/" not in text and "_key" not in text and "public" not in text


def test_get_returns_the_job_and_404s_unknown_ids(client: TestClient) -> None:
    job = submit(client)
    assert client.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]
    response = client.get("/v1/jobs/job_000000000000000000000000")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_list_pages_newest_first_with_a_cursor(client: TestClient, store: JobStore) -> None:
    ids = [submit(client, {"prompt": f"cat {i}"})["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        assert len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    store.request_cancel(ids[1])
    canceled = client.get("/v1/jobs", params={"status": "canceled"}).json()["jobs"]
    assert [j["id"] for j in canceled] == [ids[1]]


def test_list_refuses_bad_limits_and_cursors(client: TestClient) -> None:
    for params, field in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                          ({"status": "sleeping"}, "status"), ({"cursor": "job_nope"}, "cursor")]:
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 422, params
        assert response.json()["error"]["field"] == field
    # Well formed, but none of the caller's jobs: nothing to page from.
    unknown = client.get("/v1/jobs", params={"cursor": UNKNOWN})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {"code": "cursor_not_found", "field": "cursor",
                                       "message": unknown.json()["error"]["message"]}


def test_a_wrong_method_lists_every_method_of_the_path(client: TestClient) -> None:
    response = client.put(f"/v1/jobs/{UNKNOWN}")
    assert response.status_code == 405
    assert response.headers["Allow"] == "DELETE, GET"


def test_cancel_queued_job_and_terminal_jobs_stay_terminal(
    client: TestClient, store: JobStore, storage: Storage
) -> None:
    queued = submit(client)
    response = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    again = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "canceled"

    done = submit(client)
    finish(store, storage, done["id"])
    response = client.post(f"/v1/jobs/{done['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "succeeded"

    assert client.post(f"/v1/jobs/{UNKNOWN}/cancel").status_code == 404


def test_cancel_running_job_asks_the_worker_to_stop(client: TestClient, store: JobStore) -> None:
    job = submit(client)
    store.mark_running(job["id"])
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "running"
    assert store.is_cancel_requested(job["id"])


def test_delete_removes_the_job_and_its_files(
    client: TestClient, store: JobStore, storage: Storage, settings
) -> None:
    body = {"prompt": "a cat", "task": "image-to-image", "init_image": png_b64((64, 64))}
    job = submit(client, body)
    finish(store, storage, job["id"])
    job_dir = settings.images_dir / "jobs" / job["id"]
    assert (job_dir / "inputs" / "init.png").exists() and (job_dir / "images" / "0.png").exists()

    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/images/0").status_code == 404
    assert not job_dir.exists()
    assert client.get("/v1/jobs").json()["jobs"] == []
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 404


def test_delete_cancels_a_live_job(client: TestClient, store: JobStore) -> None:
    job = submit(client)
    store.mark_running(job["id"])
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert store.get(job["id"]) is None


def test_idempotency_key_replays_same_body_and_refuses_another(
    client: TestClient, broker: redis.Redis
) -> None:
    body = {"prompt": "a cat"}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    replay = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == replay.status_code == 202
    assert "idempotent-replayed" not in first.headers
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    # The server-picked seed is part of the job, so the replay has the same one.
    assert replay.json()["request"]["seeds"] == first.json()["request"]["seeds"]

    other = client.post("/v1/jobs", json={"prompt": "a dog"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409
    assert other.json()["error"] == {
        "code": "idempotency_key_reused", "field": "Idempotency-Key",
        "message": other.json()["error"]["message"],
    }
    assert task_job_ids(broker) == [first.json()["id"]]

    fresh = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k2"})
    assert fresh.json()["id"] != first.json()["id"]


def test_idempotent_replay_of_an_image_job_leaves_no_stray_files(
    client: TestClient, settings
) -> None:
    body = {"prompt": "a cat", "task": "image-to-image", "init_image": png_b64((64, 64))}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "img"}).json()
    client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "img"})
    client.post("/v1/jobs", json={**body, "prompt": "x"}, headers={"Idempotency-Key": "img"})
    assert [p.name for p in (settings.images_dir / "jobs").iterdir()] == [first["id"]]


def test_image_endpoint(client: TestClient, store: JobStore, storage: Storage) -> None:
    job = submit(client)
    assert client.get(f"/v1/jobs/{job['id']}/images/0").json()["error"]["code"] == (
        "image_not_found")
    finish(store, storage, job["id"], count=2)

    response = client.get(f"/v1/jobs/{job['id']}/images/1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).getpixel((0, 0)) == (1, 0, 0)
    assert response.content == storage.get(image_key(job["id"], 1, "png"))

    assert client.get(f"/v1/jobs/{job['id']}/images/2").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/images/-1").status_code == 422
    assert client.get(f"/v1/jobs/{UNKNOWN}/images/0").status_code == 404


def test_a_stored_job_whose_task_cannot_be_queued_is_answered_202_failed(
    state, client: TestClient, store: JobStore, settings, monkeypatch
) -> None:
    from shared.celery_app import make_celery

    unreachable = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    monkeypatch.setattr(state, "celery", make_celery(unreachable))
    headers = {"Idempotency-Key": "once"}
    response = client.post("/v1/jobs", json={"prompt": "a cat"}, headers=headers)

    # Stored, so the client learns the job and its fate, not an error inviting a retry...
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "failed" and job["error"]["code"] == "enqueue_failed"
    # ...and a retry with the same key is the same job, not a duplicate.
    again = client.post("/v1/jobs", json={"prompt": "a cat"}, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    assert len(store.list_jobs("public")[0]) == 1


def test_a_model_no_worker_serves_is_refused_with_503_and_nothing_stored(
    client: TestClient, store: JobStore, broker: redis.Redis, redis_url: str
) -> None:
    broker.delete(heartbeat_key("tiny-random", "test-worker"))
    response = client.post("/v1/jobs", json={"prompt": "a cat"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert store.list_jobs("public") == ([], None) and queued_tasks(broker) == {}


def test_a_worker_coming_back_makes_the_model_available_again(
    client: TestClient, broker: redis.Redis, state
) -> None:
    broker.delete(heartbeat_key("tiny-random", "test-worker"))
    assert client.post("/v1/jobs", json={"prompt": "a cat"}).status_code == 503
    beat(broker, "tiny-random", "new-worker")
    state.availability._seen.clear()  # what the next second would do
    assert client.post("/v1/jobs", json={"prompt": "a cat"}).status_code == 202


def test_b64_data_url_is_accepted(client: TestClient) -> None:
    data_url = "data:image/png;base64," + png_b64((64, 64))
    job = submit(client, {"prompt": "a cat", "task": "image-to-image", "init_image": data_url})
    assert job["request"]["width"] == 64


@pytest.mark.parametrize("path", ["/v1/jobs/{id}", "/v1/jobs/{id}/cancel", "/v1/jobs/{id}/events",
                                  "/v1/jobs/{id}/images/0"])
@pytest.mark.parametrize("job_id", ["job_nope", UNKNOWN + ":webhooks", "job_" + "A" * 24, "x" * 500])
def test_a_malformed_job_id_is_refused_before_it_reaches_redis(
    client: TestClient, path: str, job_id: str
) -> None:
    method = client.post if path.endswith("/cancel") else client.get
    response = method(path.format(id=job_id))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "job_id"
