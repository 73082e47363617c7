"""Bad input over HTTP: a clear 4xx in the one error shape, nothing stored, nothing queued."""

from __future__ import annotations

import base64
import io

import pytest
import redis
from PIL import Image

from tests.integration.conftest import Service


def png_b64(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def bomb_b64() -> str:
    """A tiny PNG that claims 20000×20000 pixels: must be refused before decoding."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


OK = {"prompt": "a cat", "steps": 2}
BAD_INPUTS = [
    ("prompt too long", {**OK, "prompt": "x" * 2001}, 422, "prompt"),
    ("missing prompt", {"steps": 2}, 422, "prompt"),
    ("width not a multiple of 8", {**OK, "width": 65}, 422, "width"),
    ("height above the model's limit", {**OK, "height": 4096}, 422, "height"),
    ("zero steps", {**OK, "steps": 0}, 422, "steps"),
    ("too many steps", {**OK, "steps": 151}, 422, "steps"),
    ("guidance too high", {**OK, "guidance_scale": 31}, 422, "guidance_scale"),
    ("too many images", {**OK, "num_images": 9}, 422, "num_images"),
    ("unknown scheduler", {**OK, "scheduler": "magic"}, 422, "scheduler"),
    ("unknown model", {**OK, "model": "nope"}, 422, "model"),
    ("unknown task", {**OK, "task": "dance"}, 422, "task"),
    ("negative seed", {**OK, "seed": -1}, 422, "seed"),
    ("unknown output format", {**OK, "output_format": "gif"}, 422, "output_format"),
    ("unknown field", {**OK, "colour": "red"}, 422, "colour"),
    ("bad base64", {**OK, "task": "image-to-image", "init_image": "!!notbase64!!"}, 422,
     "init_image"),
    ("not an image", {**OK, "task": "image-to-image",
                      "init_image": base64.b64encode(b"hello").decode()}, 422, "init_image"),
    ("decompression bomb", {**OK, "task": "image-to-image", "init_image": bomb_b64()}, 413,
     "init_image"),
    ("inpaint without mask", {**OK, "task": "inpaint", "init_image": png_b64((64, 64))}, 422,
     None),
    ("outpaint without margins", {**OK, "task": "outpaint", "init_image": png_b64((64, 64))},
     422, None),
    ("webhook not http", {**OK, "webhook": {"url": "ftp://example.com/x"}}, 422, "webhook"),
    ("webhook unknown event", {**OK, "webhook": {"url": "https://example.com/x",
                                                 "events": ["exploded"]}}, 422, "webhook"),
]


def broker_backlog(client: redis.Redis) -> int:
    return sum(client.llen(key) for key in client.keys("gen.*") if client.type(key) == b"list")


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_and_costs_nothing(
    service: Service, case: str, body: dict, status: int, field: str | None
) -> None:
    client = redis.Redis.from_url(service.redis_url)
    jobs_before = client.keys("latentd:job:*")
    backlog_before = broker_backlog(client)
    response = service.client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        assert (error.get("field") or "").startswith(field), error
    assert client.keys("latentd:job:*") == jobs_before
    assert broker_backlog(client) == backlog_before


def test_malformed_json_and_unknown_job(service: Service) -> None:
    response = service.client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert "error" in response.json()
    missing = service.client.get("/v1/jobs/job_000000000000000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"]
