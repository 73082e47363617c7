"""Seconds per text-to-video job, side by side: the tiny random-weight AnimateDiff run and
encoded in-process (direct: engine + ``store_video``) and sent through the running service
(HTTP → Redis → Celery worker → storage → HTTP, the video fetched), interleaved job by job
so machine noise hits both alike.

    python -m bench.video [--jobs N] [--frames F] [--size PX] [--steps S]

Prints medians per output format and the service/direct ratio; measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from scripts.service_processes import running_service
from shared.model_registry import ModelSpec, family_defaults
from shared.schemas import JobPlan
from shared.settings import Settings
from shared.storage import LocalStorage, Storage
from worker.engine import GenerationEngine
from worker.pipelines import load_pipeline
from worker.video import build_tiny_animatediff_pipeline, store_video

MODEL = "tiny-video"
FORMATS = ("mp4", "webp", "gif")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="latentd-bench-video-") as tmp:
        root = Path(tmp)
        folder = root / "tiny-animatediff"
        build_tiny_animatediff_pipeline().save_pretrained(folder)
        bounds = {"min_width": 32, "min_height": 32, "default_width": args.size,
                  "default_height": args.size}
        spec = ModelSpec(name=MODEL, source=str(folder),
                         **{**family_defaults(str(folder)), **bounds})
        engine = GenerationEngine({MODEL: load_pipeline(spec, Settings(torch_threads=1))})
        storage = LocalStorage(root / "direct")
        env = {"LATENTD_MODELS": json.dumps({MODEL: {"source": str(folder), **bounds}}),
               "LATENTD_DEFAULT_MODEL": MODEL, "LATENTD_WORKER_MODELS": MODEL}
        body = {"task": "text-to-video", "model": MODEL, "prompt": "a fox running",
                "num_frames": args.frames, "fps": 8, "steps": args.steps,
                "width": args.size, "height": args.size}
        timings: dict[tuple[str, str], list[float]] = {}
        (root / "service").mkdir()
        with running_service(root / "service", env) as service, \
                httpx.Client(base_url=service.url, timeout=60) as client:
            for job in range(args.jobs + 1):  # job 0 warms both paths up, uncounted
                for fmt in FORMATS:
                    request = {**body, "output_format": fmt, "seed": job}
                    direct = _direct(engine, storage, request, job)
                    served = _served(client, request)
                    if job:
                        timings.setdefault((fmt, "direct"), []).append(direct)
                        timings.setdefault((fmt, "service"), []).append(served)
    print(f"text-to-video, tiny AnimateDiff, {args.frames} frames of {args.size}x{args.size}, "
          f"{args.steps} steps, {args.jobs} jobs per format, 1 torch thread")
    print(f"{'format':8} {'direct s':>10} {'service s':>10} {'ratio':>7}")
    for fmt in FORMATS:
        direct = statistics.median(timings[(fmt, "direct")])
        served = statistics.median(timings[(fmt, "service")])
        print(f"{fmt:8} {direct:10.3f} {served:10.3f} {served / direct:7.2f}")


def _direct(engine: GenerationEngine, storage: Storage, request: dict, seed: int) -> float:
    plan = JobPlan.model_validate({
        "task": "text-to-video", "model": MODEL, "prompt": request["prompt"],
        "negative_prompt": None, "width": request["width"], "height": request["height"],
        "num_images": 1, "steps": request["steps"], "guidance_scale": 7.5, "scheduler": "ddim",
        "seeds": [seed], "strength": None, "outpaint": None,
        "num_frames": request["num_frames"], "fps": request["fps"],
        "output_format": request["output_format"], "priority": "normal", "webhook": None,
    })
    started = time.perf_counter()
    result = engine.generate(plan)[0]
    store_video(storage, "job_bench", 0, plan, result)
    return time.perf_counter() - started


def _served(client: httpx.Client, request: dict) -> float:
    started = time.perf_counter()
    job = client.post("/v1/jobs", json=request, headers={"Prefer": "wait=60"}).json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    client.get(job["images"][0]["url"]).raise_for_status()
    return time.perf_counter() - started


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs per format (default 5)")
    parser.add_argument("--frames", type=int, default=4, help="frames per video (default 4)")
    parser.add_argument("--size", type=int, default=32, help="width = height (default 32)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (default 2)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
