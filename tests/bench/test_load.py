"""The load benchmark runs end to end at a minimal size and prints its figures.

Figures are never asserted: only that each line is there, and that every job it
submitted was accepted and ended (a load run that loses jobs is a bug, not a figure).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_load_benchmark_prints_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.load", "--clients", "4", "--jobs-per-client", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"^  accepted +8 of 8 in [\d.]+ s", out, re.MULTILINE), out
    assert re.search(r"^  errors +0 +transport errors 0$", out, re.MULTILINE), out
    assert re.search(r"^  API latency +p50 \d+ ms +p99 \d+ ms", out, re.MULTILINE), out
    assert re.search(r"^  terminal +8 of 8 ", out, re.MULTILINE), out
