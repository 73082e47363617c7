"""The adapters benchmark runs at minimal sizes and prints every ratio (never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"


def test_adapters_benchmark_prints_its_ratios() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.adapters", "--rounds", "1", "--steps", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for mode in ("plain, no LoRA loaded yet", "plain", "LoRA", "ControlNet",
                 "LoRA \\+ ControlNet"):
        assert re.search(rf"^  {mode} +median {NUMBER} s +ratio to plain {NUMBER}x$",
                         result.stdout, re.MULTILINE), (mode, result.stdout)
    for mode in ("first LoRA job", "ControlNet load at start", "first ControlNet job"):
        assert re.search(rf"^  {mode} +once +{NUMBER} s +ratio to plain {NUMBER}x",
                         result.stdout, re.MULTILINE), (mode, result.stdout)
