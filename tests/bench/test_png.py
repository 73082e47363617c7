"""The PNG benchmark runs and prints one row per zlib level, each beside level 6's.

Timings are never asserted: only that every row is there with its numbers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.png import LEVELS
from worker.images import PNG_COMPRESS_LEVEL

REPO = Path(__file__).resolve().parents[2]


def test_png_benchmark_prints_each_level_against_the_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.png", "--size", "64", "--repeats", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"the worker writes level {PNG_COMPRESS_LEVEL}" in result.stdout
    rows = {int(match.group(1)): match for match in re.finditer(
        r"^ +(\d) +[\d.]+ ms +([\d.]+)x +\d+ KiB +([\d.]+)x$", result.stdout, re.MULTILINE)}
    assert sorted(rows) == sorted(LEVELS), result.stdout
    # Level 6 is the reference of both ratios.
    assert rows[6].group(2) == "1.00" and rows[6].group(3) == "1.00"
