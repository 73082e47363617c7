"""Service overhead, measured side by side in one run: the same generation called in-process
through ``GenerationEngine`` (direct) and sent through the running service (HTTP → Redis →
Celery worker → storage → HTTP), interleaved job by job so machine noise hits both alike.

    python -m bench.service_overhead [--model tiny-random|emoji] [--jobs N] [--steps S]

Prints a table of medians, p90s and ratios; performance is measured here, never asserted.
Besides latency and throughput: the overhead per job (client latency minus the worker's
own inference time) beside the two floors under it measured in the same run (this
client's ``GET /healthz`` round trip, and a bare Celery task's round trip:
bench/celery_floor.py), ``GET /v1/jobs/{id}`` vs ``GET /healthz`` requests/s in
alternating pairs and submits/s (with wrk), notification latency (job finished →
``Prefer: wait`` answer, → SSE ``completed``), and ``make run`` to ready with the
generation worker's memory per model set (bench/startup.py).

A new measurement is a ``measure_*`` function filling a field of ``Results`` and a
section of rows in ``report`` (``_sections``), e.g. the batching gain.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from PIL import Image, ImageChops

from bench.celery_floor import celery_round_trips
from bench.startup import Startup, time_make_run
from bench.wrk import WRK_MISSING, WrkResult, post_json_script, run_wrk, wrk_available
from scripts.service_processes import ServiceProcesses, running_service
from shared.model_registry import TINY_RANDOM, ModelRegistry
from shared.schemas import JobPlan
from shared.settings import Settings

PROMPT = "a red fox in the snow, emoji style"
SEED = 1234
# Longer than any benchmark job; a 202 answer is simply waited on again.
WAIT_HEADERS = {"Prefer": "wait=60"}
# GET /v1/jobs/{id} and GET /healthz are measured this many times each, alternating
# (ABBA), and their ratio is the median of the pairs': one pair is at the mercy of
# whatever else the machine did during it.
READ_PAIRS = 5


class BenchmarkError(RuntimeError):
    pass


@dataclass
class Results:
    params: JobPlan
    torch_threads: int
    jobs: int
    warmup: int
    load_average: float
    max_pixel_difference: int
    direct_seconds: list[float] = field(default_factory=list)
    service_seconds: list[float] = field(default_factory=list)
    worker_inference_seconds: list[float] = field(default_factory=list)
    # The overhead jobs: service jobs one after another with nothing else in between
    # (client latency, and the worker's inference time of each).
    alone_seconds: list[float] = field(default_factory=list)
    alone_inference_seconds: list[float] = field(default_factory=list)
    direct_jobs_per_second: list[float] = field(default_factory=list)
    service_jobs_per_second: list[float] = field(default_factory=list)
    # Finished (the job's finished_at, Redis's clock) → the client holds the answer.
    wait_notify_seconds: list[float] = field(default_factory=list)
    sse_notify_seconds: list[float] = field(default_factory=list)
    # After each overhead job, the same client's GET /healthz round trip: the HTTP floor.
    healthz_seconds: list[float] = field(default_factory=list)
    # A bare Celery task's round trip on the service's Redis (bench/celery_floor.py).
    celery_floor_seconds: list[float] = field(default_factory=list)
    api_requests: int = 0
    api_failures: int = 0
    api_seconds: float = 0.0
    api_clients: int = 0
    healthz_requests_per_second: float = 0.0
    # (GET /v1/jobs/{id}, GET /healthz) requests/s of each pair, in the order measured.
    read_pairs: list[tuple[float, float]] = field(default_factory=list)
    api_load_generator: str = "wrk"  # or what stood in for it, and why
    submits: WrkResult | None = None
    startups: list[Startup] = field(default_factory=list)
    machine: str = ""

    @property
    def job_overhead_seconds(self) -> list[float]:
        """Per overhead job: client latency minus the worker's own inference time."""
        return [total - inference for total, inference
                in zip(self.alone_seconds, self.alone_inference_seconds, strict=True)]


