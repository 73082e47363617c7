"""The service under fault: its processes, its workers, and what watches them.

``fault_service`` starts the real processes (scripts/service_processes.py): redis-server
with its append-only file (``appendfsync everysec``, as ``make run`` and docker-compose
run it), the gated generation worker of tests/integration (a job with metadata
``{"hold": true}`` waits after its first step until released), the webhook worker and the
API, with heartbeats, reaper and webhook retries short enough for a test. Tests see it
through a ``Ledger`` (ledger.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import redis
from celery import Celery

from scripts.process_commands import GENERATION_WORKER, service_commands
from scripts.service_processes import (
    ServiceProcesses,
    running_service,
    start_process,
    stop_process,
)
from shared.celery_app import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, make_celery
from shared.heartbeat import live_workers
from shared.jobstore import JobStore
from shared.jobstore.keys import job_key
from shared.settings import Settings
from tests.integration.gate import release_key
from tests.webhook_receiver import WebhookReceiver

T = TypeVar("T")

MODEL = "tiny-random"
GATED_WORKER = "tests.integration.gated_worker"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})

HEARTBEAT_INTERVAL = 0.3
REAPER_INTERVAL = 0.2
WEBHOOK_DEADLINE = 1.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_THREADS = 4  # scripts/service_processes.py starts the webhook worker with 4 threads
FAULT_ENV = {
    "LATENTD_HEARTBEAT_INTERVAL_SECONDS": str(HEARTBEAT_INTERVAL),
    "LATENTD_REAPER_INTERVAL_SECONDS": str(REAPER_INTERVAL),
    # Limits above any hold in these tests (the gate lets go after 60 s anyway): a held job
    # is stopped by the fault, not by Celery's clock, even while a replacement worker takes
    # half a minute to start on a loaded machine.
    "LATENTD_TASK_SOFT_TIME_LIMIT": "90",
    "LATENTD_TASK_TIME_LIMIT": "100",
    "LATENTD_REAPER_GRACE_SECONDS": "1",
    "LATENTD_TASK_MAX_ATTEMPTS": "3",
    "LATENTD_WEBHOOK_TIMEOUT_SECONDS": str(WEBHOOK_DEADLINE),
    "LATENTD_WEBHOOK_MAX_ATTEMPTS": str(WEBHOOK_ATTEMPTS),
    "LATENTD_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
}
# A dead worker's job is taken back within its heartbeat's lifetime plus one reaper round;
# the rest is slack for a loaded 2-core machine.
RECLAIM_BOUND = 3 * HEARTBEAT_INTERVAL + REAPER_INTERVAL + 3
# Longer than any wait before a webhook retry (base 0.2 s: at most 0.4 s, then 0.8 s).
MARKER_COUNTDOWN_SECONDS = 1.5
MARKER_PREFIX = "evt_marker_"
# Markers are recorded on no job: the webhook log ignores an attempt of a missing job.
MARKER_JOB = "job_" + "0" * 24
WORKER_START_TIMEOUT = 90

FAKE_NET_DIR = Path(__file__).parent / "fake_net"
# On the scripted network, ledgers' receivers are reached as this name, which resolves to
# a public address that the processes connect to the receiver's local port for.
HOOK_HOST = "hooks.ledger.faults.test"
HOOK_ADDRESS = "93.184.216.10"


def wait_for(condition: Callable[[], T | Literal[False] | None], timeout: float, what: str,
             every: float = 0.05) -> T:
    """Poll ``condition`` until it is truthy; its value. Fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.1f} s waiting for {what}"
        time.sleep(every)
    return value


