"""Schemathesis, every check, against the API over real HTTP: no server error, and no
answer the OpenAPI schema does not promise (statuses, headers, bodies, Allow, links)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from api.main import create_app
from shared.heartbeat import beat
from shared.settings import Settings
from tests.api.conftest import serving

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.timeout(600)
@pytest.mark.no_workers  # beats its own, for the service's models
def test_schemathesis_finds_no_failure(redis_url: str, tmp_path: Path) -> None:
    binary = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data",
                        default_model="tiny-random", max_wait_seconds=1)
    for model in ("tiny-random", "emoji"):
        beat(redis.Redis.from_url(redis_url), model, "test-worker", ttl_seconds=600)
    with serving(create_app(settings)) as base:
        result = subprocess.run(
            [binary, "--config-file", str(CONFIG), "run", f"{base}/openapi.json",
             "--checks", "all", "--max-examples", "25", "--seed", "1", "--workers", "1",
             "--no-color"],
            capture_output=True, text=True, timeout=540, check=False,
        )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