class DirectPipeline:
    """The model loaded in this process and run exactly as the worker runs it."""

    def __init__(self, model: str, torch_threads: int):
        from worker.engine import GenerationEngine  # torch-heavy: loaded only when benchmarking
        from worker.pipelines import load_pipeline

        settings = Settings(torch_threads=torch_threads, default_model=model)
        spec = ModelRegistry.from_settings(settings).get(model)
        self.engine = GenerationEngine({model: load_pipeline(spec, settings)})

    def run(self, params: JobPlan) -> tuple[float, Image.Image]:
        started = time.perf_counter()
        images = self.engine.generate(params)
        return time.perf_counter() - started, images[0].image


def _succeeded(response: httpx.Response) -> dict:
    job = response.json() if response.status_code == 200 else None
    if job is None or job["status"] != "succeeded":
        raise BenchmarkError(f"job did not succeed: {response.status_code} {response.text[:300]}")
    return job


def run_service_job(client: httpx.Client, body: dict) -> tuple[float, dict]:
    """Seconds from sending ``POST /v1/jobs`` to holding the finished job, and the job
    (with ``received_at``: the epoch time it was held, to set against ``finished_at``)."""
    started = time.perf_counter()
    response = client.post("/v1/jobs", json=body, headers=WAIT_HEADERS)
    while response.status_code == 202:
        response = client.get(f"/v1/jobs/{response.json()['id']}", headers=WAIT_HEADERS)
    elapsed = time.perf_counter() - started
    received_at = time.time()
    job = _succeeded(response)
    job["received_at"] = received_at
    return elapsed, job


def since_finished(job: dict, received_at: float) -> float:
    """Seconds from the job's ``finished_at`` (stamped on Redis's clock, this machine's)
    to ``received_at``."""
    finished = datetime.fromisoformat(job["finished_at"])
    return received_at - finished.timestamp()


def sse_notification(client: httpx.Client, body: dict) -> float:
    """Submit a job (no wait), follow its SSE stream; seconds from its finish to the
    ``completed`` event reaching this client."""
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    event = None
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "completed":
                received_at = time.time()
                return since_finished(_succeeded_job(json.loads(line[5:])), received_at)
    raise BenchmarkError(f"the event stream of {job_id} ended without 'completed'")


def _succeeded_job(job: dict) -> dict:
    if job.get("status") != "succeeded":
        raise BenchmarkError(f"job did not succeed: {str(job)[:300]}")
    return job


async def _submit_at_once(url: str, body: dict, jobs: int) -> float:
    """Seconds from submitting ``jobs`` jobs concurrently until the last one has finished."""
    limits = httpx.Limits(max_connections=jobs + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one() -> None:
            response = await client.post("/v1/jobs", json=body, headers=WAIT_HEADERS)
            while response.status_code == 202:
                path = f"/v1/jobs/{response.json()['id']}"
                response = await client.get(path, headers=WAIT_HEADERS)
            _succeeded(response)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(jobs)))
        return time.perf_counter() - started


async def _hammer_get(url: str, path: str, clients: int, seconds: float) -> tuple[int, int, float]:
    """(answered 200, other answers, seconds) for ``clients`` clients looping on GET ``path``."""
    pool = [httpx.AsyncClient(base_url=url, timeout=10) for _ in range(clients)]
    try:
        # One request each first, so connecting is not part of the measured window.
        await asyncio.gather(*(client.get(path) for client in pool))

        async def loop(client: httpx.AsyncClient, deadline: float) -> tuple[int, int]:
            ok = failed = 0
            while time.perf_counter() < deadline:
                response = await client.get(path)
                if response.status_code == 200:
                    ok += 1
                else:
                    failed += 1
            return ok, failed

        started = time.perf_counter()
        counts = await asyncio.gather(*(loop(client, started + seconds) for client in pool))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(client.aclose() for client in pool))
    return sum(ok for ok, _ in counts), sum(failed for _, failed in counts), elapsed


