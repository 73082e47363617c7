"""Running a benchmark as its command, as a user does, from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -m <module> <args>``, once it has exited 0 (else the test fails with the
    end of its stderr); its output is text."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
