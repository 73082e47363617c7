"""The PNG benchmark runs and prints one row per zlib level, each beside level 6's.

Timings are never asserted: only that every row is there with its numbers.
"""

from __future__ import annotations

import re

from bench.png import LEVELS
from tests.bench.commands import run_benchmark
from worker.images import PNG_COMPRESS_LEVEL


def test_png_benchmark_prints_each_level_against_the_default() -> None:
    result = run_benchmark("bench.png", "--size", "64", "--repeats", "1", timeout=120)
    assert f"the worker writes level {PNG_COMPRESS_LEVEL}" in result.stdout
    rows = {int(match.group(1)): match for match in re.finditer(
        r"^ +(\d) +[\d.]+ ms +([\d.]+)x +\d+ KiB +([\d.]+)x$", result.stdout, re.MULTILINE)}
    assert sorted(rows) == sorted(LEVELS), result.stdout
    # Level 6 is the reference of both ratios.
    assert rows[6].group(2) == "1.00" and rows[6].group(3) == "1.00"
