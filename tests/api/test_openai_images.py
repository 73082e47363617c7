"""The OpenAI-compatible Images API in-process: how each request maps onto a job, the
answer's shape, and OpenAI's error shape. A fake worker below finishes (or fails) the
queued jobs as a worker would; the real pipeline runs in
tests/integration/test_openai_client.py."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from typing import Self

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from api.errors import ApiError
from api.main import create_app
from api.services.openai_images import (
    EDIT_STRENGTH,
    VARIATION_STRENGTH,
    guidance_for,
    model_for,
    resolve_size,
    steps_for,
)
from shared.api_keys import ApiKeyStore
from shared.heartbeat import beat
from shared.jobstore import JobStore
from shared.model_registry import BUILTIN_MODELS, EMOJI, TINY_RANDOM, ModelRegistry, ModelSpec
from shared.records import OutputImage
from shared.schemas import ErrorCode, Metrics, OutputFormat
from shared.settings import Settings
from shared.storage import Storage, image_key, input_key
from tests.api.conftest import task_job_ids

TINY = BUILTIN_MODELS[TINY_RANDOM]
EMOJI_SPEC = BUILTIN_MODELS[EMOJI]
SD15_LIKE = ModelSpec(name="sd", source="sd", default_width=512, default_height=512,
                      max_width=1024, max_height=1024)
SDXL_LIKE = ModelSpec(name="xl", source="xl", default_width=1024, default_height=1024,
                      max_width=1024, max_height=1024)
ERROR_KEYS = {"message", "type", "param", "code"}


class FakeWorker:
    """Takes every queued job and finishes it with plain PNGs of the plan's size (or fails
    it), through the job store as a generation worker does."""

    def __init__(self, store: JobStore, storage: Storage, broker: redis.Redis):
        self.store, self.storage, self.broker = store, storage, broker
        self.fail = False
        self._taken: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            for job_id in task_job_ids(self.broker):
                if job_id not in self._taken:
                    self._taken.add(job_id)
                    self._run(job_id)
            time.sleep(0.01)

    def _run(self, job_id: str) -> None:
        job = self.store.mark_running(job_id)
        assert job is not None
        if self.fail:
            self.store.mark_failed(job_id, ErrorCode.GENERATION_FAILED, "the pipeline broke")
            return
        plan, images = job.request, []
        for index, seed in enumerate(plan.seeds):
            buffer = io.BytesIO()
            Image.new("RGB", (plan.width, plan.height), (index * 40, 0, 0)).save(buffer, "PNG")
            self.storage.put(image_key(job_id, index, "png"), buffer.getvalue(), "image/png")
            images.append(OutputImage(index=index, seed=seed, width=plan.width,
                                      height=plan.height, format=OutputFormat.PNG))
        self.store.mark_succeeded(job_id, images, Metrics(total_seconds=0.01))


@pytest.fixture
def worker(store: JobStore, storage: Storage, broker: redis.Redis) -> Iterator[FakeWorker]:
    with FakeWorker(store, storage, broker) as fake:
        yield fake


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rgba(size: tuple[int, int], clear: tuple[int, int, int, int] | None = None) -> bytes:
    """An opaque red PNG; ``clear``: a box (left, top, right, bottom) made fully transparent."""
    image = Image.new("RGBA", size, (200, 30, 30, 255))
    if clear is not None:
        image.paste((0, 0, 0, 0), clear)
    return png(image)


def job_of(client: TestClient, response) -> dict:
    job_id = response.headers["X-Latentd-Job-Id"]
    return client.get(f"/v1/jobs/{job_id}").json()


def assert_openai_error(response, status: int, param: str | None, code: str | None = None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    error = body["error"]
    assert error["param"] == param, error
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert error["code"] == code, error
    return error


# -- the mapping ---------------------------------------------------------------------


def test_sizes_the_model_can_make_run_as_asked() -> None:
    assert resolve_size(None, TINY) == (64, 64)
    assert resolve_size("auto", TINY) == (64, 64)
    assert resolve_size("128x96", TINY) == (128, 96)
    assert resolve_size("512x512", TINY) == (512, 512)
    assert resolve_size("256x256", EMOJI_SPEC) == (256, 256)  # within emoji's maximum
    assert resolve_size("1024x1024", SD15_LIKE) == (1024, 1024)


@pytest.mark.parametrize(("spec", "size", "runs_at"), [
    (EMOJI_SPEC, "1024x1024", (64, 64)),
    (EMOJI_SPEC, "1792x1024", (112, 64)),
    (EMOJI_SPEC, "1024x1792", (64, 112)),
    (EMOJI_SPEC, "1536x1024", (96, 64)),
    (EMOJI_SPEC, "512x512", (64, 64)),
    (TINY, "1024x1024", (64, 64)),
    (SD15_LIKE, "1792x1024", (896, 512)),
    (SD15_LIKE, "1024x1536", (512, 768)),
    # At its native scale it would still be too wide: scaled down to fit.
    (SDXL_LIKE, "1792x1024", (1024, 584)),
])
def test_openai_sizes_beyond_the_model_run_at_its_native_scale(
    spec: ModelSpec, size: str, runs_at: tuple[int, int]
) -> None:
    assert resolve_size(size, spec) == runs_at


@pytest.mark.parametrize(("size", "says"), [
    ("2048x2048", "runs up to 512x512"),
    ("520x64", "runs up to 512x512"),
    ("100x100", "multiples of 8"),
    ("0x64", "multiples of 8"),
    ("big", "WIDTHxHEIGHT"),
    ("64X64", "WIDTHxHEIGHT"),
])
def test_other_sizes_are_refused_naming_size(size: str, says: str) -> None:
    with pytest.raises(ApiError) as refused:
        resolve_size(size, TINY)
    assert (refused.value.status_code, refused.value.field) == (400, "size")
    assert says in refused.value.message


def test_the_emoji_model_says_what_it_makes() -> None:
    with pytest.raises(ApiError) as refused:
        resolve_size("320x320", EMOJI_SPEC)
    assert "made for 64x64" in refused.value.message
    assert "1024x1024 → 64x64" in refused.value.message


def test_an_image_task_runs_at_the_image_size_or_the_native_scale() -> None:
    assert resolve_size(None, TINY, (100, 60)) == (96, 56)  # rounded down to 8
    assert resolve_size("auto", TINY, (512, 256)) == (512, 256)
    assert resolve_size(None, TINY, (1024, 1024)) == (64, 64)
    assert resolve_size(None, TINY, (600, 400)) == (96, 64)
    assert resolve_size("128x128", TINY, (1024, 1024)) == (128, 128)


def test_quality_scales_steps_and_style_scales_guidance() -> None:
    assert [steps_for(q, TINY) for q in (None, "auto", "standard", "medium")] == [None] * 4
    assert steps_for("low", TINY) == 2
    assert steps_for("hd", TINY) == steps_for("high", TINY) == 8
    assert steps_for("max", TINY) == 12
    assert steps_for("max", TINY.model_copy(update={"default_steps": 80})) == 150
    assert steps_for("low", TINY.model_copy(update={"default_steps": 1})) == 1
    assert guidance_for(None, TINY) is None
    assert guidance_for("vivid", TINY) == 6.5
    assert guidance_for("natural", TINY) == 3.5


def test_openai_model_names_run_the_default_model(settings: Settings) -> None:
    registry = ModelRegistry.from_settings(settings)
    for name in (None, "dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-2", "chatgpt-image-latest"):
        assert model_for(registry, name).name == TINY_RANDOM
    assert model_for(registry, EMOJI).name == EMOJI
    with pytest.raises(ApiError) as refused:
        model_for(registry, "stable-diffusion-9")
    assert (refused.value.status_code, refused.value.field) == (400, "model")
    assert "tiny-random" in refused.value.message


# -- generations ---------------------------------------------------------------------


def test_generation_answers_like_openai_with_urls_on_this_service(
    client: TestClient, worker: FakeWorker
) -> None:
    before = int(time.time())
    response = client.post("/v1/images/generations", json={"prompt": "a red heart", "n": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"created", "data", "size", "output_format"}
    assert before <= body["created"] <= time.time() + 1
    assert (body["size"], body["output_format"]) == ("64x64", "png")
    job = job_of(client, response)
    assert body["data"] == [
        {"url": f"http://testserver/v1/jobs/{job['id']}/images/{index}", "b64_json": None,
         "revised_prompt": "a red heart"}
        for index in range(2)
    ]
    image = client.get(body["data"][1]["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    # An ordinary job: listed with the others, saying where it came from.
    assert job["id"] in [j["id"] for j in client.get("/v1/jobs").json()["jobs"]]
    assert job["status"] == "succeeded"
    assert job["metadata"] == {"openai": {"endpoint": "images/generations"}}


def test_b64_json_carries_each_png(client: TestClient, worker: FakeWorker) -> None:
    response = client.post("/v1/images/generations", json={
        "prompt": "x", "n": 3, "size": "128x64", "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 3 and all(d["url"] is None for d in data)
    colours = set()
    for item in data:
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        assert (image.format, image.size) == ("PNG", (128, 64))
        colours.add(image.convert("RGB").getpixel((0, 0)))
    assert len(colours) == 3  # each image of the job, in order, not one three times


def test_model_size_quality_style_and_user_map_onto_the_job(
    client: TestClient, worker: FakeWorker
) -> None:
    response = client.post("/v1/images/generations", json={
        "prompt": "cat face", "model": "dall-e-3", "size": "1792x1024", "quality": "hd",
        "style": "vivid", "user": "user-7", "output_format": "webp", "moderation": "low",
        "background": "auto", "partial_images": 0, "stream": False,
    })
    assert response.status_code == 200, response.text
    assert (response.json()["size"], response.json()["output_format"]) == ("112x64", "webp")
    job = job_of(client, response)
    plan = job["request"]
    assert (plan["model"], plan["task"], plan["width"], plan["height"]) == (
        "tiny-random", "text-to-image", 112, 64)
    assert (plan["steps"], plan["guidance_scale"], plan["output_format"]) == (8, 6.5, "webp")
    assert job["metadata"]["openai"] == {
        "endpoint": "images/generations", "model": "dall-e-3", "size": "1792x1024",
        "quality": "hd", "style": "vivid", "user": "user-7"}


def test_the_emoji_model_maps_openai_sizes_and_refuses_others(
    client: TestClient, worker: FakeWorker, redis_url: str
) -> None:
    beat(redis.Redis.from_url(redis_url), EMOJI, "test-worker", ttl_seconds=60)
    made = client.post("/v1/images/generations", json={
        "prompt": "cat face", "model": "emoji", "size": "1024x1024"})
    assert made.status_code == 200 and made.json()["size"] == "64x64"
    refused = client.post("/v1/images/generations", json={
        "prompt": "cat face", "model": "emoji", "size": "320x320"})
    message = assert_openai_error(refused, 400, "size", "unsupported_size")["message"]
    assert "made for 64x64" in message and "up to 256x256" in message


def test_an_idempotency_key_replays_the_same_job(client: TestClient, worker: FakeWorker) -> None:
    headers = {"Idempotency-Key": "openai-1"}
    first = client.post("/v1/images/generations", json={"prompt": "x"}, headers=headers)
    again = client.post("/v1/images/generations", json={"prompt": "x"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.headers["X-Latentd-Job-Id"] == again.headers["X-Latentd-Job-Id"]
    assert first.json()["data"] == again.json()["data"]
    other = client.post("/v1/images/generations", json={"prompt": "y"}, headers=headers)
    assert_openai_error(other, 409, "Idempotency-Key", "idempotency_key_reused")


# -- edits and variations ------------------------------------------------------------


def stored_mask(storage: Storage, job: dict) -> Image.Image:
    return Image.open(io.BytesIO(storage.get(input_key(job["id"], "mask"))))


def test_an_edit_without_mask_repaints_the_transparent_pixels(
    client: TestClient, worker: FakeWorker, storage: Storage
) -> None:
    image = rgba((64, 48), clear=(0, 0, 32, 24))
    response = client.post("/v1/images/edits", data={"prompt": "a cat", "n": "2"},
                           files={"image": ("in.png", image, "image/png")})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2 and response.json()["size"] == "64x48"
    assert response.json()["data"][0]["revised_prompt"] == "a cat"
    job = job_of(client, response)
    plan = job["request"]
    assert (plan["task"], plan["strength"], plan["prompt"]) == ("inpaint", EDIT_STRENGTH, "a cat")
    mask = stored_mask(storage, job)  # latentd's convention: white = repaint
    assert mask.size == (64, 48)
    assert mask.getpixel((5, 5)) == 255 and mask.getpixel((40, 30)) == 0
    assert job["metadata"]["openai"]["endpoint"] == "images/edits"


def test_an_edit_with_a_mask_repaints_where_the_mask_is_transparent(
    client: TestClient, worker: FakeWorker, storage: Storage
) -> None:
    # The image has its own transparent corner; the mask, not the image, says what to edit.
    image, mask = rgba((64, 64), clear=(0, 0, 8, 8)), rgba((64, 64), clear=(32, 0, 64, 64))
    response = client.post(
        "/v1/images/edits", data={"prompt": "a dog", "size": "128x128"},
        files={"image": ("in.png", image, "image/png"), "mask": ("m.png", mask, "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["size"] == "128x128"
    job = job_of(client, response)
    assert job["request"]["task"] == "inpaint"
    stored = stored_mask(storage, job)
    assert stored.size == (128, 128)  # resized with the image, edge kept
    assert stored.getpixel((2, 2)) == 0 and stored.getpixel((100, 10)) == 255


def test_an_edit_of_an_opaque_image_without_mask_redraws_it_whole(
    client: TestClient, worker: FakeWorker
) -> None:
    response = client.post("/v1/images/edits", data={"prompt": "a fox"},
                           files={"image[]": ("in.png", rgba((64, 64)), "image/png")})
    assert response.status_code == 200, response.text
    assert job_of(client, response)["request"]["task"] == "image-to-image"


def test_bad_edits_are_refused_naming_image_or_mask(client: TestClient, broker: redis.Redis
                                                    ) -> None:
    image = rgba((64, 64), clear=(0, 0, 8, 8))

    def edit(**files: tuple[str, bytes, str]):
        return client.post("/v1/images/edits", data={"prompt": "x"}, files=list(files.items()))

    message = assert_openai_error(edit(image=("a.png", image, "image/png"),
                                       mask=("m.png", rgba((32, 32), (0, 0, 8, 8)), "image/png")),
                                  400, "mask", "invalid_mask")["message"]
    assert "32x32" in message and "64x64" in message
    assert_openai_error(edit(image=("a.png", image, "image/png"),
                             mask=("m.png", rgba((64, 64)), "image/png")), 400, "mask")
    assert_openai_error(edit(image=("a.txt", b"not an image", "text/plain")), 400, "image",
                        "unsupported_image_format")
    assert_openai_error(edit(mask=("m.png", image, "image/png")), 400, "image",
                        "missing_required_parameter")
    two = client.post("/v1/images/edits", data={"prompt": "x"}, files=[
        ("image[]", ("a.png", image, "image/png")), ("image[]", ("b.png", image, "image/png"))])
    assert_openai_error(two, 400, "image", "too_many_images")
    no_prompt = client.post("/v1/images/edits", files={"image": ("a.png", image, "image/png")})
    assert_openai_error(no_prompt, 400, "prompt", "missing_required_parameter")
    assert task_job_ids(broker) == []


def test_a_variation_is_image_to_image_with_no_prompt(
    client: TestClient, worker: FakeWorker
) -> None:
    response = client.post("/v1/images/variations", data={"n": "2", "model": "dall-e-2"},
                           files={"image": ("in.png", rgba((80, 48)), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == "80x48" and [d["revised_prompt"] for d in body["data"]] == ["", ""]
    plan = job_of(client, response)["request"]
    assert (plan["task"], plan["strength"], plan["prompt"], plan["num_images"]) == (
        "image-to-image", VARIATION_STRENGTH, "", 2)
    too_big = client.post("/v1/images/variations", data={"size": "1024x1536"},
                          files={"image": ("in.png", rgba((80, 48)), "image/png")})
    assert too_big.status_code == 200 and too_big.json()["size"] == "64x96"


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"prompt": "x", "size": "4096x4096"}, "size", "unsupported_size"),
    ({"prompt": "x", "size": "100x100"}, "size", "invalid_size"),
    ({"prompt": "x", "n": 9}, "n", "invalid_value"),
    ({"prompt": "x", "n": "2"}, "n", "invalid_value"),  # numbers are strict, as in /v1/jobs
    ({"prompt": "x", "response_format": "png"}, "response_format", "invalid_value"),
    ({"prompt": "x", "quality": "ultra"}, "quality", "invalid_value"),
    ({"prompt": "x", "output_format": "gif"}, "output_format", "invalid_value"),
    ({"prompt": "x", "background": "transparent"}, "background", "invalid_value"),
    ({"prompt": "x", "stream": True}, "stream", "unsupported_parameter"),
    ({"prompt": "x", "model": "sd-9000"}, "model", "unknown_model"),
    ({"prompt": "x", "seed": 1}, "seed", "unknown_parameter"),
    ({"prompt": ""}, "prompt", "invalid_value"),
    ({"prompt": "x" * 2001}, "prompt", "invalid_value"),
    ({"n": 1}, "prompt", "missing_required_parameter"),
])
def test_bad_input_is_a_400_in_openai_shape_and_queues_nothing(
    client: TestClient, broker: redis.Redis, body: dict, param: str, code: str
) -> None:
    response = client.post("/v1/images/generations", json=body)
    assert_openai_error(response, 400, param, code)
    assert task_job_ids(broker) == []


def test_a_body_that_is_not_json_is_a_400(client: TestClient) -> None:
    response = client.post("/v1/images/generations", content=b"{nope",
                           headers={"content-type": "application/json"})
    assert "could not parse the JSON" in assert_openai_error(response, 400, None)["message"]


def test_the_rest_of_the_api_keeps_its_own_error_shape(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"prompt": "x", "size": "64x64"})
    assert response.status_code == 422
    assert response.json() == {"error": {"code": "unknown_field", "field": "size",
                                         "message": "unknown field 'size'"}}


def test_a_failed_job_is_a_server_error_the_client_must_not_retry(
    client: TestClient, worker: FakeWorker
) -> None:
    worker.fail = True
    response = client.post("/v1/images/generations", json={"prompt": "x"})
    error = assert_openai_error(response, 500, None, "generation_failed")
    job_id = response.headers["X-Latentd-Job-Id"]
    assert job_id in error["message"] and "the pipeline broke" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"


def test_a_job_still_queued_after_the_wait_is_a_504_naming_it(settings: Settings) -> None:
    quick = settings.model_copy(update={"max_wait_seconds": 0})
    with TestClient(create_app(quick)) as client:
        response = client.post("/v1/images/generations", json={"prompt": "x"})
        error = assert_openai_error(response, 504, None, "wait_timeout")
        job_id = response.headers["X-Latentd-Job-Id"]
        assert f"/v1/jobs/{job_id}" in error["message"]
        assert response.headers["x-should-retry"] == "false"
        # It goes on as any job: a worker will still run it.
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"


@pytest.mark.no_workers
def test_a_model_no_worker_serves_is_a_503_before_any_job(client: TestClient) -> None:
    response = client.post("/v1/images/generations", json={"prompt": "x"})
    assert_openai_error(response, 503, None, "model_unavailable")
    assert response.headers["Retry-After"]
    assert client.get("/v1/jobs").json()["jobs"] == []


@pytest.fixture
def secured_app(settings: Settings, redis_url: str) -> tuple[FastAPI, dict[str, str]]:
    keys = ApiKeyStore(redis.Redis.from_url(redis_url, decode_responses=True))
    secrets = {name: keys.create(name)[1] for name in ("alice", "bob")}
    return create_app(settings), secrets


def test_api_keys_work_as_openai_bearer_tokens(
    secured_app: tuple[FastAPI, dict[str, str]], broker: redis.Redis
) -> None:
    app, secrets = secured_app
    with TestClient(app) as client:
        missing = client.post("/v1/images/generations", json={"prompt": "x"})
        assert_openai_error(missing, 401, None, "missing_api_key")
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = client.post("/v1/images/generations", json={"prompt": "x"},
                            headers={"Authorization": "Bearer sk-not-a-key"})
        assert_openai_error(wrong, 401, None, "invalid_api_key")
        # Refused before the body is looked at: a bad body without a key is still a 401.
        assert client.post("/v1/images/edits").status_code == 401
        state = app.state.latentd
        alice = {"Authorization": f"Bearer {secrets['alice']}"}
        with FakeWorker(state.store, state.storage, broker):
            made = client.post("/v1/images/generations", json={"prompt": "x"}, headers=alice)
        assert made.status_code == 200, made.text
        job_id = made.headers["X-Latentd-Job-Id"]
        assert [j["id"] for j in client.get("/v1/jobs", headers=alice).json()["jobs"]] == [job_id]
        bob = {"Authorization": f"Bearer {secrets['bob']}"}
        assert client.get("/v1/jobs", headers=bob).json()["jobs"] == []
        assert client.get(made.json()["data"][0]["url"], headers=bob).status_code == 404
