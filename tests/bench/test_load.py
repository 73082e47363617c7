"""The load benchmark runs end to end at a minimal size and prints its figures.

Figures are never asserted: only that each line is there, and that every job it
submitted was accepted and ended (a load run that loses jobs is a bug, not a figure).
"""

from __future__ import annotations

import re

from tests.bench.commands import run_benchmark


def test_load_benchmark_prints_its_figures() -> None:
    result = run_benchmark("bench.load", "--clients", "4", "--jobs-per-client", "2", timeout=240)
    out = result.stdout
    assert re.search(r"^  accepted +8 of 8 in [\d.]+ s", out, re.MULTILINE), out
    assert re.search(r"^  errors +0 +transport errors 0$", out, re.MULTILINE), out
    assert re.search(r"^  API latency +p50 \d+ ms +p99 \d+ ms", out, re.MULTILINE), out
    assert re.search(r"^  terminal +8 of 8 ", out, re.MULTILINE), out
