"""End to end over HTTP: every task and scheduler through real workers and tiny-random."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from shared.schemas import NOISE_SCHEDULERS
from tests.integration.conftest import Service


def png_b64(size: tuple[int, int], color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_text_to_image_returns_a_png_with_its_parameters(service: Service) -> None:
    job = service.run({
        "prompt": "a red apple", "negative_prompt": "blurry", "width": 64, "height": 48,
        "num_images": 2, "steps": 3, "guidance_scale": 6, "seed": 1234,
        "metadata": {"request": "abc"},
    })
    assert job["request"]["seeds"] == [1234, 1235]
    assert job["metadata"] == {"request": "abc"}
    assert job["metrics"]["inference_seconds"] > 0
    assert job["metrics"]["total_seconds"] >= job["metrics"]["inference_seconds"]
    assert [i["seed"] for i in job["images"]] == [1234, 1235]
    for info in job["images"]:
        image = open_image(service.image(job, info["index"]))
        assert image.format == "PNG" and image.size == (64, 48)
        parameters = image.info["parameters"]
        assert parameters.startswith("a red apple\nNegative prompt: blurry\n")
        assert f"Seed: {info['seed']}" in parameters
        assert "Steps: 3" in parameters and "CFG scale: 6" in parameters
        assert "Size: 64x48" in parameters and "Model: tiny-random" in parameters
    assert service.client.get(f"/v1/jobs/{job['id']}/images/2").status_code == 404


def test_same_seed_gives_identical_bytes_and_another_seed_differs(service: Service) -> None:
    body = {"prompt": "a blue bird", "steps": 3, "seed": 7}
    first = service.image(service.run(body))
    second = service.image(service.run(body))
    other = service.image(service.run({**body, "seed": 8}))
    assert first == second
    assert first != other


def test_server_picks_and_returns_seeds(service: Service) -> None:
    job = service.run({"prompt": "x", "steps": 2})
    seed = job["images"][0]["seed"]
    assert job["request"]["seeds"] == [seed]
    again = service.run({"prompt": "x", "steps": 2, "seed": seed})
    assert service.image(job) == service.image(again)


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_other_output_formats(service: Service, output_format: str) -> None:
    job = service.run({"prompt": "x", "steps": 2, "output_format": output_format})
    response = service.client.get(f"/v1/jobs/{job['id']}/images/0")
    assert response.headers["content-type"] == f"image/{output_format}"
    assert open_image(response.content).format == output_format.upper()


def test_every_scheduler_runs(service: Service) -> None:
    jobs = [service.submit({"prompt": "x", "steps": 3, "scheduler": s, "seed": 3})
            for s in NOISE_SCHEDULERS]
    images = {}
    for scheduler, submitted in zip(NOISE_SCHEDULERS, jobs, strict=True):
        job = service.wait(submitted["id"])
        assert job["status"] == "succeeded", (scheduler, job["error"])
        assert job["request"]["scheduler"] == scheduler
        images[scheduler] = service.image(job)
    assert len(set(images.values())) > 1  # schedulers really differ


def test_image_to_image_keeps_the_init_size(service: Service) -> None:
    job = service.run({
        "task": "image-to-image", "prompt": "a green field", "steps": 4, "strength": 0.5,
        "init_image": png_b64((96, 64), (0, 200, 0)), "seed": 5,
    })
    assert open_image(service.image(job)).size == (96, 64)
    assert job["request"]["width"] == 96 and job["request"]["height"] == 64


def test_inpaint_repaints_only_inside_the_mask_size(service: Service) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    job = service.run({
        "task": "inpaint", "prompt": "a hole", "steps": 4,
        "init_image": png_b64((64, 64), (200, 0, 0)),
        "mask_image": base64.b64encode(buffer.getvalue()).decode(),
    })
    assert open_image(service.image(job)).size == (64, 64)


def test_outpaint_grows_the_canvas_by_the_margins(service: Service) -> None:
    job = service.run({
        "task": "outpaint", "prompt": "more sky", "steps": 4,
        "init_image": png_b64((64, 64), (0, 0, 200)),
        "outpaint": {"left": 16, "right": 8, "top": 0, "bottom": 32},
    })
    assert open_image(service.image(job)).size == (64 + 16 + 8, 64 + 32)


def test_models_health_and_docs(service: Service) -> None:
    models = service.client.get("/v1/models").json()
    names = [m["name"] for m in models]
    assert "tiny-random" in names
    assert service.client.get("/healthz").status_code == 200
    assert service.client.get("/readyz").status_code == 200
    assert service.client.get("/docs").status_code == 200
    assert "/v1/jobs" in service.client.get("/openapi.json").json()["paths"]
