"""The batching benchmark runs end to end at minimal sizes and prints its ratios.

Timings are never asserted: only that every measured line is there with a number, and
that the jobs submitted at once really shared pipeline calls.
"""

from __future__ import annotations

import re

from tests.bench.commands import run_benchmark

NUMBER = r"\d+(?:\.\d+)?"
EXPECTED_LINES = [
    rf"^  service  4 submitted at once +{NUMBER} s +\(images per pipeline call seen: [\d, ]+\)$",
    rf"^  service  4 one after another +{NUMBER} s$",
    rf"^ratio  batching gain through the service +{NUMBER}x$",
    rf"^ratio  batching gain, direct \(the ceiling\) +{NUMBER}x$",
]


def test_benchmark_prints_the_batching_gain() -> None:
    result = run_benchmark(
        "bench.batching", "--jobs", "4", "--steps", "2", "--rounds", "1", "--max-batch", "4",
        timeout=240)
    for pattern in EXPECTED_LINES:
        assert re.search(pattern, result.stdout, re.MULTILINE), (pattern, result.stdout)
    seen = re.search(r"images per pipeline call seen: ([\d, ]+)\)", result.stdout)
    assert seen is not None and max(int(n) for n in seen.group(1).split(", ")) > 1
