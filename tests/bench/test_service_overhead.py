"""The service-overhead benchmark runs end to end at minimal sizes and prints its ratios.

Timings are never asserted: only that every measured line is there with a number.
wrk is one of the test tools (scripts/install.sh --test-tools).
"""

from __future__ import annotations

import re

from bench.service_overhead import READ_PAIRS
from tests.bench.commands import run_benchmark

NUMBER = r"\d+(?:\.\d+)?"
EXPECTED_LINES = [
    rf"^ratio +latency service/direct \(median\) +{NUMBER}x +overhead [+-]\d+ ms per job$",
    rf"^ratio +throughput service/direct +{NUMBER}x$",
    rf"^  direct +GenerationEngine\.generate +{NUMBER} s +{NUMBER} s$",
    rf"^  service +POST /v1/jobs, Prefer: wait +{NUMBER} s +{NUMBER} s$",
    r"^API  GET /v1/jobs/\{id\}: \d+ requests/s \(2 connections, .* 0 other; wrk, ",
    r"^     GET /healthz \(no Redis, for reference\): \d+ requests/s$",
    rf"^ratio +GET /v1/jobs/\{{id\}} / GET /healthz +{NUMBER}x$",
    (r"^  median of the pairs' ratios; pairs \(jobs/s : healthz/s\): "
     + ", ".join([r"\d+ : \d+"] * READ_PAIRS) + "$"),
    rf"^  client latency - worker inference +-?{NUMBER} ms +-?{NUMBER} ms$",
    rf"^  under it: GET /healthz, same client +{NUMBER} ms +{NUMBER} ms$",
    rf"^  under it: a bare Celery task +{NUMBER} ms +{NUMBER} ms$",
    rf"^  the rest \(median - both medians\) +-?{NUMBER} ms$",
    rf"^  Prefer: wait answer +{NUMBER} ms +{NUMBER} ms$",
    rf"^  SSE completed event +{NUMBER} ms +{NUMBER} ms$",
    r"^submits  POST /v1/jobs, no wait \(wrk, 2 connections\) +\d+/s$",
    r"^  \d+ sent in [\d.]+ s, 0 not 2xx, 0 socket errors$",
    rf"^  tiny-random +{NUMBER} s +\d+ MiB$",
    r"^  torch threads: 1 in the direct path and in the worker \(LATENTD_TORCH_THREADS=1;",
    r"^  same pixels from both paths: yes$",
]


def test_benchmark_prints_its_ratios() -> None:
    result = run_benchmark(
        "bench.service_overhead", "--jobs", "2", "--steps", "1", "--warmup", "1", "--rounds", "1",
        "--clients", "2", "--rps-seconds", "1", "--memory-models", "tiny-random", timeout=480)
    for pattern in EXPECTED_LINES:
        assert re.search(pattern, result.stdout, re.MULTILINE), (pattern, result.stdout)
