"""The ``latentd`` command (the installed console script) against the real service."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import free_port
from tests.integration.conftest import Service
from tests.integration.gate import HOLD_METADATA_KEY

SCRIPT = Path(sys.executable).with_name("latentd")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "shared.cli"]
REPO = Path(__file__).resolve().parents[2]


def latentd(service: Service, *args: str, cwd: Path = REPO, url: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs the command with the service's URL in LATENTD_URL (or ``--url`` when given)."""
    env = {**os.environ, "LATENTD_URL": service.url}
    env.pop("LATENTD_API_KEY", None)
    argv = [*COMMAND, *args, *(["--url", url] if url else [])]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def open_png(path: Path) -> Image.Image:
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()
    assert image.format == "PNG"
    return image


def test_generate_writes_each_image_with_its_size_and_parameters(
    service: Service, tmp_path: Path
) -> None:
    result = latentd(service, "generate", "red heart", "-o", "heart.png", "--seed", "7",
                     "--steps", "3", "--guidance", "6", "--size", "64x48", "--negative",
                     "blurry", "-n", "2", "--scheduler", "euler", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["heart.png", "heart-1.png"]
    assert "submitted job_" in result.stderr
    for name, seed in (("heart.png", 7), ("heart-1.png", 8)):
        image = open_png(tmp_path / name)
        assert image.size == (64, 48)
        parameters = image.info["parameters"]
        assert parameters.startswith("red heart\nNegative prompt: blurry\n")
        for part in (f"Seed: {seed}", "Steps: 3", "CFG scale: 6", "Size: 64x48",
                     "Model: tiny-random"):
            assert part in parameters, parameters


def test_width_height_and_an_extension_that_picks_the_format(
    service: Service, tmp_path: Path
) -> None:
    result = latentd(service, "generate", "cat face", "-o", str(tmp_path / "cat.webp"),
                     "--width", "40", "--height", "32", "--steps", "2", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet: no bar, no note
    image = Image.open(tmp_path / "cat.webp")
    assert image.format == "WEBP" and image.size == (40, 32)


def test_image_tasks_upload_their_inputs(service: Service, tmp_path: Path) -> None:
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "heart.png")
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (0, 0, 32, 48))
    mask.save(tmp_path / "mask.png")

    outpaint = latentd(service, "generate", "cat face", "--init-image", "heart.png",
                       "--outpaint-left", "16", "--outpaint-right", "16", "--steps", "2",
                       "-o", "wide.png", cwd=tmp_path)
    assert outpaint.returncode == 0, outpaint.stderr
    wide = open_png(tmp_path / "wide.png")
    assert wide.size == (96, 48)  # the init image plus both margins
    assert "Size: 96x48" in wide.info["parameters"]

    inpaint = latentd(service, "generate", "cat face", "--init-image", "heart.png", "--mask",
                      "mask.png", "--steps", "4", "--strength", "0.5", "-o", "fixed.png",
                      cwd=tmp_path)
    assert inpaint.returncode == 0, inpaint.stderr
    assert open_png(tmp_path / "fixed.png").size == (64, 48)

    img2img = latentd(service, "generate", "cat face", "--task", "image-to-image",
                      "--init-image", "heart.png", "--width", "32", "--steps", "4",
                      "-o", "small.png", cwd=tmp_path)
    assert img2img.returncode == 0, img2img.stderr
    assert open_png(tmp_path / "small.png").size == (32, 24)  # the image's aspect kept


def test_a_bad_argument_exits_non_zero_with_the_apis_message(
    service: Service, tmp_path: Path
) -> None:
    steps = latentd(service, "generate", "x", "--steps", "500", cwd=tmp_path)
    assert steps.returncode == 1
    assert steps.stderr.strip().endswith(
        "latentd: steps: Input should be less than or equal to 150")
    model = latentd(service, "generate", "x", "--model", "nope", cwd=tmp_path)
    assert model.returncode == 1 and "unknown model 'nope'" in model.stderr
    (tmp_path / "notes.png").write_text("not an image")
    upload = latentd(service, "generate", "x", "--init-image", "notes.png", cwd=tmp_path)
    assert upload.returncode == 1
    assert "latentd: init_image is not a PNG, JPEG or WebP image" in upload.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.png"]  # nothing written
    # Options the command itself cannot read never reach the service.
    usage = latentd(service, "generate", "x", "--size", "big", cwd=tmp_path)
    assert usage.returncode == 2 and "WIDTHxHEIGHT" in usage.stderr


def test_jobs_lists_what_was_made_and_models_what_is_served(service: Service) -> None:
    made = latentd(service, "generate", "listed one", "--no-wait")
    assert made.returncode == 0, made.stderr
    job_id = made.stdout.strip()
    assert job_id.startswith("job_")
    service.wait(job_id)

    listed = latentd(service, "jobs", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    row = next(line.split("\t") for line in listed.stdout.splitlines()
               if line.startswith(job_id))
    assert row[1] == "succeeded" and row[3] == "tiny-random" and row[-1] == "listed one"
    only_failed = latentd(service, "jobs", "--status", "failed", "--limit", "100")
    assert job_id not in only_failed.stdout

    models = latentd(service, "models")
    assert models.returncode == 0, models.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in models.stdout.splitlines()}
    assert rows["tiny-random"][1] == "available" and int(rows["tiny-random"][2]) >= 1


def test_cancel_stops_a_running_job(service: Service) -> None:
    job_id = service.submit_held({"prompt": "held", "steps": 10})
    result = latentd(service, "cancel", job_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{job_id}\trunning"  # stops within a step
    service.release(job_id)
    assert service.wait(job_id)["status"] == "canceled"
    missing = latentd(service, "cancel", "job_" + "0" * 24)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_ctrl_c_while_generating_cancels_the_job(service: Service, tmp_path: Path) -> None:
    # PYTHONFAULTHANDLER: a CLI that hangs is made to print every thread's stack (SIGABRT)
    # into the failure, instead of being killed without a trace.
    env = {**os.environ, "LATENTD_URL": service.url, "PYTHONFAULTHANDLER": "1"}
    # As from a terminal: a suite started in the background (`make test &`) runs with
    # SIGINT ignored, a child inherits that, and Python then never raises
    # KeyboardInterrupt. A handled signal is reset to its default in the child instead.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [*COMMAND, "generate", "interrupt me", "--steps", "10", "--metadata",
             f'{{"{HOLD_METADATA_KEY}": true}}'],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        deadline = time.monotonic() + 60
        while True:
            running = service.client.get("/v1/jobs", params={"status": "running"}).json()
            held = [j for j in running["jobs"] if j["request"]["prompt"] == "interrupt me"
                    and j["progress"]["step"] >= 1]
            if held:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, stderr = proc.communicate(timeout=10)
            pytest.fail(f"the CLI was still running 30 s after SIGINT; its stacks:\n{stderr}")
    finally:
        if proc.poll() is None:
            proc.kill()
    job_id = held[0]["id"]
    assert proc.returncode == 130, stderr
    assert f"latentd: canceled {job_id}" in stderr
    service.release(job_id)
    assert service.wait(job_id)["status"] == "canceled"
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_service_is_a_clear_failure(service: Service) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = latentd(service, "models", url=url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"latentd: no answer from {url}")
