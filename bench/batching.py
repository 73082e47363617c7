"""Batching gain, measured side by side in one run: N compatible jobs (same model, size,
steps; different prompts and seeds) submitted to the running service at once vs the same
N one after another, and, beside it, the ceiling: the same N images in one direct
``GenerationEngine.generate_batch`` call vs N ``generate`` calls in this process.

    python -m bench.batching [--model tiny-random|emoji] [--jobs 8] [--steps 10]
                             [--max-batch N] [--rounds 2]

Prints seconds per mode, the ratios, and the batch sizes the worker reported
(``metrics.batch_images``); measured here, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
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

from scripts.service_processes import running_service
from shared.model_registry import TINY_RANDOM
from shared.schemas import JobPlan
from shared.settings import Settings

WAIT_HEADERS = {"Prefer": "wait=60"}
PROMPTS = ("a red fox in the snow", "a smiling cat", "a rocket", "a slice of pizza",
           "a green frog", "a sunflower", "a blue whale", "a cup of tea")


@dataclass
class BatchingResults:
    model: str
    jobs: int
    steps: int
    max_batch: int
    wait_ms: int
    torch_threads: int
    at_once_seconds: list[float] = field(default_factory=list)
    one_by_one_seconds: list[float] = field(default_factory=list)
    direct_batch_seconds: list[float] = field(default_factory=list)
    direct_calls_seconds: list[float] = field(default_factory=list)
    batch_images_at_once: list[int] = field(default_factory=list)


def job_bodies(model: str, jobs: int, steps: int) -> list[dict]:
    return [{"model": model, "prompt": PROMPTS[i % len(PROMPTS)] + f", emoji {i}",
             "seed": 1000 + i, "steps": steps} for i in range(jobs)]


async def _finish(client: httpx.AsyncClient, body: dict) -> dict:
    response = await client.post("/v1/jobs", json=body, headers=WAIT_HEADERS)
    while response.status_code == 202:
        response = await client.get(f"/v1/jobs/{response.json()['id']}", headers=WAIT_HEADERS)
    job = response.json()
    if response.status_code != 200 or job["status"] != "succeeded":
        raise RuntimeError(f"job did not succeed: {response.status_code} {response.text[:300]}")
    return job


async def at_once(url: str, bodies: list[dict]) -> tuple[float, list[dict]]:
    """Seconds from submitting every job concurrently until the last has finished."""
    limits = httpx.Limits(max_connections=len(bodies) + 1)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        jobs = await asyncio.gather(*(_finish(client, body) for body in bodies))
        return time.perf_counter() - started, list(jobs)


async def one_by_one(url: str, bodies: list[dict]) -> float:
    """Seconds to run the jobs, each submitted once the one before has finished."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        started = time.perf_counter()
        for body in bodies:
            await _finish(client, body)
        return time.perf_counter() - started


def direct_engine(model: str, torch_threads: int):  # -> GenerationEngine (torch-heavy import)
    from shared.model_registry import ModelRegistry
    from worker.engine import GenerationEngine
    from worker.pipelines import load_pipeline

    settings = Settings(torch_threads=torch_threads, default_model=model)
    spec = ModelRegistry.from_settings(settings).get(model)
    return GenerationEngine({model: load_pipeline(spec, settings)})


def _alternate(first: Callable[[], None], second: Callable[[], None], rounds: int) -> None:
    """ABBA, so machine noise hits both alike."""
    for index in range(rounds):
        for run in ((first, second) if index % 2 == 0 else (second, first)):
            run()


