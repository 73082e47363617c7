"""Every model family through the real service: a tiny random-weight folder of each
(tests/model_folders.py) served by one generation worker, every task over HTTP, and what
the job record and the PNG say checked against what ran: the asked size, the sampler
(different samplers give different images; another family's is a 422), the guidance by
its name, Flux's true CFG, and the SDXL base → refiner handoff."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from scripts.service_processes import running_service
from tests import model_folders as mf
from tests.integration.conftest import Service

SERVED = (mf.SD15, mf.SD2_V, mf.SDXL, mf.SDXL_REFINER, mf.SD3, mf.FLUX_DEV, mf.FLUX_SCHNELL)
FAMILY = {mf.SD15: "sd1", mf.SD2_V: "sd2", mf.SDXL: "sdxl", mf.SDXL_REFINER: "sdxl-refiner",
          mf.SD3: "sd3", mf.FLUX_DEV: "flux", mf.FLUX_SCHNELL: "flux"}
GENERATORS = (mf.SD15, mf.SD2_V, mf.SDXL, mf.SD3, mf.FLUX_DEV, mf.FLUX_SCHNELL)
REPO = Path(__file__).resolve().parents[2]
GUIDANCE_LABEL = {"classifier-free": "CFG scale", "distilled": "Distilled CFG Scale"}


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory,
             family_folders: dict[str, Path]) -> Iterator[Service]:
    env = {
        "LATENTD_MODELS": json.dumps({name: str(family_folders[name]) for name in SERVED}),
        # One worker serves them all, so the refiner is co-served with its base.
        "LATENTD_WORKER_MODELS": ",".join(("tiny-random", *SERVED)),
    }
    with running_service(tmp_path_factory.mktemp("families"), env) as processes:
        client = httpx.Client(base_url=processes.url, timeout=30)
        try:
            yield Service(processes.url, processes.redis_url, processes.data_dir,
                          processes.webhook_secret, client)
        finally:
            client.close()


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


INIT = png_b64(Image.new("RGB", (100, 70), (20, 140, 60)))
MASK = Image.new("L", (100, 70), 0)
MASK.paste(255, (0, 0, 50, 70))
TASKS = {
    "text-to-image": {"width": 96, "height": 64},
    "image-to-image": {"task": "image-to-image", "init_image": INIT, "width": 96, "height": 64,
                       "strength": 1.0},
    "inpaint": {"task": "inpaint", "init_image": INIT, "mask_image": png_b64(MASK),
                "width": 96, "height": 64, "strength": 1.0},
    "outpaint": {"task": "outpaint", "init_image": INIT, "width": 64, "height": 48,
                 "outpaint": {"left": 16, "right": 16, "top": 8, "bottom": 8}},
}


def parameters(png: bytes) -> tuple[Image.Image, dict[str, str]]:
    image = Image.open(io.BytesIO(png))
    last = image.info["parameters"].split("\n")[-1]
    return image, dict(re.findall(r"([A-Za-z ]+): ([^,]+)(?:, |$)", last))


def refused(service: Service, body: dict) -> dict:
    response = service.client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    return response.json()["error"]


def test_models_show_each_familys_spec(families: Service) -> None:
    models = {m["name"]: m for m in families.client.get("/v1/models").json()}
    for name in SERVED:
        assert models[name]["family"] == FAMILY[name] and models[name]["available"]
    assert models[mf.SDXL_REFINER]["tasks"] == ["image-to-image"]
    assert models[mf.SDXL_REFINER]["aesthetic_score"] == 6.0
    assert (models[mf.SD3]["size_multiple"], models[mf.FLUX_DEV]["size_multiple"]) == (16, 16)
    assert models[mf.SD15]["size_multiple"] == 8
    assert models[mf.FLUX_DEV]["schedulers"] == ["flow_match_euler", "flow_match_dpmpp_2m"]
    assert (models[mf.FLUX_DEV]["guidance"], models[mf.FLUX_SCHNELL]["guidance"]) == (
        "distilled", "none")
    assert models[mf.FLUX_SCHNELL]["default_steps"] == 4
    # Native size: sample size x VAE factor of the folder (64 here), Flux's own 1024.
    assert models[mf.SDXL]["default_width"] == 64 and models[mf.FLUX_DEV]["default_width"] == 1024


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("model", GENERATORS)
def test_every_family_runs_every_task_at_the_asked_size(families: Service, model: str,
                                                        task: str) -> None:
    job = families.run({"model": model, "prompt": "a fox", "steps": 2, "seed": 5, **TASKS[task]})
    plan = job["request"]
    expected = (96, 64)
    assert (plan["width"], plan["height"]) == expected
    image, fields = parameters(families.image(job))
    assert image.size == expected == (job["images"][0]["width"], job["images"][0]["height"])
    assert fields["Size"] == "96x64" and fields["Model"] == model
    label = GUIDANCE_LABEL.get(plan["guidance"])
    if label is None:  # no guidance: nothing claims a scale
        assert "CFG scale" not in fields and "Distilled CFG Scale" not in fields
    else:
        assert float(fields[label]) == plan["guidance_scale"]
    assert ("CFG scale" in fields) == (plan["guidance"] == "classifier-free")


def test_the_refiner_refines_an_image(families: Service) -> None:
    job = families.run({"model": mf.SDXL_REFINER, "prompt": "a fox", "steps": 2,
                        **TASKS["image-to-image"]})
    _, fields = parameters(families.image(job))
    assert (float(fields["Aesthetic score"]), float(fields["Negative aesthetic score"])) == (
        6.0, 2.5)
    assert refused(families, {"model": mf.SDXL_REFINER, "prompt": "a fox"})["field"] == "task"


@pytest.mark.parametrize(("model", "schedulers", "foreign"), [
    (mf.SD15, ("ddim", "euler"), "flow_match_euler"),
    (mf.SD3, ("flow_match_euler", "flow_match_heun"), "ddim"),
    (mf.FLUX_DEV, ("flow_match_euler", "flow_match_dpmpp_2m"), "dpmpp_2m"),
])
def test_schedulers_change_the_image_where_the_family_runs_them(
    families: Service, model: str, schedulers: tuple[str, str], foreign: str
) -> None:
    body = {"model": model, "prompt": "a fox", "steps": 3, "seed": 9, "width": 64, "height": 64}
    images = []
    for scheduler in schedulers:
        job = families.run({**body, "scheduler": scheduler})
        _, fields = parameters(families.image(job))
        assert job["request"]["scheduler"] == scheduler
        images.append(families.image(job))
        assert fields["Sampler"] != ""
    assert images[0] != images[1]
    error = refused(families, {**body, "scheduler": foreign})
    assert (error["field"], error["code"]) == ("scheduler", "unsupported_scheduler")


def test_flux_negative_prompt_counts_with_true_cfg_only(families: Service) -> None:
    body = {"model": mf.FLUX_DEV, "prompt": "a fox", "steps": 2, "seed": 4, "width": 64,
            "height": 64}
    plain = families.image(families.run(body))
    dropped = families.run({**body, "negative_prompt": "blurry"})
    assert [w["field"] for w in dropped["warnings"]] == ["negative_prompt"]
    assert dropped["request"]["negative_prompt"] is None
    assert families.image(dropped) == plain
    true_cfg = families.run({**body, "negative_prompt": "blurry", "true_cfg_scale": 4.0})
    assert true_cfg["request"]["true_cfg_scale"] == 4.0
    png = families.image(true_cfg)
    assert png != plain
    image, fields = parameters(png)
    assert "Negative prompt: blurry" in image.info["parameters"]
    assert float(fields["CFG scale"]) == 4.0 and float(fields["Distilled CFG Scale"]) == 3.5


@pytest.mark.parametrize(("body", "field"), [
    ({"model": mf.FLUX_DEV, "width": 72}, "width"),  # a multiple of 8, not of 16
    ({"model": mf.SD3, "height": 72}, "height"),
    ({"model": mf.FLUX_SCHNELL, "guidance_scale": 3.5}, "guidance_scale"),
    ({"model": mf.FLUX_DEV, "guidance_scale": 20}, "guidance_scale"),
    ({"model": mf.SDXL, "true_cfg_scale": 3}, "true_cfg_scale"),
    ({"model": mf.SD3, "refiner": {"model": mf.SDXL_REFINER}}, "refiner"),
    ({"model": mf.SDXL, "refiner": {"model": mf.SD15}}, "refiner.model"),
])
def test_what_a_family_cannot_run_is_refused_naming_the_field(
    families: Service, body: dict, field: str
) -> None:
    assert refused(families, {"prompt": "a fox", **body})["field"] == field


def test_sdxl_base_hands_over_to_the_refiner_with_one_progress(families: Service) -> None:
    body = {"model": mf.SDXL, "prompt": "a fox", "steps": 5, "seed": 2, "width": 64,
            "height": 64, "scheduler": "euler"}
    job = families.run({**body, "refiner": {"model": mf.SDXL_REFINER, "switch_at": 0.6}})
    assert job["request"]["refiner"]["model"] == mf.SDXL_REFINER
    # 3 base steps, then the refiner's 2: the last reported step is the refiner's.
    assert (job["progress"]["step"], job["progress"]["total_steps"]) == (5, 5)
    _, fields = parameters(families.image(job))
    assert fields["Refiner"] == mf.SDXL_REFINER and float(fields["Refiner switch at"]) == 0.6
    assert families.image(job) != families.image(families.run(body))


def latentd(service: Service, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """This checkout's command line (an installed ``latentd`` script may be another's)."""
    env = {**os.environ, "LATENTD_URL": service.url, "PYTHONPATH": str(REPO)}
    env.pop("LATENTD_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_command_line_runs_flux_true_cfg_and_the_refiner(families: Service,
                                                            tmp_path: Path) -> None:
    result = latentd(families, "generate", "a fox", "--model", mf.FLUX_DEV, "--size", "64x64",
                     "--steps", "2", "--negative", "blurry", "--true-cfg", "3", "-o", "f.png",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    parameters = Image.open(tmp_path / "f.png").info["parameters"]
    assert "Negative prompt: blurry" in parameters and "CFG scale: 3.0" in parameters
    result = latentd(families, "generate", "a fox", "--model", mf.SDXL, "--size", "64x64",
                     "--steps", "4", "--refiner", mf.SDXL_REFINER, "--switch-at", "0.5",
                     "-o", "r.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Refiner: {mf.SDXL_REFINER}" in Image.open(tmp_path / "r.png").info["parameters"]
