"""Log lines of every latentd process: one JSON object a line, or plain text for people.

Each process calls ``configure_logging`` once at start (the API in its lifespan, the
workers through Celery's ``setup_logging`` signal, ``configure_celery_logging``); from
then on every record, the service's own and its libraries' (uvicorn, Celery, httpx), goes
to stderr through one handler as

    {"time": "2025-06-01T12:00:00.123456+00:00", "level": "INFO", "logger": "worker.tasks",
     "message": "job job_…: 1 image(s) in 0.84s", "service": "generation-worker",
     "job_id": "job_…"}

``job_id`` is on every line about a job: the job the code is working for (the context
``job_context`` sets: around a Celery task whose first argument is a job id, around a
generation run, and around an API request whose path names a job), or else the job id
the message itself names (the reaper's, the store's event hook's lines).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from pythonjsonlogger.json import JsonFormatter

P = ParamSpec("P")
R = TypeVar("R")

API = "api"
GENERATION_WORKER = "generation-worker"
WEBHOOK_WORKER = "webhook-worker"

HANDLER_NAME = "latentd"
# Libraries that give their loggers handlers of their own, in their own format (uvicorn
# before the app is even imported, transformers and diffusers at import), and stop their
# records there: their records come to this handler instead, at the levels they set.
OWN_HANDLER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "transformers",
                       "diffusers")
JOB_ID_RE = re.compile(r"\bjob_[0-9a-f]{24}\b")

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("latentd_job_id",
                                                                    default=None)


def current_job_id() -> str | None:
    return _job_id.get()


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Every line logged in this block (this thread or task) is about ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


def logs_as_job(func: Callable[Concatenate[str, P], R]) -> Callable[Concatenate[str, P], R]:
    """Run ``func(job_id, ...)`` inside ``job_context(job_id)``."""

    @functools.wraps(func)
    def wrapper(job_id: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with job_context(job_id):
            return func(job_id, *args, **kwargs)

    return wrapper


class JobIdFilter(logging.Filter):
    """Sets ``record.job_id``: given with ``extra``, else the context's, else the one
    the message's arguments name (None: the line is about no job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job_id() or _named_job_id(record)
        return True


def _named_job_id(record: logging.LogRecord) -> str | None:
    args = record.args
    values: list[Any] = list(args.values()) if isinstance(args, Mapping) else list(args or ())
    for value in (record.msg, *values):
        if isinstance(value, str):
            match = JOB_ID_RE.search(value)
            if match:
                return match.group()
    return None


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line: time, level, logger, message, service, job_id (when about
    a job), then any ``extra`` fields and the traceback (``exc_info``)."""

    def __init__(self, service: str) -> None:
        super().__init__(
            "{levelname}{name}{message}", style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"service": service}, timestamp="time", json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        if log_data.get("job_id") is None:
            log_data.pop("job_id", None)
        log_data.pop("color_message", None)  # uvicorn's ANSI copy of the message
        # Celery's task lines attach the task's arguments as ``data``: a webhook's URL as
        # given (credentials, query and all) and its whole body. Their message and the
        # job id are what the line needs.
        log_data.pop("data", None)
        first: dict[str, Any] = {key: log_data.pop(key)
                                 for key in ("time", "level", "logger", "message")
                                 if key in log_data}
        return {**first, **log_data}


class TextFormatter(logging.Formatter):
    """``2025-06-01 12:00:00,123 INFO worker.tasks [job_…] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(job_tag)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        record.job_tag = f" [{job_id}]" if job_id else ""
        return super().formatMessage(record)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # under the handler's lock (Handler.handle)
        super().emit(record)


def wants_json(log_format: str) -> bool:
    """``LATENTD_LOG_FORMAT``: json, text, or auto (text on a terminal, JSON otherwise)."""
    if log_format == "auto":
        return not sys.stderr.isatty()
    return log_format == "json"


def configure_logging(log_format: str, service: str, level: int | str = logging.INFO) -> None:
    """Send every record of this process to stderr in ``log_format``, at ``level`` and up.

    Safe to call again (Celery's prefork children do): the handler is replaced, not added.
    """
    handler = _StderrHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonLineFormatter(service) if wants_json(log_format)
                         else TextFormatter())
    handler.addFilter(JobIdFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in OWN_HANDLER_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)  # warnings.warn() becomes a line too, not raw stderr
    # httpx logs every request at INFO with its whole URL: a webhook's, whose query or
    # userinfo may be the receiver's secret (the job itself only ever shows it redacted).
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def configure_celery_logging(log_format: str, service: str) -> None:
    """Have a Celery worker log through ``configure_logging``: from now on (the worker's
    entry module calls this as Celery imports it, so that what the worker says while it
    starts, such as its warning about running as root, is a line too), then at the
    worker's ``--loglevel`` in its main process and each prefork child; with each task's
    job id; and, for JSON, without the banner it prints at start (text on stdout)."""
    from celery import signals

    configure_logging(log_format, service, logging.WARNING)

    def setup(loglevel: int | None = None, **_: object) -> None:
        configure_logging(log_format, service, loglevel or logging.WARNING)

    # Both tasks take the job id first; Celery's own lines about a task (received,
    # succeeded, retry) are logged between these two signals.
    tokens: dict[str, contextvars.Token[str | None]] = {}

    def enter_job(task_id: str, args: tuple = (), **_: object) -> None:
        if args and isinstance(args[0], str) and JOB_ID_RE.fullmatch(args[0]):
            tokens[task_id] = _job_id.set(args[0])

    def leave_job(task_id: str, **_: object) -> None:
        token = tokens.pop(task_id, None)
        if token is not None:
            _job_id.reset(token)

    def quiet(instance: Any = None, **_: object) -> None:
        if instance is not None:
            instance.quiet = True

    signals.setup_logging.connect(setup, weak=False, dispatch_uid="latentd-logging")
    signals.task_prerun.connect(enter_job, weak=False, dispatch_uid="latentd-job-enter")
    signals.task_postrun.connect(leave_job, weak=False, dispatch_uid="latentd-job-leave")
    if wants_json(log_format):
        signals.celeryd_after_setup.connect(quiet, weak=False, dispatch_uid="latentd-quiet")