def process_alive(pid: int) -> bool:
    """Running or stopped, not gone and not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def worker_pid(name: str) -> int:
    """The pid in a heartbeat name (``<host>-<pid>``, worker/heartbeat.py)."""
    return int(name.rsplit("-", 1)[1])


# -- who saw what ---------------------------------------------------------------------


class EventTap:
    """Every job event the store publishes, from one pattern subscription that subscribes
    again after Redis comes back (events published before it has are not seen)."""

    def __init__(self, redis_url: str) -> None:
        self._url = redis_url
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[float, str, dict]]] = defaultdict(list)
        self.subscriptions = 0
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-tap", daemon=True)

    def start(self) -> EventTap:
        self._thread.start()
        assert self._subscribed.wait(10), "the event tap never subscribed"
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def events(self, job_id: str, event_type: str | None = None) -> list[tuple[float, dict]]:
        """``(time.monotonic() seen, job as written)`` of the job's events, oldest first."""
        with self._lock:
            return [(at, job) for at, kind, job in self._events.get(job_id, [])
                    if event_type is None or kind == event_type]

    def count(self, job_id: str, event_type: str) -> int:
        return len(self.events(job_id, event_type))

    def _run(self) -> None:
        while not self._stop.is_set():
            client = redis.Redis.from_url(self._url, decode_responses=True)
            pubsub = client.pubsub()
            try:
                pubsub.psubscribe(JobStore.channel("*"))
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self.subscriptions += 1
                        self._subscribed.set()
                    elif message["type"] == "pmessage":
                        event = json.loads(message["data"])
                        with self._lock:
                            self._events[event["job"]["id"]].append(
                                (time.monotonic(), event["type"], event["job"]))
            except (redis.RedisError, OSError):
                self._stop.wait(0.1)
            finally:
                pubsub.close()
                client.close()


class FakeNet:
    """The script of fake_net/sitecustomize.py for one service's processes: scripted DNS
    answers and local stand-ins for public addresses, and the log of what they did."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "fake-net.json"
        self.log = folder / "fake-net.log"
        self.names: dict[str, list[list[str]]] = {}
        self.public: dict[str, int] = {}
        self.write()

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(FAKE_NET_DIR), "FAULTS_FAKE_NET": str(self.path)}

    def answer(self, name: str, *answers: list[str]) -> None:
        """``name`` resolves to each answer in turn (per process), the last repeating."""
        self.names[name] = list(answers)
        self.write()

    def stand_in(self, address: str, port: int) -> None:
        """Connections to ``address`` go to 127.0.0.1:``port``."""
        self.public[address] = port
        self.write()

    def write(self) -> None:
        self.path.write_text(json.dumps({"names": self.names, "public": self.public,
                                         "log": str(self.log)}))

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


# -- the service ------------------------------------------------------------------------


@dataclass
class WorkerGroup:
    """One generation worker: its Celery parent, leader of its own process group."""

    pgid: int
    proc: subprocess.Popen | None = None  # None: the harness's own, stopped by it

    def alive(self) -> bool:
        return process_alive(self.pgid)


@dataclass
class FaultService:
    processes: ServiceProcesses
    redis: redis.Redis  # decode_responses=True
    tap: EventTap
    receiver: WebhookReceiver  # where ledgers send their jobs' completed webhooks
    celery: Celery  # publishes marker webhooks
    node_tag: str
    net: FakeNet | None = None  # the scripted network its processes run on, if any
    groups: list[WorkerGroup] = field(default_factory=list)
    # Processes that must outlive the harness's (a restarted redis-server).
    late: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.processes.url

    @property
    def workdir(self) -> Path:
        return self.processes.workdir

    def hook_url(self, path: str) -> str:
        """The ledgers' receiver at ``path``, as the service's processes can reach it."""
        return self.receiver.url(path, host=HOOK_HOST if self.net is not None else None)

    # workers

    def serving(self) -> list[str]:
        """Heartbeat names of live worker processes in live worker groups."""
        groups = {group.pgid for group in self.groups if group.alive()}
        names = []
        for name in live_workers(self.redis, MODEL):
            pid = worker_pid(name)
            try:
                if process_alive(pid) and os.getpgid(pid) in groups:
                    names.append(name)
            except ProcessLookupError:
                pass
        return names

    def start_worker(self) -> WorkerGroup:
        """Another generation worker on the same Redis and storage, in the service's env."""
        tag = f"{self.node_tag}-{len(self.groups) + 1}"
        argv = service_commands(sys.executable, host="127.0.0.1", port=0, node_tag=tag,
                                generation_app=GATED_WORKER)[GENERATION_WORKER]
        proc = start_process(argv, dict(self.processes.env), self.workdir / f"worker-{tag}.log")
        group = WorkerGroup(proc.pid, proc)
        self.groups.append(group)
        return group

    def ensure_workers(self, count: int) -> list[str]:
        """Start workers until ``count`` groups live; their serving names once all beat."""
        for _ in range(count - sum(group.alive() for group in self.groups)):
            self.start_worker()
        return wait_for(lambda: len(names := self.serving()) >= count and names,
                        WORKER_START_TIMEOUT, f"{count} serving generation workers", every=0.1)

    def group_of(self, name: str) -> WorkerGroup:
        pgid = os.getpgid(worker_pid(name))
        return next(group for group in self.groups if group.pgid == pgid)

    def claimant(self, job_id: str) -> str:
        """The heartbeat name of the worker process whose claim on the job stands."""
        return str(wait_for(lambda: self.redis.hget(job_key(job_id), "worker"), 5,
                            f"{job_id} to name its worker"))

    def release(self, job_id: str, times: int = 1) -> None:
        for _ in range(times):
            self.redis.rpush(release_key(job_id), 1)

    # Redis

    def redis_pid(self) -> int:
        return int(self.redis.info("server")["process_id"])

    def restart_redis(self) -> subprocess.Popen:
        """redis-server again, same port, files and options (it reloads the AOF)."""
        proc = start_process(list(self.processes.redis_argv), dict(self.processes.env),
                             self.workdir / f"redis-{len(self.late) + 2}.log")
        self.late.append(proc)
        return proc

    # webhooks

    def wait_past_webhook_retries(self, url: str, arrived: Callable[[str], bool]) -> None:
        """Have the webhook worker send a marker to ``url`` later than any retry now due,
        and wait until ``arrived(marker id)``: a retry that was coming has come by then."""
        marker = MARKER_PREFIX + secrets.token_hex(4)
        self.celery.send_task(DELIVER_WEBHOOK_TASK, args=[MARKER_JOB, marker, "completed", url,
                                                          "{}"],
                              queue=WEBHOOK_QUEUE, countdown=MARKER_COUNTDOWN_SECONDS)
        wait_for(lambda: arrived(marker), 30, "the marker webhook", every=0.05)


