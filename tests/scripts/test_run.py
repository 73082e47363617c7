"""The ``make run`` launcher (scripts/run.py): the webhook secret, refusing to start on a
busy port or a bad configuration, and one real start of the whole service."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import run as launcher  # scripts/ is on sys.path (tests/scripts/conftest.py)
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
# A launcher refusing its configuration does so before it starts anything: well under this.
FAIL_FAST_SECONDS = 10


def run_launcher(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/run.py"], cwd=REPO, capture_output=True, text=True,
        check=False, timeout=timeout, env={**os.environ, **env},
    )


def test_webhook_secret_is_generated_once_then_reused(tmp_path):
    path = tmp_path / "webhook_secret"

    first = launcher.load_or_create_webhook_secret(path)
    second = launcher.load_or_create_webhook_secret(path)

    assert first == second
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_malformed_stored_secret_is_refused(tmp_path):
    path = tmp_path / "webhook_secret"
    path.write_text("hunter2\n")
    with pytest.raises(SystemExit, match="whsec_"):
        launcher.load_or_create_webhook_secret(path)


def test_a_busy_port_is_refused_before_anything_starts(tmp_path, leftover_processes):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_launcher({"LATENTD_PORT": str(port), "LATENTD_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "already in use" in result.stderr
    assert leftover_processes() == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LATENTD_MODELS", "{not json"),  # pydantic-settings fails while decoding it
        ("LATENTD_DEFAULT_MODEL", "nope"),  # valid alone; the model registry refuses it
    ],
)
def test_a_bad_configuration_fails_at_once_naming_the_setting(
    tmp_path, leftover_processes, variable, value
):
    data_dir = tmp_path / "data"
    started = time.monotonic()
    result = run_launcher({
        variable: value, "LATENTD_PORT": str(launcher.free_port()),
        "LATENTD_DATA_DIR": str(data_dir),
    }, timeout=FAIL_FAST_SECONDS * 3)
    elapsed = time.monotonic() - started

    assert result.returncode == 2, result.stderr
    problems = [line for line in result.stderr.splitlines()
                if line.startswith("latentd: invalid configuration: ")]
    assert len(problems) == 1 and variable in problems[0], result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < FAIL_FAST_SECONDS
    # Refused before anything started or was written.
    assert not data_dir.exists()
    assert leftover_processes() == []


@pytest.mark.timeout(420)
def test_make_run_serves_readyz_then_stops_everything_on_sigterm(tmp_path, leftover_processes):
    port = launcher.free_port()
    process = subprocess.Popen(
        [sys.executable, "scripts/run.py", "--ready-timeout", "180"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "LATENTD_PORT": str(port), "LATENTD_DATA_DIR": str(tmp_path)},
    )
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if "latentd is ready" in line:
                break
        assert process.poll() is None, "".join(output)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert response.status == 200
        assert (tmp_path / "webhook_secret").read_text().startswith("whsec_")
        assert (tmp_path / "redis" / "appendonlydir").is_dir()
        heart = assert_default_model_draws_a_red_heart(port)
        assert_default_service_upscales(port, heart)

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output.append(process.communicate(timeout=40)[0])
        assert process.returncode == 0, "".join(output)
        assert time.monotonic() - started < 31
        assert leftover_processes() == []
    finally:
        if process.poll() is None:
            process.kill()


def assert_default_model_draws_a_red_heart(port: int) -> str:
    """With no configuration the service answers with the embedded model, recognisably."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/jobs", data=json.dumps({"prompt": "red heart", "seed": 1}).encode(),
        headers={"content-type": "application/json", "Prefer": "wait=60"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=90) as response:
        job = json.load(response)
    deadline = time.monotonic() + 180  # generous: the CPU may be shared with other work
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        poll = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/jobs/{job['id']}", headers={"Prefer": "wait=30"}
        )
        with urllib.request.urlopen(poll, timeout=60) as response:
            job = json.load(response)
    assert job["status"] == "succeeded", job
    assert job["request"]["model"] == "emoji"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{job['images'][0]['url']}") as response:
        image = Image.open(io.BytesIO(response.read())).convert("RGB")
    assert image.size == (64, 64)
    pixels = image.tobytes()
    drawn = [p for p in zip(pixels[0::3], pixels[1::3], pixels[2::3], strict=True)
             if min(p) < 200]  # ignore the white background
    assert len(drawn) > 64 * 64 // 4
    red, green, blue = (sum(channel) / len(drawn) for channel in zip(*drawn, strict=True))
    assert red > 1.5 * green and red > 1.5 * blue, (red, green, blue)
    return job["id"]


def assert_default_service_upscales(port: int, job_id: str) -> None:
    """The embedded upscaler is served beside the emoji model: the heart, twice as large."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/jobs", method="POST",
        data=json.dumps({"task": "upscale", "model": "emoji-upscaler",
                         "init_image": f"job:{job_id}/0"}).encode(),
        headers={"content-type": "application/json", "Prefer": "wait=60"},
    )
    with urllib.request.urlopen(request, timeout=90) as response:
        job = json.load(response)
    deadline = time.monotonic() + 180
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        poll = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/jobs/{job['id']}", headers={"Prefer": "wait=30"})
        with urllib.request.urlopen(poll, timeout=60) as response:
            job = json.load(response)
    assert job["status"] == "succeeded", job
    assert (job["images"][0]["width"], job["images"][0]["height"]) == (128, 128)