def measure(url: str, args: argparse.Namespace, results: BatchingResults) -> None:
    bodies = job_bodies(args.model, args.jobs, args.steps)
    _progress("warming up")
    _, warm = asyncio.run(at_once(url, bodies[:2]))
    plans = [JobPlan.model_validate({**warm[0]["request"], "prompt": body["prompt"],
                                     "seeds": [body["seed"]]}) for body in bodies]
    engine = direct_engine(args.model, args.torch_threads)
    engine.generate(plans[0])

    def service_at_once() -> None:
        seconds, jobs = asyncio.run(at_once(url, bodies))
        results.at_once_seconds.append(seconds)
        results.batch_images_at_once.extend(job["metrics"]["batch_images"] for job in jobs)

    def service_one_by_one() -> None:
        results.one_by_one_seconds.append(asyncio.run(one_by_one(url, bodies)))

    _progress(f"service: {args.rounds} round(s) of {args.jobs} jobs at once / one by one")
    _alternate(service_at_once, service_one_by_one, args.rounds)

    never: list[Callable[[int, int], bool]] = [lambda step, total: False] * len(plans)

    def direct_batch() -> None:
        started = time.perf_counter()
        for first in range(0, len(plans), args.max_batch):
            engine.generate_batch(plans[first:first + args.max_batch],
                                  never[first:first + args.max_batch])
        results.direct_batch_seconds.append(time.perf_counter() - started)

    def direct_calls() -> None:
        started = time.perf_counter()
        for plan in plans:
            engine.generate(plan)
        results.direct_calls_seconds.append(time.perf_counter() - started)

    _progress(f"direct: {args.rounds} round(s) batched / one call per job")
    _alternate(direct_batch, direct_calls, args.rounds)


def report(r: BatchingResults) -> str:
    at_once_s = statistics.median(r.at_once_seconds)
    one_by_one_s = statistics.median(r.one_by_one_seconds)
    batch_s = statistics.median(r.direct_batch_seconds)
    calls_s = statistics.median(r.direct_calls_seconds)
    sizes = sorted(set(r.batch_images_at_once))
    return "\n".join([
        (f"latentd batching gain: model {r.model}, {r.jobs} compatible jobs of {r.steps} steps "
        f"(different prompts and seeds), LATENTD_MAX_BATCH={r.max_batch}, "
        f"LATENTD_BATCH_WAIT_MS={r.wait_ms}, torch threads {r.torch_threads}, "
        f"{os.cpu_count()} CPUs; median of {len(r.at_once_seconds)} round(s), ABBA"),
        (f"  service  {r.jobs} submitted at once       {at_once_s:8.2f} s   "
        f"(images per pipeline call seen: {', '.join(map(str, sizes))})"),
        f"  service  {r.jobs} one after another       {one_by_one_s:8.2f} s",
        f"ratio  batching gain through the service     {one_by_one_s / at_once_s:.2f}x",
        f"  direct   generate_batch, {r.max_batch} a call        {batch_s:8.2f} s",
        f"  direct   {r.jobs} generate calls            {calls_s:8.2f} s",
        f"ratio  batching gain, direct (the ceiling)   {calls_s / batch_s:.2f}x",
    ])


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TINY_RANDOM,
                        help="registered model name: tiny-random (default) or emoji")
    parser.add_argument("--jobs", type=int, default=8, help="compatible jobs (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help=f"LATENTD_MAX_BATCH for the worker (default {defaults.max_batch})")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode (default 2)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads in the worker and the direct path (default 1)")
    args = parser.parse_args(argv)
    for name in ("jobs", "steps", "max_batch", "rounds", "torch_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wait_ms = Settings().batch_wait_ms
    results = BatchingResults(model=args.model, jobs=args.jobs, steps=args.steps,
                              max_batch=args.max_batch, wait_ms=wait_ms,
                              torch_threads=args.torch_threads)
    workdir = Path(tempfile.mkdtemp(prefix="latentd-bench-batching-"))
    env = {"LATENTD_DEFAULT_MODEL": args.model, "LATENTD_TORCH_THREADS": str(args.torch_threads),
           "LATENTD_MAX_BATCH": str(args.max_batch)}
    try:
        _progress("starting redis-server, the workers and the API")
        with running_service(workdir, env, node_tag="bench-batching") as service:
            measure(service.url, args, results)
    except BaseException as exc:
        outcome = "failed" if isinstance(exc, Exception) else "stopped"
        _progress(f"{outcome}; service logs kept in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    print(report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