def _max_pixel_difference(direct: Image.Image, png: bytes) -> int:
    served = Image.open(io.BytesIO(png)).convert("RGB")
    if served.size != direct.size:
        return 255
    difference = ImageChops.difference(direct.convert("RGB"), served)
    return max(high for _, high in difference.getextrema())


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def alternate(direct_run: Callable[[], None], service_run: Callable[[], None], times: int) -> None:
    """Run each ``times`` times, interleaved ABBA: direct, service, service, direct, ..."""
    # The service's processes still finish up (ack, logs) after answering: with each mode
    # following the other equally often, that tail, like any other noise, hits both alike.
    for index in range(times):
        pair = (direct_run, service_run) if index % 2 == 0 else (service_run, direct_run)
        for run in pair:
            run()


def http_round_trip(client: httpx.Client) -> float:
    """Seconds for one ``GET /healthz`` (no Redis, no model) with ``client``."""
    started = time.perf_counter()
    client.get("/healthz").raise_for_status()
    return time.perf_counter() - started


def measure(args: argparse.Namespace, service: ServiceProcesses, direct: DirectPipeline,
            workdir: Path) -> Results:
    url = service.url
    body = {"model": args.model, "prompt": PROMPT, "seed": SEED}
    if args.steps:
        body["steps"] = args.steps
    with httpx.Client(base_url=url, timeout=120) as client:
        # Warm-up (not counted). The first service job also gives the parameters the service
        # normalised the request to (size, guidance, scheduler): the direct path runs those.
        _progress("warming up")
        _, first_job = run_service_job(client, body)
        params = JobPlan.model_validate(first_job["request"])
        _, direct_image = direct.run(params)
        png = client.get(f"/v1/jobs/{first_job['id']}/images/0").content
        for _ in range(args.warmup - 1):
            direct.run(params)
            run_service_job(client, body)

        results = Results(
            params=params,
            torch_threads=args.torch_threads,
            jobs=args.jobs,
            warmup=args.warmup,
            load_average=os.getloadavg()[0],
            max_pixel_difference=_max_pixel_difference(direct_image, png),
            machine=machine_description(),
        )

        def direct_job() -> None:
            results.direct_seconds.append(direct.run(params)[0])

        def service_job() -> None:
            seconds, job = run_service_job(client, body)
            results.service_seconds.append(seconds)
            results.worker_inference_seconds.append(job["metrics"]["inference_seconds"])

        _progress(f"latency: {args.jobs} jobs per mode, interleaved")
        alternate(direct_job, service_job, args.jobs)

        # The overhead per job from service jobs alone: right after a direct run, this
        # process's torch work still holds a core while the next service job runs (measured
        # with the 1-step tiny-random job here: 12.4 ms instead of 9.8 ms), which the
        # latency ratio above shares out ABBA but a job's own overhead should not carry.
        _progress(f"overhead: {args.jobs} service jobs one after another")
        for _ in range(args.jobs):
            seconds, job = run_service_job(client, body)
            results.alone_seconds.append(seconds)
            results.alone_inference_seconds.append(job["metrics"]["inference_seconds"])
            results.wait_notify_seconds.append(since_finished(job, job["received_at"]))
            results.healthz_seconds.append(http_round_trip(client))
        _progress(f"Celery floor: {args.jobs} bare tasks")
        results.celery_floor_seconds = celery_round_trips(
            service.redis_url, args.jobs, workdir / "celery-floor.log")

        def direct_round() -> None:
            started = time.perf_counter()
            for _ in range(args.jobs):
                direct.run(params)
            results.direct_jobs_per_second.append(args.jobs / (time.perf_counter() - started))

        def service_round() -> None:
            seconds = asyncio.run(_submit_at_once(url, body, args.jobs))
            results.service_jobs_per_second.append(args.jobs / seconds)

        _progress(f"throughput: {args.rounds} round(s) of {args.jobs} jobs per mode")
        alternate(direct_round, service_round, args.rounds)

        _progress(f"notification: {args.jobs} jobs followed by SSE")
        for _ in range(args.jobs):
            results.sse_notify_seconds.append(sse_notification(client, body))

    measure_reads(args, url, f"/v1/jobs/{first_job['id']}", results)
    measure_submits(args, url, body, results)
    return results


