"""The bare Celery round trip runs as its own command (with its own redis-server) and
prints its figures; never asserted beyond being numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_celery_floor_prints_its_round_trip() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.celery_floor", "--samples", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^bare Celery round trip \(3 tasks, prefork pool of 1\): median "
                     r"\d+\.\d\d ms, p90 \d+\.\d\d ms$", result.stdout, re.MULTILINE), result.stdout
