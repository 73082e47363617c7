"""Bad input: a 4xx in the one error shape naming the field, with nothing stored or queued."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from shared.jobstore import JobStore
from shared.schemas import MAX_IMAGE_B64_CHARS
from shared.settings import Settings
from tests.api.conftest import png_b64, queued_tasks


def png_header_only(width: int, height: int) -> str:
    """A few-byte PNG that claims ``width``×``height``: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\0" * 64)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def gif_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="GIF")
    return base64.b64encode(buffer.getvalue()).decode()


OK = {"prompt": "a cat"}
IMG2IMG = {**OK, "task": "image-to-image"}
INIT = png_b64((64, 64))

# (case, body, status, field, code or None)
BAD_INPUTS = [
    ("prompt too long", {"prompt": "x" * 2001}, 422, "prompt", None),
    ("prompt missing", {"steps": 2}, 422, "prompt", None),
    ("width not a multiple of 8", {**OK, "width": 100}, 422, "width", None),
    ("width over the model max", {**OK, "width": 1024}, 422, "width", "size_too_large"),
    ("height over the model max", {**OK, "height": 520}, 422, "height", "size_too_large"),
    ("zero steps", {**OK, "steps": 0}, 422, "steps", None),
    ("151 steps", {**OK, "steps": 151}, 422, "steps", None),
    ("guidance 31", {**OK, "guidance_scale": 31}, 422, "guidance_scale", None),
    ("nine images", {**OK, "num_images": 9}, 422, "num_images", None),
    ("unknown scheduler", {**OK, "scheduler": "magic"}, 422, "scheduler", None),
    ("unknown model", {**OK, "model": "nope"}, 422, "model", "unknown_model"),
    ("unknown task", {**OK, "task": "upscale-9000"}, 422, "task", None),
    ("negative seed", {**OK, "seed": -1}, 422, "seed", None),
    ("seed over 2**32-1", {**OK, "seed": 2**32}, 422, "seed", None),
    ("bad output format", {**OK, "output_format": "gif"}, 422, "output_format", None),
    ("unknown field", {**OK, "colour": "red"}, 422, "colour", "unknown_field"),
    ("metadata too large", {**OK, "metadata": {"k": "v" * 5000}}, 422, "metadata", None),
    ("bad base64", {**IMG2IMG, "init_image": "!!not base64!!"}, 422, "init_image",
     "invalid_image"),
    ("not an image", {**IMG2IMG, "init_image": base64.b64encode(b"hello").decode()}, 422,
     "init_image", "unsupported_image_format"),
    ("unsupported format", {**IMG2IMG, "init_image": gif_b64()}, 422, "init_image",
     "unsupported_image_format"),
    ("oversized image", {**IMG2IMG, "init_image": "A" * (MAX_IMAGE_B64_CHARS + 4)}, 413,
     "init_image", "image_too_large"),
    ("decompression bomb", {**IMG2IMG, "init_image": png_header_only(30000, 30000)}, 413,
     "init_image", "image_too_large"),
    ("just over 4 megapixels", {**IMG2IMG, "init_image": png_header_only(2100, 2100)}, 413,
     "init_image", "image_too_large"),
    ("bad mask base64", {**OK, "task": "inpaint", "init_image": INIT, "mask_image": "%%%"},
     422, "mask_image", "invalid_image"),
    ("init image over the model max", {**IMG2IMG, "init_image": png_b64((600, 64))}, 422,
     "init_image", "size_too_large"),
    ("image task without init image", {**IMG2IMG}, 422, "init_image", None),
    ("init image on text-to-image", {**OK, "init_image": INIT}, 422, "init_image", None),
    ("mask on image-to-image", {**IMG2IMG, "init_image": INIT, "mask_image": INIT}, 422,
     "mask_image", "unexpected_input"),
    ("flow-matching sampler on a noise model", {**OK, "scheduler": "flow_match_euler"}, 422,
     "scheduler", "unsupported_scheduler"),
    ("inpaint without mask", {**OK, "task": "inpaint", "init_image": INIT}, 422,
     "mask_image", None),
    ("outpaint without margins", {**OK, "task": "outpaint", "init_image": INIT}, 422,
     "outpaint", None),
    ("outpaint margin not a multiple of 8",
     {**OK, "task": "outpaint", "init_image": INIT, "outpaint": {"left": 5}}, 422,
     "outpaint.left", None),
    ("outpaint beyond the model max",
     {**OK, "task": "outpaint", "init_image": png_b64((512, 64)), "outpaint": {"left": 8}},
     422, "outpaint", "size_too_large"),
    ("strength 0", {**IMG2IMG, "init_image": INIT, "strength": 0}, 422, "strength", None),
    ("strength leaving no steps", {**IMG2IMG, "init_image": INIT, "steps": 4, "strength": 0.2},
     422, "strength", "no_denoising_steps"),
    ("webhook url not a url", {**OK, "webhook": {"url": "not a url"}}, 422, "webhook.url", None),
    ("webhook url not http", {**OK, "webhook": {"url": "ftp://example.com/x"}}, 422,
     "webhook.url", None),
    ("webhook on loopback", {**OK, "webhook": {"url": "http://127.0.0.1:9000/hook"}}, 422,
     "webhook.url", "invalid_webhook_url"),
    ("webhook on a private network", {**OK, "webhook": {"url": "http://10.1.2.3/hook"}}, 422,
     "webhook.url", "invalid_webhook_url"),
    ("webhook on cloud metadata", {**OK, "webhook": {"url": "http://169.254.169.254/"}}, 422,
     "webhook.url", "invalid_webhook_url"),
    ("webhook on localhost name", {**OK, "webhook": {"url": "http://localhost:8080/"}}, 422,
     "webhook.url", "invalid_webhook_url"),
    ("webhook event not allowed", {**OK, "webhook": {"url": "https://93.184.215.14/",
                                                     "events": ["queued"]}}, 422,
     "webhook.events", None),
]


@pytest.mark.parametrize(("case", "body", "status", "field", "code"), BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_and_costs_nothing(
    client: TestClient, broker: redis.Redis, store: JobStore, settings: Settings,
    case: str, body: dict, status: int, field: str, code: str | None,
) -> None:
    response = client.post("/v1/jobs", json=body)

    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["field"] == field, error
    assert error["message"] and error["code"]
    if code is not None:
        assert error["code"] == code, error
    assert queued_tasks(broker) == {}
    assert store.list_jobs("public") == ([], None)
    assert not (Path(settings.images_dir) / "jobs").exists()


def test_private_webhook_is_accepted_when_allowed(client: TestClient, settings: Settings) -> None:
    settings.webhook_allow_private = True
    response = client.post("/v1/jobs", json={**OK, "webhook": {"url": "http://127.0.0.1:9/h"}})
    assert response.status_code == 202, response.text


def test_malformed_json_is_a_400(client: TestClient, broker: redis.Redis) -> None:
    response = client.post("/v1/jobs", content=b'{"prompt": ',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert queued_tasks(broker) == {}


def test_overlong_idempotency_key_is_refused(client: TestClient, broker: redis.Redis) -> None:
    response = client.post("/v1/jobs", json=OK, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Idempotency-Key"
    assert queued_tasks(broker) == {}


def test_body_over_the_limit_is_a_413_before_parsing(client: TestClient) -> None:
    from api.main import MAX_BODY_BYTES

    too_big = b"x" * (MAX_BODY_BYTES + 1)
    declared = client.post("/v1/jobs", content=too_big,
                           headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    streamed = client.post("/v1/jobs", content=iter([too_big[:1000], too_big[1000:]]),
                           headers={"content-type": "application/json"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
