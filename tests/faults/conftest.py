"""Fault-suite fixtures: the shared service under fault, one ledger per test, and the run's
report (each test's figures and outcome, written as JSON at the end of the session to
``$LATENTD_FAULTS_REPORT`` or ``<pytest's temp dir>/faults-report.json``; rendered into
docs/RELIABILITY.md by ``python -m tests.faults.report``).
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import subprocess
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import FAULT_ENV, FaultService, fault_service
from tests.faults.ledger import Ledger
from tests.faults.report import REPORT_ENV, FaultRecord


@dataclass
class FaultReport:
    started: float = field(default_factory=time.time)
    path: Path | None = None
    records: list[FaultRecord] = field(default_factory=list)

    def write(self) -> Path | None:
        if not self.records or self.path is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "duration_seconds": round(time.time() - self.started, 1),
            "machine": machine(),
            "settings": FAULT_ENV,
            "faults": [asdict(record) for record in self.records],
        }
        self.path.write_text(json.dumps(document, indent=2) + "\n")
        return self.path


REPORT = pytest.StashKey[FaultReport]()
RECORD = pytest.StashKey[FaultRecord]()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    memory_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                      .splitlines() if line.startswith("MemTotal")), 0)
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True, timeout=10, check=True).stdout.split()
    return {
        "cpu_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(memory_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis": next((word.removeprefix("v=") for word in redis_version
                       if word.startswith("v=")), "unknown"),
    }


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault(number, title): the fault a tests/faults test injects (its report)")
    config.stash[REPORT] = FaultReport()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    record = item.stash.get(RECORD, None)
    if record is not None and (report.when == "call" or report.failed):
        if report.failed:
            record.outcome = "failed"
            crash = getattr(report.longrepr, "reprcrash", None)
            record.failure = (crash.message if crash is not None else str(report.longrepr))[:2000]
        elif report.when == "call":
            record.outcome = "passed"
            record.duration_seconds = round(report.duration, 1)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[REPORT].write()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    report = config.stash[REPORT]
    if report.records and report.path is not None:
        terminalreporter.write_line(f"fault report: {report.path}")


@pytest.fixture(scope="session", autouse=True)
def _report_path(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> None:
    given = os.environ.get(REPORT_ENV)
    request.config.stash[REPORT].path = (
        Path(given) if given else tmp_path_factory.getbasetemp() / "faults-report.json")


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> FaultRecord:
    """The record of the fault this test injects (from its ``fault`` marker and docstring)."""
    marker = request.node.get_closest_marker("fault")
    assert marker is not None, "a tests/faults test names its fault: @pytest.mark.fault(n, title)"
    number, title = marker.args
    record = FaultRecord(str(number), title, request.node.nodeid,
                         inspect.cleandoc(request.function.__doc__ or ""))
    request.node.stash[RECORD] = record
    request.config.stash[REPORT].records.append(record)
    return record


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultService]:
    """The service the worker faults and the slow receivers share (local receivers allowed)."""
    with fault_service(tmp_path_factory.mktemp("fault-service"), "faults") as running:
        yield running


@pytest.fixture(scope="session")
def strict_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultService]:
    """The service that refuses private webhook targets, on a scripted network: the Redis
    restart and DNS rebinding share it."""
    with fault_service(tmp_path_factory.mktemp("strict-service"), "strict",
                       strict=True) as running:
        yield running


@pytest.fixture
def ledger(service: FaultService, fault: FaultRecord) -> Iterator[Ledger]:
    book = Ledger(service, fault)
    try:
        yield book
    finally:
        book.close()
