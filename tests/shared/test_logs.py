"""Log lines: one JSON object a line with the job id of the line's job, or text for people."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from shared.logs import (
    HANDLER_NAME,
    OWN_HANDLER_LOGGERS,
    JobIdFilter,
    JsonLineFormatter,
    TextFormatter,
    configure_logging,
    current_job_id,
    job_context,
    logs_as_job,
    wants_json,
)

JOB = "job_" + "ab" * 12
OTHER = "job_" + "cd" * 12


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines to a buffer, through the filter the service uses."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonLineFormatter("test-service"))
    handler.addFilter(JobIdFilter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)
    logger.propagate = True


def parsed(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_line_is_one_json_object_with_time_level_logger_message(lines) -> None:
    logger, buffer = lines
    logger.warning("disk at %d%%", 93, extra={"disk": "/data"})
    [line] = parsed(buffer)
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert line["level"] == "WARNING" and line["logger"] == "tests.logs"
    assert line["message"] == "disk at 93%" and line["disk"] == "/data"
    assert line["service"] == "test-service"
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    assert "job_id" not in line  # about no job


def test_every_line_in_a_job_context_carries_its_id(lines) -> None:
    logger, buffer = lines
    with job_context(JOB):
        logger.info("loading inputs")
        with job_context(OTHER):
            logger.info("nested")
        logger.info("storing images")
    logger.info("idle")
    assert [line.get("job_id") for line in parsed(buffer)] == [JOB, OTHER, JOB, None]
    assert current_job_id() is None


def test_outside_a_context_the_job_a_message_names_is_its_job(lines) -> None:
    logger, buffer = lines
    logger.warning("job %s: taken back from its stalled worker", JOB)
    logger.info("Task %(name)s received", {"name": "x", "args": f"('{OTHER}',)"})
    logger.info(f"event hook failed for {JOB} completed")
    logger.info("job %s given", JOB, extra={"job_id": OTHER})  # an explicit one wins
    logger.info("not a job: job_123")
    assert [line.get("job_id") for line in parsed(buffer)] == [JOB, OTHER, JOB, OTHER, None]


def test_celerys_task_arguments_stay_out_of_the_line(lines) -> None:
    logger, buffer = lines
    context = {"name": "latentd.deliver_webhook", "id": "t1",
               "args": f"['{JOB}', 'evt', 'completed', 'https://user:s3cret@example.com/h']"}
    logger.info("Task %(name)s[%(id)s] received", context, extra={"data": context})
    [line] = parsed(buffer)
    assert line["message"] == "Task latentd.deliver_webhook[t1] received"
    assert line["job_id"] == JOB and "s3cret" not in json.dumps(line)


def test_a_traceback_stays_inside_the_line(lines) -> None:
    logger, buffer = lines
    try:
        raise ValueError("bad \"input\"\nsecond line")
    except ValueError:
        with job_context(JOB):
            logger.exception("job failed")
    [line] = parsed(buffer)  # one line, however many the traceback has
    assert line["job_id"] == JOB and "ValueError: bad" in line["exc_info"]


def test_logs_as_job_runs_the_function_in_its_first_arguments_context() -> None:
    @logs_as_job
    def run(job_id: str, factor: int) -> tuple[str | None, int]:
        return current_job_id(), factor * 2

    assert run(JOB, 21) == (JOB, 42)
    assert current_job_id() is None


def test_text_lines_name_the_job_in_brackets() -> None:
    record = logging.LogRecord("worker.tasks", logging.INFO, __file__, 1, "stored %d image(s)",
                               (2,), None)
    record.job_id = JOB
    assert TextFormatter().format(record).endswith(f" INFO worker.tasks [{JOB}] stored 2 image(s)")
    record.job_id = None
    assert TextFormatter().format(record).endswith(" INFO worker.tasks stored 2 image(s)")


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_auto_is_text_on_a_terminal_and_json_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", FakeStream(tty=True))
    assert not wants_json("auto") and wants_json("json") and not wants_json("text")
    monkeypatch.setattr(sys, "stderr", FakeStream(tty=False))
    assert wants_json("auto") and not wants_json("text")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
                 for name in OWN_HANDLER_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (saved, propagate) in libraries.items():
        logging.getLogger(name).handlers[:] = saved
        logging.getLogger(name).propagate = propagate
    logging.captureWarnings(False)


def test_configuring_again_replaces_the_handler_and_takes_uvicorns_lines(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    access = logging.getLogger("uvicorn.access")
    access.addHandler(logging.StreamHandler(io.StringIO()))  # as uvicorn configures it
    access.propagate = False
    configure_logging("json", "api")
    configure_logging("json", "api", logging.WARNING)
    ours = [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME]
    assert len(ours) == 1 and logging.getLogger().level == logging.WARNING
    assert access.handlers == [] and access.propagate

    stderr = FakeStream(tty=False)
    monkeypatch.setattr(sys, "stderr", stderr)  # the handler writes to stderr as it is now
    with job_context(JOB):
        access.warning('%s - "%s %s HTTP/1.1" %d', "127.0.0.1:5", "GET", f"/v1/jobs/{JOB}", 200)
    [line] = [json.loads(text) for text in stderr.getvalue().splitlines()]
    assert line["logger"] == "uvicorn.access" and line["job_id"] == JOB
    assert line["service"] == "api"
