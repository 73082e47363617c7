"""``"init_image": "job:<job id>/<index>"``: an image task (upscale or any other) starting
from an output image of one of the caller's finished jobs, with the image route's owner
check; every refusal names ``init_image`` and costs nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from shared.api_keys import ApiKeyStore
from shared.heartbeat import beat
from shared.jobstore import JobStore
from shared.model_registry import EMOJI_UPSCALER
from shared.settings import Settings
from shared.storage import Storage, input_key
from tests.api.conftest import queued_tasks
from tests.api.test_jobs import finish


def submit(client: TestClient, body: dict, headers: dict | None = None) -> dict:
    response = client.post("/v1/jobs", json=body, headers=headers or {})
    assert response.status_code == 202, response.text
    return response.json()


def refused(client: TestClient, body: dict, status: int, code: str,
            headers: dict | None = None) -> dict:
    response = client.post("/v1/jobs", json=body, headers=headers or {})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["field"], error["code"]) == ("init_image", code), error
    return error


@pytest.fixture
def finished(client: TestClient, store: JobStore, storage: Storage) -> str:
    """A succeeded text-to-image job with two 64x64 PNGs."""
    job_id = submit(client, {"prompt": "a cat", "num_images": 2})["id"]
    finish(store, storage, job_id, count=2)
    return job_id


@pytest.fixture
def upscaler_served(redis_url: str) -> None:
    beat(redis.Redis.from_url(redis_url), EMOJI_UPSCALER, "test-worker", ttl_seconds=600)


def stored_init(storage: Storage, job_id: str) -> Image.Image:
    image = Image.open(io.BytesIO(storage.get(input_key(job_id, "init"))))
    image.load()
    return image


def test_upscale_starts_from_a_finished_jobs_image(
    client: TestClient, storage: Storage, finished: str, upscaler_served: None
) -> None:
    job = submit(client, {"task": "upscale", "model": EMOJI_UPSCALER,
                          "init_image": f"job:{finished}/1"})
    plan = job["request"]
    assert (plan["task"], plan["scale"], plan["width"], plan["height"]) == ("upscale", 2, 128,
                                                                             128)
    assert plan["tile"] is None and plan["noise_level"] is not None
    # The input stored for the worker is that very image (index 1 is red 1).
    assert stored_init(storage, job["id"]).getpixel((0, 0)) == (1, 0, 0)


def test_any_image_task_may_name_a_job_image(
    client: TestClient, storage: Storage, finished: str
) -> None:
    job = submit(client, {"task": "image-to-image", "prompt": "a dog",
                          "init_image": f"job:{finished}/0", "width": 32})
    assert (job["request"]["width"], job["request"]["height"]) == (32, 32)
    assert stored_init(storage, job["id"]).size == (32, 32)


def test_a_job_not_finished_or_an_image_it_lacks_is_a_422(
    client: TestClient, broker: redis.Redis, finished: str, upscaler_served: None
) -> None:
    queued = submit(client, {"prompt": "a cat"})["id"]
    before = queued_tasks(broker)
    body = {"task": "upscale", "model": EMOJI_UPSCALER}
    error = refused(client, {**body, "init_image": f"job:{queued}/0"}, 422, "job_not_finished")
    assert "queued" in error["message"]
    error = refused(client, {**body, "init_image": f"job:{finished}/2"}, 422, "image_not_found")
    assert "has no image 2" in error["message"]
    refused(client, {**body, "init_image": f"job:{finished}"}, 422, "invalid_image")
    assert queued_tasks(broker) == before


@pytest.fixture
def two_keys(settings: Settings, redis_url: str) -> Iterator[tuple[TestClient, dict]]:
    keys = ApiKeyStore(redis.Redis.from_url(redis_url, decode_responses=True))
    secrets = {name: keys.create(name)[1] for name in ("alice", "bob")}
    with TestClient(create_app(settings)) as client:
        yield client, {name: {"Authorization": f"Bearer {s}"} for name, s in secrets.items()}


def test_another_keys_job_is_answered_as_the_image_route_answers(
    two_keys: tuple[TestClient, dict], store: JobStore, storage: Storage, upscaler_served: None
) -> None:
    client, headers = two_keys
    alices = submit(client, {"prompt": "a cat"}, headers["alice"])["id"]
    finish(store, storage, alices, count=1)
    image_route = client.get(f"/v1/jobs/{alices}/images/0", headers=headers["bob"])
    assert image_route.status_code == 404
    body = {"task": "upscale", "model": EMOJI_UPSCALER, "init_image": f"job:{alices}/0"}
    error = refused(client, body, 404, image_route.json()["error"]["code"], headers["bob"])
    missing = refused(client, {**body, "init_image": "job:job_0123456789abcdef01234567/0"},
                      404, "job_not_found", headers["bob"])
    # Bob cannot tell Alice's job from one that does not exist.
    assert error["message"].replace(alices, "ID") == missing["message"].replace(
        "job_0123456789abcdef01234567", "ID")
    assert submit(client, body, headers["alice"])["request"]["width"] == 128


def test_a_multipart_request_part_may_name_a_job_image(
    client: TestClient, finished: str, upscaler_served: None
) -> None:
    fields = {"task": "upscale", "model": EMOJI_UPSCALER, "init_image": f"job:{finished}/0"}
    response = client.post("/v1/jobs", files={
        "request": (None, json.dumps(fields), "application/json")})
    assert response.status_code == 202, response.text
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    both = client.post("/v1/jobs", files={
        "request": (None, json.dumps(fields), "application/json"),
        "init_image": ("cat.png", buffer.getvalue(), "image/png")})
    assert both.status_code == 422 and both.json()["error"]["field"] == "init_image"
