"""The ``make run`` launcher (scripts/run.py): supervision, shutdown, the webhook secret,
and one real start of the whole service."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# The launcher lives in scripts/, which is not a package: import it the way it runs.
sys.path.insert(0, str(REPO / "scripts"))
import process_supervisor
import run as launcher


def live_processes_with(token: str) -> list[int]:
    """Pids of living (non-zombie) processes whose environment carries ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    """A marker in the environment every child inherits, to find leftovers by."""
    value = uuid.uuid4().hex
    monkeypatch.setenv("LAUNCHER_TEST_TOKEN", value)
    return value


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "


def test_stop_reaches_grandchildren_in_the_process_group(token):
    supervisor = process_supervisor.Supervisor()
    supervisor.start("shell", ["sh", "-c", "sleep 300 & sleep 300 & wait"])
    time.sleep(0.3)
    assert len(live_processes_with(token)) == 3

    supervisor.stop(timeout=5)

    assert live_processes_with(token) == []


def test_a_child_that_ignores_sigterm_is_killed_within_the_timeout(token):
    supervisor = process_supervisor.Supervisor()
    child = supervisor.start("stubborn", python(IGNORE_TERM + "time.sleep(300)"))
    time.sleep(0.5)

    started = time.monotonic()
    supervisor.stop(timeout=2)

    assert time.monotonic() - started < 5
    assert child.process.returncode == -signal.SIGKILL
    assert live_processes_with(token) == []


def test_the_escalation_signal_comes_before_sigkill():
    supervisor = process_supervisor.Supervisor()
    child = supervisor.start(
        "celery-like",
        python(IGNORE_TERM + "import sys; signal.signal(signal.SIGQUIT, lambda *_: sys.exit(3)); "
               "time.sleep(300)"),
        escalation_signal=signal.SIGQUIT,
    )
    time.sleep(0.5)

    supervisor.stop(timeout=4)

    assert child.process.returncode == 3


def test_infrastructure_stops_after_its_clients(tmp_path):
    client_done = tmp_path / "client-done"
    verdict = tmp_path / "verdict"
    supervisor = process_supervisor.Supervisor()
    supervisor.start("redis-like", python(
        "import pathlib, signal, sys, time\n"
        "def stop(*_):\n"
        f"    seen = pathlib.Path({str(client_done)!r}).exists()\n"
        f"    pathlib.Path({str(verdict)!r}).write_text('after' if seen else 'before')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "time.sleep(300)\n"
    ), infrastructure=True)
    supervisor.start("client", python(
        "import pathlib, signal, sys, time\n"
        "def stop(*_):\n"
        "    time.sleep(0.5)\n"
        f"    pathlib.Path({str(client_done)!r}).touch()\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "time.sleep(300)\n"
    ))
    time.sleep(0.5)

    supervisor.stop(timeout=10)

    assert verdict.read_text() == "after"


def test_first_exited_names_the_child_that_died():
    supervisor = process_supervisor.Supervisor()
    supervisor.start("sleeper", ["sleep", "300"])
    dying = supervisor.start("dying", ["sh", "-c", "exit 7"])
    dying.process.wait(timeout=5)
    try:
        assert supervisor.first_exited() is dying
    finally:
        supervisor.stop(timeout=5)


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


def test_a_busy_port_is_refused_before_anything_starts(tmp_path, token):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "scripts/run.py"], cwd=REPO, capture_output=True, text=True,
            check=False, timeout=60,
            env={**os.environ, "LATENTD_PORT": str(port), "LATENTD_DATA_DIR": str(tmp_path)},
        )
    assert result.returncode == 1
    assert "already in use" in result.stderr
    assert live_processes_with(token) == []


@pytest.mark.timeout(420)
def test_make_run_serves_readyz_then_stops_everything_on_sigterm(tmp_path, token):
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
        assert_default_model_draws_a_red_heart(port)

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output.append(process.communicate(timeout=40)[0])
        assert process.returncode == 0, "".join(output)
        assert time.monotonic() - started < 31
        assert live_processes_with(token) == []
    finally:
        if process.poll() is None:
            process.kill()


def assert_default_model_draws_a_red_heart(port: int) -> None:
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
