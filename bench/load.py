"""Load: many clients under two API keys submit and follow jobs on a running service.

    python -m bench.load [--clients 50] [--jobs-per-client 10] [--steps 1]

Starts its own service (scripts/service_processes.py), makes two API keys, then has every
client submit its jobs one after another with ``Prefer: wait`` and poll any still going.
Prints what was accepted, every error by status, API latency (p50/p99 of each request)
and whether every job reached a terminal state. Measured, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from scripts.service_processes import running_service
from shared.api_keys import ApiKeyStore

TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)
    transport_errors: int = 0


async def timed(tally: Tally, request) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await request
    except httpx.TransportError:
        tally.transport_errors += 1
        return None
    tally.latencies.append(time.perf_counter() - started)
    tally.statuses[response.status_code] += 1
    return response


async def client_run(http: httpx.AsyncClient, key: str, jobs: int, steps: int,
                     tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {key}", "Prefer": "wait=30"}
    for n in range(jobs):
        body = {"prompt": f"load {n}", "steps": steps}
        response = await timed(tally, http.post("/v1/jobs", json=body, headers=headers))
        if response is not None and response.status_code in (200, 202):
            tally.accepted.append(response.json()["id"])


async def drive(url: str, keys: Sequence[str], clients: int, jobs: int, steps: int) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client_run(http, keys[i % len(keys)], jobs, steps, tally)
                               for i in range(clients)))
    return tally


def final_states(url: str, keys: Sequence[str], ids: list[str], timeout: float) -> Counter[str]:
    """Each accepted job's status, waiting up to ``timeout`` s for all to end."""
    deadline = time.monotonic() + timeout
    states: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=30) as http:
        for job_id in ids:
            while True:
                status = "missing"
                for key in keys:  # a job is visible to its own key only
                    response = http.get(f"/v1/jobs/{job_id}",
                                        headers={"Authorization": f"Bearer {key}"})
                    if response.status_code == 200:
                        status = response.json()["status"]
                        break
                if status in TERMINAL or status == "missing" or time.monotonic() > deadline:
                    states[status] += 1
                    break
                time.sleep(0.2)
    return states


def p50_p99(values: list[float]) -> tuple[float, float]:
    """The median and 99th percentile (``statistics.quantiles``, inclusive); 0 for none."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs-per-client", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--settle-seconds", type=float, default=300,
                        help="how long to wait for the last jobs to end")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as workdir, running_service(
        Path(workdir), {"LATENTD_MAX_STREAMS_PER_KEY": str(args.clients)}
    ) as service:
        store = ApiKeyStore(redis.Redis.from_url(service.redis_url, decode_responses=True))
        keys = [store.create(name)[1] for name in ("load-a", "load-b")]
        started = time.perf_counter()
        tally = asyncio.run(drive(service.url, keys, args.clients, args.jobs_per_client,
                                  args.steps))
        submit_seconds = time.perf_counter() - started
        states = final_states(service.url, keys, tally.accepted, args.settle_seconds)

    sent = args.clients * args.jobs_per_client
    errors = {status: n for status, n in sorted(tally.statuses.items()) if status >= 400}
    print(f"load: {args.clients} clients x {args.jobs_per_client} jobs, 2 keys, "
          f"tiny-random {args.steps} step(s); one run on this machine")
    print(f"  accepted        {len(tally.accepted)} of {sent} in {submit_seconds:.1f} s "
          f"({len(tally.accepted) / submit_seconds:.1f} jobs/s)")
    print(f"  errors          {sum(errors.values())} {errors or ''} "
          f"transport errors {tally.transport_errors}")
    p50, p99 = p50_p99(tally.latencies)
    print(f"  API latency     p50 {p50 * 1000:.0f} ms  "
          f"p99 {p99 * 1000:.0f} ms  (POST with Prefer: wait=30)")
    terminal = sum(n for status, n in states.items() if status in TERMINAL)
    print(f"  terminal        {terminal} of {len(tally.accepted)} {dict(states)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
