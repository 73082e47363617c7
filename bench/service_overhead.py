"""Service overhead, measured side by side in one run: the same generation called in-process
through ``GenerationEngine`` (direct) and sent through the running service (HTTP → Redis →
Celery worker → storage → HTTP), interleaved job by job so machine noise hits both alike.

    python -m bench.service_overhead [--model tiny-random|emoji] [--jobs N] [--steps S]

Prints a table of medians, p90s and ratios; performance is measured here, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image, ImageChops

from scripts.service_processes import running_service
from shared.model_registry import TINY_RANDOM, ModelRegistry
from shared.schemas import JobPlan
from shared.settings import Settings

PROMPT = "a red fox in the snow, emoji style"
SEED = 1234
# Longer than any benchmark job; a 202 answer is simply waited on again.
WAIT_HEADERS = {"Prefer": "wait=60"}


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
    direct_jobs_per_second: list[float] = field(default_factory=list)
    service_jobs_per_second: list[float] = field(default_factory=list)
    api_requests: int = 0
    api_failures: int = 0
    api_seconds: float = 0.0
    api_clients: int = 0
    healthz_requests_per_second: float = 0.0


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
    """Seconds from sending ``POST /v1/jobs`` to holding the finished job, and the job."""
    started = time.perf_counter()
    response = client.post("/v1/jobs", json=body, headers=WAIT_HEADERS)
    while response.status_code == 202:
        response = client.get(f"/v1/jobs/{response.json()['id']}", headers=WAIT_HEADERS)
    elapsed = time.perf_counter() - started
    return elapsed, _succeeded(response)


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


def measure(args: argparse.Namespace, url: str, direct: DirectPipeline) -> Results:
    body = {"model": args.model, "prompt": PROMPT, "seed": SEED}
    if args.steps is not None:
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
        )

        def direct_job() -> None:
            results.direct_seconds.append(direct.run(params)[0])

        def service_job() -> None:
            seconds, job = run_service_job(client, body)
            results.service_seconds.append(seconds)
            results.worker_inference_seconds.append(job["metrics"]["inference_seconds"])

        _progress(f"latency: {args.jobs} jobs per mode, interleaved")
        alternate(direct_job, service_job, args.jobs)

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

    _progress(f"API: GET /v1/jobs/{{id}}, then GET /healthz, {args.rps_seconds} s each")
    ok, failed, seconds = asyncio.run(
        _hammer_get(url, f"/v1/jobs/{first_job['id']}", args.clients, args.rps_seconds)
    )
    results.api_requests, results.api_failures = ok, failed
    results.api_seconds, results.api_clients = seconds, args.clients
    # The same clients on a route that touches neither Redis nor a model: the HTTP ceiling.
    ok, _, seconds = asyncio.run(_hammer_get(url, "/healthz", args.clients, args.rps_seconds))
    results.healthz_requests_per_second = ok / seconds
    return results


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
        f"  {os.cpu_count()} CPUs, load average {results.load_average:.1f} before measuring; "
        f"{results.jobs} jobs per mode after {results.warmup} warm-up, direct/service interleaved ABBA"
    )
    api_line = (
        f"API  GET /v1/jobs/{{id}}: {api_rate:.0f} requests/s ({results.api_clients} concurrent "
        f"clients, {results.api_seconds:.1f} s, {results.api_requests} answered 200, "
        f"{results.api_failures} other; the load generator shares the CPUs)"
    )
    healthz_line = (
        f"     GET /healthz (no Redis, for reference): "
        f"{results.healthz_requests_per_second:.0f} requests/s"
    )
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
        api_line,
        healthz_line,
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=TINY_RANDOM, help="registered model name: tiny-random (default) or emoji"
    )
    parser.add_argument("--jobs", type=int, default=20, help="jobs per mode (default 20)")
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: the model's own)"
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
        default=4,
        help="concurrent clients for the API requests/s (default 4)",
    )
    parser.add_argument(
        "--rps-seconds",
        type=float,
        default=2.0,
        help="how long to measure API requests/s (default 2)",
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
    env = {"LATENTD_DEFAULT_MODEL": args.model, "LATENTD_TORCH_THREADS": str(args.torch_threads)}
    try:
        _progress("starting redis-server, the workers and the API")
        with running_service(workdir, env, node_tag="bench") as service:
            results = measure(args, service.url, direct)
    except BaseException as exc:
        outcome = "failed" if isinstance(exc, Exception) else "stopped"
        _progress(f"{outcome}; service logs kept in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    print(report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
