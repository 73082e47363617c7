"""Worker memory: what a generation worker process holds with one model loaded vs two.

    python -m bench.worker_memory [--models tiny-random,emoji]

Each row is a fresh process (so allocator history does not blur it) that loads the given
models through the worker's own path (``ModelCache`` over ``load_pipeline``, as
worker/generation_worker.py builds it), runs one step with each, and reports its resident memory the way the
heartbeat publishes it (worker/process_stats.py), beside the cache's measured model sizes.
The last row loads both, then has the budget evict one: how much of it the process gives
back. Measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def measure(models: list[str], evict_after: bool) -> dict[str, object]:
    """In this process: load ``models`` (then evict all but the last, if asked)."""
    from shared.model_registry import ModelRegistry
    from shared.settings import Settings
    from worker.model_cache import ModelCache
    from worker.pipelines import configure_torch, load_pipeline
    from worker.process_stats import resident_memory_bytes

    settings = Settings(torch_threads=1, default_model=models[0] if models else "emoji",
                        worker_models=models)
    configure_torch(settings)
    registry = ModelRegistry.from_settings(settings)
    baseline = resident_memory_bytes()
    cache = ModelCache(models, lambda name: load_pipeline(registry.get(name), settings))
    cache.preload()
    for name in models:
        # One step of one small image each: safetensors weights are memory-mapped, and a
        # page counts as resident once a run has read it, as in a worker that served a job.
        spec, model = registry.get(name), cache[name]
        model.text_to_image(prompt="a cat", num_inference_steps=1, width=spec.min_width,
                            height=spec.min_height, output_type="pil")
    loaded = resident_memory_bytes()
    sizes = {name: cache.size_of(name) or 0 for name in models}
    result: dict[str, object] = {"models": models, "baseline": baseline, "rss": loaded,
                                 "sizes": sizes}
    if evict_after and len(models) > 1:
        # A budget that fits the last model alone: using it evicts the others.
        cache.budget_bytes = sizes[models[-1]]
        with cache.use(models[-1]):
            pass
        result["after_eviction"] = resident_memory_bytes()
        result["still_loaded"] = cache.loaded
    return result


def run_child(models: list[str], evict_after: bool = False) -> dict:
    argv = [sys.executable, "-m", "bench.worker_memory", "--child", ",".join(models)]
    if evict_after:
        argv.append("--evict")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True,
                          timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny-random,emoji",
                        help="two comma-separated model names (default: tiny-random,emoji)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--evict", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure([m for m in args.child.split(",") if m], args.evict)))
        return 0

    first, second = args.models.split(",")
    rows = [("no model", run_child([])), (first, run_child([first])),
            (second, run_child([second])), (f"{first} + {second}", run_child([first, second])),
            (f"{first} + {second}, {first} evicted", run_child([first, second], True))]
    base = rows[0][1]["rss"]
    print("Generation worker process memory (each row a fresh process, torch threads 1)")
    print(f"  {'loaded':<40} {'RSS MiB':>8} {'over no model':>14} {'weights MiB':>12}")
    for label, row in rows:
        rss = row.get("after_eviction", row["rss"])
        weights = sum(size for name, size in row["sizes"].items()
                      if name in row.get("still_loaded", row["sizes"]))
        print(f"  {label:<40} {rss / MiB:8.1f} {(rss - base) / MiB:14.1f} {weights / MiB:12.1f}")
    both, evicted = rows[3][1], rows[4][1]
    print(f"  eviction gave back {(both['rss'] - evicted['after_eviction']) / MiB:.1f} MiB of "
          f"the {both['sizes'][first] / MiB:.1f} MiB of {first}'s weights "
          "(the allocator may keep freed pages for the next load)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
