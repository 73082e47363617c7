"""The adapters benchmark runs at minimal sizes and prints every ratio (never asserted)."""

from __future__ import annotations

import re

from tests.bench.commands import run_benchmark

NUMBER = r"\d+(?:\.\d+)?"


def test_adapters_benchmark_prints_its_ratios() -> None:
    result = run_benchmark("bench.adapters", "--rounds", "1", "--steps", "1", timeout=240)
    for mode in ("plain, no LoRA loaded yet", "plain", "LoRA", "ControlNet",
                 "LoRA \\+ ControlNet"):
        assert re.search(rf"^  {mode} +median {NUMBER} s +ratio to plain {NUMBER}x$",
                         result.stdout, re.MULTILINE), (mode, result.stdout)
    for mode in ("first LoRA job", "ControlNet load at start", "first ControlNet job"):
        assert re.search(rf"^  {mode} +once +{NUMBER} s +ratio to plain {NUMBER}x",
                         result.stdout, re.MULTILINE), (mode, result.stdout)