def measure_reads(args: argparse.Namespace, url: str, job_path: str, results: Results) -> None:
    """``GET /v1/jobs/{id}`` and ``GET /healthz`` (no Redis, no model: the HTTP ceiling
    of this machine) with the same load, wrk's if installed, in ``READ_PAIRS`` pairs
    alternating ABBA."""
    _progress(f"API: GET /v1/jobs/{{id}} and GET /healthz, {READ_PAIRS} pairs, "
              f"{args.rps_seconds} s each")
    use_wrk = wrk_available()
    if not use_wrk:
        _progress(f"{WRK_MISSING}: measuring with httpx instead, which shares the CPUs "
                  "with the service and caps the figures")
    results.api_load_generator = "wrk" if use_wrk else f"httpx ({WRK_MISSING})"
    results.api_clients = args.clients

    def job_reads() -> float:
        if use_wrk:
            job = run_wrk(url + job_path, args.rps_seconds, args.clients)
            assert job is not None
            ok, failed, seconds = job.requests - job.non_2xx, job.non_2xx + job.socket_errors, \
                job.seconds
        else:
            ok, failed, seconds = asyncio.run(_hammer_get(url, job_path, args.clients,
                                                          args.rps_seconds))
        results.api_requests += ok
        results.api_failures += failed
        results.api_seconds += seconds
        return ok / seconds

    def healthz_reads() -> float:
        if use_wrk:
            healthz = run_wrk(url + "/healthz", args.rps_seconds, args.clients)
            assert healthz is not None
            return healthz.requests_per_second
        ok, _, seconds = asyncio.run(_hammer_get(url, "/healthz", args.clients,
                                                 args.rps_seconds))
        return ok / seconds

    for index in range(READ_PAIRS):
        if index % 2 == 0:
            job_rate = job_reads()
            healthz_rate = healthz_reads()
        else:
            healthz_rate = healthz_reads()
            job_rate = job_reads()
        results.read_pairs.append((job_rate, healthz_rate))
    results.healthz_requests_per_second = statistics.median(h for _, h in results.read_pairs)


def measure_submits(args: argparse.Namespace, url: str, body: dict, results: Results) -> None:
    """``POST /v1/jobs`` without waiting, as fast as wrk sends them (last: the jobs it
    queues keep the worker busy until the service stops)."""
    if not wrk_available():
        _progress(f"submits/s: skipped, {WRK_MISSING}")
        return
    _progress(f"submits: POST /v1/jobs for {args.rps_seconds} s")
    results.submits = run_wrk(url + "/v1/jobs", args.rps_seconds, args.clients,
                              lua=post_json_script(json.dumps(body)))


def measure_startups(args: argparse.Namespace, results: Results) -> None:
    """``make run`` to ready, and the worker's RSS, serving the first model, then the
    first two, ... of ``--memory-models``."""
    for count in range(1, len(args.memory_models) + 1):
        models = args.memory_models[:count]
        _progress(f"make run (scripts/run.py) to ready, serving {' + '.join(models)}")
        results.startups.append(time_make_run(models, args.torch_threads))