def received_ids(receiver: WebhookReceiver, path: str) -> Counter[str]:
    """``webhook-id`` → times received at ``path``."""
    return Counter(request.headers.get("webhook-id", "") for request in receiver.requests(path))


@contextmanager
def fault_service(workdir: Path, node_tag: str, *, strict: bool = False) -> Iterator[FaultService]:
    """The service under fault; its extra workers and any restarted Redis stop with it.

    ``strict``: private webhook targets refused (the production default), its processes
    on a scripted network (``FakeNet``) where the ledgers' local receiver has a public
    address.
    """
    late: list[subprocess.Popen] = []
    env = dict(FAULT_ENV)
    net = None
    if strict:
        net = FakeNet(workdir)
        env.update(net.env(), LATENTD_WEBHOOK_ALLOW_PRIVATE="false")
    try:
        with running_service(workdir, env, node_tag=node_tag, generation_app=GATED_WORKER,
                             redis_aof=True) as processes:
            connection = redis.Redis.from_url(processes.redis_url, decode_responses=True)
            receiver = WebhookReceiver().start()
            if net is not None:
                net.answer(HOOK_HOST, [HOOK_ADDRESS])
                net.stand_in(HOOK_ADDRESS, receiver.port)
            celery = make_celery(Settings(redis_url=processes.redis_url))
            tap = EventTap(processes.redis_url).start()
            service = FaultService(processes, connection, tap, receiver, celery, node_tag,
                                   net=net, late=late)
            try:
                [first] = wait_for(lambda: live_workers(connection, MODEL), 30,
                                   "the first worker's heartbeat")
                service.groups.append(WorkerGroup(os.getpgid(worker_pid(first))))
                yield service
            finally:
                for group in service.groups:
                    if group.proc is not None:
                        stop_process(group.proc)
                tap.stop()
                receiver.stop()
                celery.close()
                connection.close()
    finally:
        for proc in late:
            stop_process(proc)


def kill_group(pid: int, sig: signal.Signals) -> int:
    """Send ``sig`` to the process group of ``pid``; returns the group id."""
    pgid = os.getpgid(pid)
    os.killpg(pgid, sig)
    return pgid
