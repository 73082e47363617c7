"""Fixtures for the tests of scripts/: finding processes a test left behind."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The launcher's modules live in scripts/, which run.py puts first on sys.path when it runs
# as a script: import them the way it does (``import run``, ``import process_supervisor``).
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))


def live_processes_with(token: str) -> list[int]:
    """Pids of living (non-zombie) processes whose environment carries ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def leftover_processes(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[int]]:
    """Puts a marker in the environment every child inherits; the returned function lists
    the pids of processes still alive that carry it."""
    token = uuid.uuid4().hex
    monkeypatch.setenv("LAUNCHER_TEST_TOKEN", token)
    return lambda: live_processes_with(token)
