"""LoRA and ControlNet end to end: a real service (redis-server, a Celery generation
worker, the API over HTTP) started with a LoRA directory and ControlNet folders holding
tiny real weights (a PEFT LoRA, a saved ControlNetModel, a tiny SDXL as a second family).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from scripts.service_processes import ServiceProcesses, running_service
from tests.adapter_weights import build_tiny_sdxl_pipeline, save_tiny_controlnet, save_tiny_lora
from tests.integration.conftest import Service

REPO = Path(__file__).resolve().parents[2]
BODY = {"prompt": "a red fox", "seed": 11, "steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    root = tmp_path_factory.mktemp("adapters-service")
    save_tiny_lora(root / "loras", "ink", seed=1)
    save_tiny_lora(root / "loras", "paper", seed=2)
    xl = build_tiny_sdxl_pipeline()
    xl.save_pretrained(root / "tiny-xl")
    env = {
        "LATENTD_LORA_DIR": str(root / "loras"),
        "LATENTD_MODELS": json.dumps({
            "edges": str(save_tiny_controlnet(root / "edges")),
            "xl-edges": str(save_tiny_controlnet(root / "xl-edges", unet=xl.unet)),
            "tiny-xl": {"source": str(root / "tiny-xl"), "default_width": 64,
                        "default_height": 64, "min_width": 24, "min_height": 24},
        }),
        "LATENTD_WORKER_MODELS": "tiny-random",
    }
    # The gated worker: submit_held's jobs really are held until released.
    with running_service(root, env, generation_app="tests.integration.gated_worker") as started:
        yield started


@pytest.fixture(scope="module")
def service(processes: ServiceProcesses) -> Iterator[Service]:
    with httpx.Client(base_url=processes.url, timeout=30) as client:
        yield Service(processes.url, processes.redis_url, processes.data_dir,
                      processes.webhook_secret, client)


def pixels(service: Service, job: dict, index: int = 0) -> np.ndarray:
    return np.asarray(open_png(service.image(job, index)), dtype=np.int16)


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def stripes_b64() -> str:
    array = np.zeros((32, 32, 3), np.uint8)
    array[:, ::4] = 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def refused(service: Service, body: dict) -> dict:
    response = service.client.post("/v1/jobs", json={**BODY, **body})
    assert response.status_code == 422, response.text
    return response.json()["error"]


def test_models_list_what_fits_each_model(service: Service) -> None:
    models = {m["name"]: m for m in service.client.get("/v1/models").json()}
    assert "edges" not in models and "xl-edges" not in models  # control models only
    assert models["tiny-random"]["loras"] == ["ink", "paper"]
    assert models["tiny-random"]["control_models"] == ["edges"]
    assert models["tiny-xl"]["loras"] == [] and models["tiny-xl"]["control_models"] == ["xl-edges"]


def test_lora_scale_zero_is_none_scale_one_differs_and_nothing_leaks(service: Service) -> None:
    plain = pixels(service, service.run(BODY))
    zero = pixels(service, service.run({**BODY, "loras": [{"name": "ink", "scale": 0}]}))
    one_job = service.run({**BODY, "loras": [{"name": "ink", "scale": 1.0}]})
    after = pixels(service, service.run(BODY))
    assert np.array_equal(zero, plain)
    assert np.abs(pixels(service, one_job) - plain).max() > 10
    assert np.array_equal(after, plain)
    assert one_job["request"]["loras"] == [{"name": "ink", "scale": 1.0}]
    parameters = open_png(service.image(one_job)).info["parameters"]
    assert 'LoRA: "ink: 1"' in parameters


def test_two_loras_combine(service: Service) -> None:
    ink = pixels(service, service.run({**BODY, "loras": [{"name": "ink"}]}))
    both = pixels(service, service.run({**BODY, "loras": [{"name": "ink"},
                                                          {"name": "paper", "scale": 0.8}]}))
    assert not np.array_equal(ink, both)


def test_a_canceled_lora_job_leaks_nothing(service: Service) -> None:
    plain = pixels(service, service.run(BODY))
    job_id = service.submit_held({**BODY, "loras": [{"name": "paper", "scale": 2.0}]})
    assert service.client.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
    service.release(job_id)
    assert service.wait(job_id)["status"] == "canceled"
    assert np.array_equal(pixels(service, service.run(BODY)), plain)


def test_controlnet_scale_zero_is_none_and_scale_one_steers(service: Service) -> None:
    plain = pixels(service, service.run(BODY))
    control = {"model": "edges", "image": stripes_b64()}
    zero = pixels(service, service.run({**BODY, "control": [{**control, "scale": 0.0}]}))
    steered_job = service.run({**BODY, "control": [control]})
    late = pixels(service, service.run({**BODY, "control": [{**control, "start": 0.5}]}))
    steered = pixels(service, steered_job)
    assert np.array_equal(zero, plain)
    assert np.abs(steered - plain).max() > 10
    assert not np.array_equal(late, steered)  # start is honoured
    assert steered_job["request"]["control"] == [
        {"model": "edges", "scale": 1.0, "start": 0.0, "end": 1.0}]
    parameters = open_png(service.image(steered_job)).info["parameters"]
    assert 'ControlNet 0: "Model: edges, Weight: 1, Guidance Start: 0, Guidance End: 1"' \
        in parameters


def test_control_image_may_be_an_earlier_jobs_output(service: Service) -> None:
    source = service.run(BODY)
    job = service.run({**BODY, "seed": 12, "control": [
        {"model": "edges", "image": f"job:{source['id']}/0"}]})
    assert job["status"] == "succeeded"
    error = refused(service, {"control": [{"model": "edges",
                                           "image": f"job:{source['id']}/5"}]})
    assert (error["field"], error["code"]) == ("control.0.image", "image_not_found")
    # A job that is not there is answered as the image route and init_image answer it.
    missing = service.client.post("/v1/jobs", json={**BODY, "control": [
        {"model": "edges", "image": "job:job_0123456789abcdef01234567/0"}]})
    assert missing.status_code == 404, missing.text
    assert (missing.json()["error"]["field"], missing.json()["error"]["code"]) == (
        "control.0.image", "job_not_found")


def test_lora_and_control_on_image_to_image(service: Service) -> None:
    body = {**BODY, "task": "image-to-image", "init_image": stripes_b64(), "strength": 0.8}
    plain = pixels(service, service.run(body))
    both = pixels(service, service.run({**body, "loras": [{"name": "ink"}],
                                        "control": [{"model": "edges", "image": stripes_b64()}]}))
    assert not np.array_equal(plain, both)


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"loras": [{"name": "nope"}]}, "loras.0.name", "unknown_lora"),
    ({"loras": [{"name": "ink", "scale": 9}]}, "loras.0.scale", None),
    ({"model": "tiny-xl", "loras": [{"name": "ink"}]}, "loras.0.name", "incompatible_lora"),
    ({"control": [{"model": "nope", "image": "x"}]}, "control.0.model", "unknown_controlnet"),
    ({"model": "tiny-xl", "control": [{"model": "edges", "image": "x"}]}, "control.0.model",
     "incompatible_controlnet"),
    ({"control": [{"model": "edges", "image": "x", "start": 0.6, "end": 0.4}]},
     "control.0.end", "empty_control_range"),
    ({"control": [{"model": "edges", "image": "not base64!"}]}, "control.0.image", None),
])
def test_bad_adapters_are_refused_naming_the_field(service: Service, body, field, code) -> None:
    error = refused(service, body)
    assert error["field"] == field
    if code is not None:
        assert error["code"] == code


def test_the_base_model_and_the_controlnet_were_each_loaded_once(
        service: Service, processes: ServiceProcesses) -> None:
    control = {"model": "edges", "image": stripes_b64()}
    for seed in (1, 2):
        service.run({**BODY, "seed": seed, "control": [control]})
    log = (processes.workdir / "worker.log").read_text()
    assert log.count("loaded model tiny-random") == 1
    assert log.count("loaded ControlNet edges") == 1


def test_the_command_line_adds_loras_and_controlnets(service: Service, tmp_path: Path) -> None:
    def latentd(*args: str) -> subprocess.CompletedProcess:
        # This checkout's command (run from tmp_path, where the images are written).
        env = {**os.environ, "LATENTD_URL": service.url, "PYTHONPATH": str(REPO)}
        env.pop("LATENTD_API_KEY", None)
        return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120,
                              check=False)

    (tmp_path / "edges.png").write_bytes(base64.b64decode(stripes_b64()))
    result = latentd("generate", "a red fox", "-o", "fox.png", "--seed", "5", "--steps", "2",
                     "--size", "64x64", "--lora", "ink:0.5", "--lora", "paper",
                     "--control", "edges", "edges.png")
    assert result.returncode == 0, result.stderr
    parameters = open_png((tmp_path / "fox.png").read_bytes()).info["parameters"]
    assert 'LoRA: "ink: 0.5, paper: 1"' in parameters
    assert 'ControlNet 0: "Model: edges, Weight: 1' in parameters
    refused = latentd("generate", "x", "--lora", "ink:strong")
    assert refused.returncode != 0 and "NAME:SCALE" in refused.stderr


def test_the_python_client_sends_control_images_as_files_or_job_references(
        service: Service, tmp_path: Path) -> None:
    from shared.client import Client

    image = tmp_path / "edges.png"
    image.write_bytes(base64.b64decode(stripes_b64()))
    with Client(service.url) as client:
        first = client.generate("a fox", steps=2, width=64, height=64, seed=3,
                                control=[{"model": "edges", "image": image}])
        again = client.generate("a fox", steps=2, width=64, height=64, seed=3,
                                control=[{"model": "edges", "image": image.read_bytes()}])
        chained = client.generate("a fox", steps=2, width=64, height=64, seed=3,
                                  control=[{"model": "edges", "image": f"job:{first.id}/0"}])
        assert client.image(first.id, 0) == client.image(again.id, 0)
        assert chained.status == "succeeded"
