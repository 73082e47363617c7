"""Upscale end to end through the real service: a text-to-image job on the emoji model,
then an upscale job of its image named as ``job:<id>/<index>``, on real workers (the
emoji model and diffusers upscalers saved to a folder), with two API keys."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from scripts.service_processes import running_service
from tests.integration.test_cli import COMMAND as CLI_COMMAND
from tests.upscalers import save_tiny_upscalers

ALICE = {"Authorization": "Bearer ltd_alice_0123456789abcdef"}
BOB = {"Authorization": "Bearer ltd_bob_0123456789abcdef00"}
# The x4 upscaler with a 16-pixel tile, so a 32-pixel emoji is upscaled in 9 tiles, and
# the embedded upscaler with a 32-pixel tile, so a 64-pixel emoji is too.
TILED_X4 = "tiny-x4-tiled"
TILED_EMOJI = "emoji-upscaler-tiled"
UPSCALE_MODELS = ["emoji-upscaler", TILED_EMOJI, TILED_X4]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    workdir = tmp_path_factory.mktemp("upscale-service")
    folders = save_tiny_upscalers(workdir / "models")
    keys = workdir / "keys.txt"
    keys.write_text("".join(f"{name} {h['Authorization'].removeprefix('Bearer ')}\n"
                            for name, h in (("alice", ALICE), ("bob", BOB))))
    env = {
        "LATENTD_DEFAULT_MODEL": "emoji",
        "LATENTD_MODELS": json.dumps({
            TILED_X4: {"source": str(folders["x4"]), "tile_size": 16, "tile_overlap": 8},
            TILED_EMOJI: {"source": "builtin:emoji-upscaler", "tile_size": 32,
                          "tile_overlap": 8},
        }),
        "LATENTD_WORKER_MODELS": ",".join(["emoji", *UPSCALE_MODELS]),
        "LATENTD_API_KEYS_FILE": str(keys),
    }
    with (running_service(workdir, env, node_tag="upscale") as processes,
          httpx.Client(base_url=processes.url, timeout=30, headers=ALICE) as client):
        yield client


def run(client: httpx.Client, body: dict, timeout: float = 120) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            assert job["status"] == "succeeded", job
            return job
        assert time.monotonic() < deadline, f"{job_id} still {job['status']}"
        time.sleep(0.1)


def png(client: httpx.Client, job: dict, index: int = 0) -> Image.Image:
    response = client.get(f"/v1/jobs/{job['id']}/images/{index}")
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.mark.parametrize(("model", "tile", "tiles"), [
    ("emoji-upscaler", None, 1), (TILED_EMOJI, {"size": 32, "overlap": 8}, 9)])
def test_the_emoji_upscaler_makes_a_128_pixel_png_of_an_emoji_job(
    service: httpx.Client, model: str, tile: dict | None, tiles: int
) -> None:
    emoji = run(service, {"prompt": "red heart", "seed": 11})
    assert emoji["images"][0]["width"] == 64
    job = run(service, {"task": "upscale", "model": model,
                        "init_image": f"job:{emoji['id']}/0", "seed": 4})
    plan = job["request"]
    assert (plan["scale"], plan["width"], plan["height"], plan["tile"]) == (2, 128, 128, tile)
    assert job["progress"]["total_steps"] == tiles * plan["steps"]
    assert job["images"][0]["width"] == job["images"][0]["height"] == 128
    image = png(service, job)
    assert image.format == "PNG" and image.size == (128, 128)
    parameters = image.info["parameters"]
    assert f"Model: {model}" in parameters and "Upscale: 2x" in parameters
    assert ("Tiles: none" if tile is None else "Tiles: 32px overlap 8px") in parameters
    # Still the red heart: the upscale is the emoji, larger.
    small = png(service, emoji).convert("RGB").resize((128, 128), Image.Resampling.BICUBIC)
    difference = np.abs(np.asarray(image.convert("RGB"), dtype=np.int16)
                        - np.asarray(small, dtype=np.int16)).mean()
    assert difference < 20, difference


def test_an_emoji_is_upscaled_from_its_job_with_the_tiling_in_its_parameters(
    service: httpx.Client,
) -> None:
    emoji = run(service, {"prompt": "red heart", "width": 32, "height": 32, "seed": 3})
    job = run(service, {"task": "upscale", "model": TILED_X4, "prompt": "red heart",
                        "init_image": f"job:{emoji['id']}/0", "steps": 2, "seed": 5,
                        "metadata": {"from": emoji["id"]}})
    plan = job["request"]
    assert (plan["scale"], plan["width"], plan["height"]) == (4, 128, 128)
    assert plan["tile"] == {"size": 16, "overlap": 8}
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 9 * 2
    assert job["metadata"] == {"from": emoji["id"]}
    image = png(service, job)
    assert image.format == "PNG" and image.size == (128, 128)
    parameters = image.info["parameters"]
    assert f"Model: {TILED_X4}" in parameters and "Size: 128x128" in parameters
    assert "Upscale: 4x, Noise level: 20, Tiles: 16px overlap 8px" in parameters
    assert "Seed: 5" in parameters
    # The same job again gives the same bytes: every tile's noise follows the seed.
    again = run(service, {"task": "upscale", "model": TILED_X4, "prompt": "red heart",
                          "init_image": f"job:{emoji['id']}/0", "steps": 2, "seed": 5})
    assert service.get(f"/v1/jobs/{again['id']}/images/0").content == service.get(
        f"/v1/jobs/{job['id']}/images/0").content


def test_another_keys_job_cannot_be_upscaled(service: httpx.Client) -> None:
    emoji = run(service, {"prompt": "blue star", "steps": 2})
    body = {"task": "upscale", "model": TILED_X4, "init_image": f"job:{emoji['id']}/0"}
    response = service.post("/v1/jobs", json=body, headers=BOB)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["field"] == "init_image"
    assert response.json()["error"]["code"] == service.get(
        f"/v1/jobs/{emoji['id']}/images/0", headers=BOB).json()["error"]["code"]
    # Bob's own jobs are his to upscale.
    bobs = service.post("/v1/jobs", json={"prompt": "blue star", "steps": 2, "width": 32,
                                          "height": 32}, headers=BOB).json()["id"]
    deadline = time.monotonic() + 60
    while service.get(f"/v1/jobs/{bobs}", headers=BOB).json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ok = service.post("/v1/jobs", json={**body, "init_image": f"job:{bobs}/0", "steps": 1},
                      headers=BOB)
    assert ok.status_code == 202, ok.text


def test_models_list_shows_what_upscale_models_serve(service: httpx.Client) -> None:
    models = {m["name"]: m for m in service.get("/v1/models").json()}
    tiled = models[TILED_X4]
    assert tiled["tasks"] == ["upscale"] and tiled["scales"] == [4]
    assert (tiled["tile_size"], tiled["tile_overlap"]) == (16, 8)
    assert (tiled["default_noise_level"], tiled["max_noise_level"]) == (20, 350)
    assert "upscale" not in models["emoji"]["tasks"] and models["emoji"]["scales"] == []


def test_an_upscale_job_is_canceled_between_tiles_or_within_one(
    service: httpx.Client,
) -> None:
    emoji = run(service, {"prompt": "green tree", "width": 32, "height": 32, "steps": 2})
    response = service.post("/v1/jobs", json={
        "task": "upscale", "model": TILED_X4, "init_image": f"job:{emoji['id']}/0",
        "steps": 150, "num_images": 8})
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while service.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    service.post(f"/v1/jobs/{job_id}/cancel")
    deadline = time.monotonic() + 30
    while (job := service.get(f"/v1/jobs/{job_id}").json())["status"] == "running":
        assert time.monotonic() < deadline, "the upscale did not stop"
        time.sleep(0.05)
    assert job["status"] == "canceled" and job["images"] == []
    assert job["progress"]["step"] < job["progress"]["total_steps"]




def latentd_command(service: httpx.Client, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed ``latentd`` command against this module's service, as alice."""
    env = {**os.environ, "LATENTD_URL": str(service.base_url),
           "LATENTD_API_KEY": ALICE["Authorization"].removeprefix("Bearer ")}
    return subprocess.run([*CLI_COMMAND, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_command_line_upscales_a_file_and_a_job_image(
    service: httpx.Client, tmp_path: Path
) -> None:
    emoji = run(service, {"prompt": "red heart", "seed": 11})
    small = tmp_path / "heart.png"
    small.write_bytes(service.get(f"/v1/jobs/{emoji['id']}/images/0").content)

    # No --model: the first model the service lists that upscales (emoji-upscaler).
    from_file = latentd_command(service, "upscale", str(small), "-o", "big.png", "-q",
                                cwd=tmp_path)
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.strip() == "big.png"
    with Image.open(tmp_path / "big.png") as image:
        assert image.size == (128, 128) and "Model: emoji-upscaler" in image.info["parameters"]

    from_job = latentd_command(service, "upscale", f"job:{emoji['id']}/0", "--model",
                               TILED_EMOJI, "--format", "webp", cwd=tmp_path)
    assert from_job.returncode == 0, from_job.stderr
    [written] = from_job.stdout.split()
    assert written.endswith(".webp") and "submitted job_" in from_job.stderr
    with Image.open(tmp_path / written) as image:
        assert image.format == "WEBP" and image.size == (128, 128)

    missing = latentd_command(service, "upscale", "nope.png", cwd=tmp_path)
    assert missing.returncode == 2 and "is not a file" in missing.stderr
    not_an_upscaler = latentd_command(service, "upscale", str(small), "--model", "emoji",
                                      cwd=tmp_path)
    assert not_an_upscaler.returncode == 1 and "upscale" in not_an_upscaler.stderr
