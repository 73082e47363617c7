"""The bare Celery round trip runs as its own command (with its own redis-server) and
prints its figures; never asserted beyond being numbers."""

from __future__ import annotations

import re

from tests.bench.commands import run_benchmark


def test_celery_floor_prints_its_round_trip() -> None:
    result = run_benchmark("bench.celery_floor", "--samples", "3", timeout=180)
    assert re.search(r"^bare Celery round trip \(3 tasks, prefork pool of 1\): median "
                     r"\d+\.\d\d ms, p90 \d+\.\d\d ms$", result.stdout, re.MULTILINE), result.stdout
