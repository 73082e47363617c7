"""The GPU benchmark runs end to end where there is no GPU (tiny configs on the CPU) and
says so; its figures are never asserted, only that every line is there with a number."""

from __future__ import annotations

import re

import torch

from tests.bench.commands import run_benchmark

NUMBER = r"\d+(?:\.\d+)?"
EXPECTED_LINES = [
    r"^  NOT A GPU RUN: tiny configs on the CPU",
    (r"^  published reference \(stable-fast's README\): SD 1\.5 on an H100, fp16, batch 1, "
    r"512x512: 54\.5 it/s plain diffusers, 66 it/s compiled$"),
    r"^sd15 \(StableDiffusionPipeline\), 64x64, batch 1$",
    rf"^  plain diffusers pipe\(prompt\) +{NUMBER} it/s$",
    rf"^  service engine, fast path +{NUMBER} it/s +\({NUMBER}x plain\)$",
    rf"^  batching gain at 2: {NUMBER} -> {NUMBER} images/s \({NUMBER}x\)$",
    (rf"^  end to end, 2 jobs at once: service {NUMBER} images/s \(batching on\) vs direct "
    rf"{NUMBER} \(one engine call per job\) \({NUMBER}x\)$"),
    r"^sdxl \(StableDiffusionXLPipeline\), 64x64, batch 1$",
]


def test_the_gpu_benchmark_runs_tiny_on_the_cpu_and_says_so() -> None:
    result = run_benchmark(
        "bench.gpu", "--tiny", "--steps", "2", "--batches", "2", "--service-jobs", "2", timeout=400)
    for pattern in EXPECTED_LINES:
        assert re.search(pattern, result.stdout, re.MULTILINE), (pattern, result.stdout)
    if not torch.cuda.is_available():
        assert "skipping torch.compile" in result.stderr