def median_and_p90(samples: Sequence[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    return statistics.median(samples), statistics.quantiles(samples, n=10, method="inclusive")[-1]


def _row(label: str, *cells: str) -> str:
    return f"{label:<40}" + "".join(f"{cell:>10}  " for cell in cells).rstrip()


def report(results: Results) -> str:
    p = results.params
    direct_median, direct_p90 = median_and_p90(results.direct_seconds)
    service_median, service_p90 = median_and_p90(results.service_seconds)
    inference_median, inference_p90 = median_and_p90(results.worker_inference_seconds)
    direct_rate = statistics.median(results.direct_jobs_per_second)
    service_rate = statistics.median(results.service_jobs_per_second)
    rounds = len(results.direct_jobs_per_second)
    same = "yes" if results.max_pixel_difference == 0 else (
        f"no (max channel difference {results.max_pixel_difference}/255)"
    )
    threads = results.torch_threads
    api_rate = results.api_requests / results.api_seconds
    job_line = (
        f"latentd service overhead: model {p.model}, {p.task.value} {p.width}x{p.height}, "
        f"{p.steps} steps ({p.scheduler}), guidance {p.guidance_scale:g}, seed {p.seeds[0]}"
    )
    threads_line = (
        f"  torch threads: {threads} in the direct path and in the worker "
        f"(LATENTD_TORCH_THREADS={threads}; --torch-threads)"
    )
    machine_line = (
        f"  {results.machine}; load average {results.load_average:.1f} before measuring; "
        f"{results.jobs} jobs per mode after {results.warmup} warm-up, direct/service interleaved ABBA"
    )
    api_line = (
        f"API  GET /v1/jobs/{{id}}: {api_rate:.0f} requests/s ({results.api_clients} "
        f"connections, {results.api_seconds:.1f} s, {results.api_requests} answered 200, "
        f"{results.api_failures} other; {results.api_load_generator}, on the same CPUs)"
    )
    healthz_line = (
        f"     GET /healthz (no Redis, for reference): "
        f"{results.healthz_requests_per_second:.0f} requests/s"
    )
    pair_ratios = [job / healthz for job, healthz in results.read_pairs]
    read_ratio = _row("ratio  GET /v1/jobs/{id} / GET /healthz",
                      f"{statistics.median(pair_ratios):.2f}x")
    read_pairs = ("  median of the pairs' ratios; pairs (jobs/s : healthz/s): " + ", ".join(
        f"{job:.0f} : {healthz:.0f}" for job, healthz in results.read_pairs))
    overhead = f"overhead {1000 * (service_median - direct_median):+.0f} ms per job"
    return "\n".join([
        job_line,
        threads_line,
        machine_line,
        f"  same pixels from both paths: {same}",
        "",
        _row("latency per job", "median", "p90"),
        _row("  direct   GenerationEngine.generate", f"{direct_median:.3f} s", f"{direct_p90:.3f} s"),
        _row("  service  POST /v1/jobs, Prefer: wait", f"{service_median:.3f} s",
             f"{service_p90:.3f} s"),
        _row("    within it, the worker's inference", f"{inference_median:.3f} s",
             f"{inference_p90:.3f} s"),
        _row("ratio  latency service/direct (median)", f"{service_median / direct_median:.2f}x",
             overhead),
        "",
        _row(f"throughput, {results.jobs} jobs (median of {rounds})", "jobs/s"),
        _row("  direct   sequential calls", f"{direct_rate:.2f}"),
        _row(f"  service  {results.jobs} submitted at once", f"{service_rate:.2f}"),
        _row("ratio  throughput service/direct", f"{service_rate / direct_rate:.2f}x"),
        "",
        *_overhead_rows(results),
        "",
        api_line,
        healthz_line,
        read_ratio,
        read_pairs,
        *_sections(results),
    ])


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def _overhead_rows(results: Results) -> list[str]:
    overhead, overhead_p90 = median_and_p90(results.job_overhead_seconds)
    wait, wait_p90 = median_and_p90(results.wait_notify_seconds)
    http, http_p90 = median_and_p90(results.healthz_seconds)
    celery, celery_p90 = median_and_p90(results.celery_floor_seconds)
    rows = [
        _row(f"service overhead per job ({len(results.alone_seconds)} jobs alone)", "median",
             "p90"),
        _row("  client latency - worker inference", _ms(overhead), _ms(overhead_p90)),
        _row("  under it: GET /healthz, same client", _ms(http), _ms(http_p90)),
        _row("  under it: a bare Celery task", _ms(celery), _ms(celery_p90)),
        _row("  the rest (median - both medians)", _ms(overhead - http - celery)),
        _row("notification: job finished ->", "median", "p90"),
        _row("  Prefer: wait answer", _ms(wait), _ms(wait_p90)),
    ]
    if results.sse_notify_seconds:
        sse, sse_p90 = median_and_p90(results.sse_notify_seconds)
        rows.append(_row("  SSE completed event", _ms(sse), _ms(sse_p90)))
    return rows


def _sections(results: Results) -> list[str]:
    """Every section after the API's: one block of rows each, in this order."""
    lines: list[str] = []
    if results.submits is None:
        lines += ["", f"submits: not measured ({WRK_MISSING})"]
    else:
        submits = results.submits
        lines += ["", _row(f"submits  POST /v1/jobs, no wait (wrk, {submits.connections} "
                           "connections)", f"{submits.requests_per_second:.0f}/s"),
                  (f"  {submits.requests} sent in {submits.seconds:.1f} s, {submits.non_2xx} "
                   f"not 2xx, {submits.socket_errors} socket errors")]
    if results.startups:
        lines += ["", _row("make run -> ready, worker memory (RSS)", "ready", "RSS")]
        for startup in results.startups:
            lines.append(_row(f"  {' + '.join(startup.models)}", f"{startup.seconds_to_ready:.1f} s",
                              f"{startup.worker_rss_bytes / 2**20:.0f} MiB"))
        if len(results.startups) > 1:
            first, last = results.startups[0], results.startups[-1]
            lines.append(_row(f"ratio  RSS {len(last.models)} models / 1 model",
                              f"{last.worker_rss_bytes / first.worker_rss_bytes:.2f}x"))
    return lines


def machine_description() -> str:
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
        memory = f", {kib / 2**20:.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo
                     if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}){memory}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=TINY_RANDOM, help="registered model name: tiny-random (default) or emoji"
    )
    parser.add_argument("--jobs", type=int, default=20, help="jobs per mode (default 20)")
    parser.add_argument(
        "--steps", type=int, default=1,
        help="denoising steps (default 1: the service's own costs stand out; 0: the model's own)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads in the direct path and the worker (default 1)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="uncounted jobs per mode first (at least 1; default 2)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="throughput rounds per mode (default 2)"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=8,
        help="connections for the API requests/s and submits/s (default 8)",
    )
    parser.add_argument(
        "--rps-seconds",
        type=float,
        default=4.0,
        help="how long to measure each requests/s (default 4; wrk rounds to whole seconds)",
    )
    parser.add_argument(
        "--memory-models",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=["emoji", TINY_RANDOM],
        help="make run to ready and worker RSS serving the first, then the first two, ... "
             "of these (comma-separated; default emoji,tiny-random; '' to skip)",
    )
    args = parser.parse_args(argv)
    for name in ("jobs", "torch_threads", "warmup", "rounds", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rps_seconds <= 0:
        parser.error("--rps-seconds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the service's processes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _progress(f"loading {args.model} in this process")
    direct = DirectPipeline(args.model, args.torch_threads)
    workdir = Path(tempfile.mkdtemp(prefix="latentd-bench-"))
    env = {"LATENTD_DEFAULT_MODEL": args.model, "LATENTD_TORCH_THREADS": str(args.torch_threads),
           # submits/s queues as many jobs as it can send: none refused for the caps
           "LATENTD_MAX_QUEUED_JOBS": "1000000", "LATENTD_MAX_QUEUED_JOBS_PER_KEY": "1000000"}
    try:
        _progress("starting redis-server, the workers and the API")
        with running_service(workdir, env, node_tag="bench") as service:
            results = measure(args, service, direct, workdir)
    except BaseException as exc:
        outcome = "failed" if isinstance(exc, Exception) else "stopped"
        _progress(f"{outcome}; service logs kept in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    # After the service has stopped, so that the launcher has the machine to itself.
    measure_startups(args, results)
    print(report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
