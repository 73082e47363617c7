"""``POST /v1/jobs`` as multipart/form-data: a ``request`` part (the JSON body's fields) and
the images as file parts, through the same validation, limits and error shape as JSON."""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from api.services.images import MAX_IMAGE_BYTES
from shared.jobstore import JobStore
from shared.settings import Settings
from shared.storage import Storage, input_key
from tests.api.conftest import png_b64, queued_tasks
from tests.bad_inputs import BAD_INPUTS

IMAGES = ("init_image", "mask_image")


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    return base64.b64decode(png_b64(size, mode))


def as_multipart(body: dict) -> dict:
    """TestClient arguments sending ``body`` as multipart: its images as file parts."""
    files: dict = {name: (f"{name}.png", base64.b64decode(body[name], validate=True),
                          "image/png") for name in IMAGES if name in body}
    fields = {name: value for name, value in body.items() if name not in IMAGES}
    return {"files": {"request": (None, json.dumps(fields), "application/json"), **files}}


def assert_refused(response, status: int, field: str, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(response.json()) == {"error"} and set(error) == {"code", "message", "field"}
    assert error["field"] == field, error
    if code is not None:
        assert error["code"] == code, error
    return error


def test_an_image_task_from_files_runs_as_the_same_json_job(
    client: TestClient, storage: Storage
) -> None:
    init, mask = png((80, 80)), png((20, 20), "L")
    fields = {"prompt": "a cat", "task": "inpaint", "width": 64, "height": 48, "seed": 3}
    response = client.post("/v1/jobs", files={
        "request": (None, json.dumps(fields), "application/json"),
        "init_image": ("cat.png", init, "image/png"),
        "mask_image": ("mask.png", mask, "image/png"),
    })
    assert response.status_code == 202, response.text
    uploaded = response.json()
    same = client.post("/v1/jobs", json={**fields, "init_image": base64.b64encode(init).decode(),
                                         "mask_image": base64.b64encode(mask).decode()})
    as_json = same.json()
    assert uploaded["request"] == as_json["request"]
    assert (uploaded["request"]["width"], uploaded["request"]["height"]) == (64, 48)
    for name in ("init", "mask"):
        assert storage.get(input_key(uploaded["id"], name)) == storage.get(
            input_key(as_json["id"], name))
    stored = Image.open(io.BytesIO(storage.get(input_key(uploaded["id"], "init"))))
    assert stored.size == (64, 48)


def test_a_request_part_sent_as_a_file_and_no_images_is_a_plain_job(client: TestClient) -> None:
    response = client.post("/v1/jobs", files={
        "request": ("job.json", b'{"prompt": "red heart", "steps": 3}', "application/json")})
    assert response.status_code == 202, response.text
    assert response.json()["request"]["steps"] == 3


def test_json_and_multipart_bodies_of_one_request_are_one_idempotent_job(
    client: TestClient
) -> None:
    body = {"prompt": "a cat", "task": "image-to-image", "init_image": png_b64((64, 64))}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/jobs", **as_multipart(body), headers={"Idempotency-Key": "k1"})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", **as_multipart({**body, "init_image": png_b64((64, 56))}),
                        headers={"Idempotency-Key": "k1"})
    assert_refused(other, 409, "Idempotency-Key", "idempotency_key_reused")


def _uploadable(body: dict) -> bool:
    """Rows whose images are base64 text, so they can be sent as file bytes."""
    try:
        as_multipart(body)
    except (binascii.Error, ValueError, TypeError):
        return False
    return True


UPLOADABLE = [row for row in BAD_INPUTS if _uploadable(row[1])]


@pytest.mark.parametrize(("case", "body", "status", "field", "code"), UPLOADABLE,
                         ids=[row[0] for row in UPLOADABLE])
def test_bad_input_as_multipart_gets_what_it_gets_as_json(
    client: TestClient, broker: redis.Redis, store: JobStore, settings: Settings,
    case: str, body: dict, status: int, field: str, code: str | None,
) -> None:
    assert_refused(client.post("/v1/jobs", **as_multipart(body)), status, field, code)
    assert queued_tasks(broker) == {}
    assert store.list_jobs("public") == ([], None)
    assert not (Path(settings.images_dir) / "jobs").exists()


def test_bad_input_table_has_image_rows_sent_as_files() -> None:
    assert sum(any(name in row[1] for name in IMAGES) for row in UPLOADABLE) >= 10


def text_part(value: str) -> tuple[None, str]:
    return (None, value)


@pytest.mark.parametrize(("parts", "status", "field", "code"), [
    ({"init_image": ("a.png", png((64, 64)), "image/png")}, 422, "request", "invalid_request"),
    ({"request": text_part('{"prompt": ')}, 422, "request", "invalid_json"),
    ({"request": ("job.json", b"\xff\xfe\xfa", "application/json")}, 422, "request",
     "invalid_json"),
    ({"request": text_part('["a cat"]')}, 422, "request", "invalid_request"),
    ({"request": text_part('{"prompt": "x", "task": "image-to-image", "init_image": "aGk="}')},
     422, "init_image", "invalid_request"),
    ({"request": text_part('{"prompt": "x", "task": "image-to-image"}'),
      "init_image": text_part(png_b64((64, 64)))}, 422, "init_image", "invalid_request"),
    ({"request": text_part('{"prompt": "x"}'), "seed": text_part("3")}, 422, "seed",
     "unknown_field"),
    ({"request": text_part('{"prompt": "x", "steps": "3"}')}, 422, "steps", "invalid_request"),
    ({"request": text_part('{"prompt": "x", "task": "image-to-image"}'),
      "init_image": ("big.png", b"\0" * (MAX_IMAGE_BYTES + 1), "image/png")}, 413,
     "init_image", "image_too_large"),
], ids=["no request part", "request not JSON", "request not UTF-8", "request not an object",
        "image inside request", "image as a text part", "a field as its own part",
        "numbers stay strict", "image over 10 MB"])
def test_multipart_refusals_name_the_part(
    client: TestClient, broker: redis.Redis, parts: dict, status: int, field: str, code: str,
) -> None:
    assert_refused(client.post("/v1/jobs", files=parts), status, field, code)
    assert queued_tasks(broker) == {}


def test_a_part_sent_twice_is_refused(client: TestClient) -> None:
    files = [("request", text_part('{"prompt": "x", "task": "image-to-image"}')),
             ("init_image", ("a.png", png((64, 64)), "image/png")),
             ("init_image", ("b.png", png((64, 64)), "image/png"))]
    assert_refused(client.post("/v1/jobs", files=files), 422, "init_image", "invalid_request")


def test_a_malformed_multipart_body_is_a_400(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=b"--x\r\nnot a part",
                           headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"


def test_a_multipart_body_over_the_size_limit_is_a_413(client: TestClient) -> None:
    files = {"request": text_part('{"prompt": "x"}'),
             "init_image": ("a.png", b"\0" * (30 * 1024 * 1024), "image/png")}
    response = client.post("/v1/jobs", files=files)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_openapi_keeps_json_the_default_and_documents_the_multipart_form(
    client: TestClient
) -> None:
    body = client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert list(body["content"]) == ["application/json", "multipart/form-data"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerationRequest"}
    form = body["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["request"]
    assert {name: form["properties"][name].get("format") for name in IMAGES} == {
        "init_image": "binary", "mask_image": "binary"}
