"""What a LoRA and a ControlNet cost a job, measured side by side through the engine.

    python -m bench.adapters [--model-dir DIR --lora FILE --controlnet DIR] [--rounds 5]

Without a model directory it runs tiny-random with a tiny PEFT LoRA and a tiny
ControlNet built in code (the test suite's). Each round runs the same job four ways,
interleaved so machine noise hits all alike: plain, with the LoRA, with the ControlNet,
with both; then prints the medians and their ratios to plain, and the one-off cost of
each adapter's first use: a LoRA's loads its file; a ControlNet is loaded with the model,
as a worker does at start (timed on its own), and its first job derives its pipeline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from shared.adapters import Adapters
from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM, ModelSpec
from shared.plan import plan_job
from shared.schemas import GenerationRequest, JobPlan
from shared.settings import Settings
from worker.engine import GenerationEngine
from worker.pipelines import load_pipeline

LORA = "bench-lora"
CONTROLNET = "bench-controlnet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a diffusers folder (default: tiny-random)")
    parser.add_argument("--lora", type=Path, help="a LoRA .safetensors file for that model")
    parser.add_argument("--controlnet", type=Path, help="a ControlNetModel folder for it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    if args.model_dir and not (args.lora and args.controlnet):
        parser.error("--model-dir needs --lora and --controlnet made for it")
    torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as scratch:
        lora_dir = Path(scratch) / "loras"
        lora_dir.mkdir()
        if args.model_dir:
            spec = ModelSpec(name="bench", source=str(args.model_dir),
                             default_width=args.size, default_height=args.size)
            (lora_dir / f"{LORA}.safetensors").symlink_to(args.lora.resolve())
            controlnet = args.controlnet
        else:
            from tests.adapter_weights import save_tiny_controlnet, save_tiny_lora

            spec = BUILTIN_MODELS[TINY_RANDOM]
            save_tiny_lora(lora_dir, LORA, seed=1)
            controlnet = save_tiny_controlnet(Path(scratch) / CONTROLNET)
        adapters = Adapters.from_sources(lora_dir, {CONTROLNET: str(controlnet)})
        settings = Settings(device=args.device, torch_threads=args.torch_threads)
        engine = GenerationEngine({spec.name: load_pipeline(spec, settings)}, adapters)
        run_rounds(engine, spec, adapters, args)


def run_rounds(engine: GenerationEngine, spec: ModelSpec, adapters: Adapters,
               args: argparse.Namespace) -> None:
    image = Image.new("RGB", (args.size, args.size), "white")
    image.paste((0, 0, 0), (args.size // 4, args.size // 4, args.size // 2, args.size // 2))
    lora = [{"name": LORA, "scale": 1.0}]
    control = [{"model": CONTROLNET, "image": "decoded below"}]
    modes = {
        "plain": ({}, None),
        "LoRA": ({"loras": lora}, None),
        "ControlNet": ({"control": control}, [image]),
        "LoRA + ControlNet": ({"loras": lora, "control": control}, [image]),
    }
    plans = {name: plan(spec, adapters, args, fields) for name, (fields, _) in modes.items()}

    def timed(name: str) -> float:
        started = time.perf_counter()
        engine.generate(plans[name], control_images=modes[name][1])
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    started = time.perf_counter()
    engine.controlnets.preload(engine.models.values())  # as the worker does at start
    preload_seconds = time.perf_counter() - started
    timed("plain")  # warm-up: first-call allocations belong to no mode
    # Plain jobs before any LoRA is loaded: afterwards the model's layers carry the
    # (switched-off) adapters, which plain jobs then pass through.
    pristine = [timed("plain") for _ in range(args.rounds)]
    first_use = {name: timed(name) for name in ("LoRA", "ControlNet")}
    timings: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name in modes:
            timings[name].append(timed(name))
    plain = statistics.median(timings["plain"])
    print(f"{spec.name}: {args.size}x{args.size}, {args.steps} steps, {args.rounds} rounds, "
          f"torch threads {args.torch_threads}, {args.device}")
    rows = [("plain, no LoRA loaded yet", statistics.median(pristine))]
    rows += [(name, statistics.median(values)) for name, values in timings.items()]
    for name, seconds in rows:
        print(f"  {name:<26} median {seconds:.3f} s   ratio to plain {seconds / plain:.2f}x")
    once = {"first LoRA job": (first_use["LoRA"], "loads the LoRA file"),
            "ControlNet load at start": (preload_seconds, "with the model, before any job"),
            "first ControlNet job": (first_use["ControlNet"], "derives its pipeline")}
    for name, (seconds, why) in once.items():
        print(f"  {name:<26} once   {seconds:.3f} s   ratio to plain {seconds / plain:.2f}x "
              f"({why}; once per worker process)")


def plan(spec: ModelSpec, adapters: Adapters, args: argparse.Namespace, fields: dict) -> JobPlan:
    request = GenerationRequest.model_validate({
        "prompt": "a lighthouse", "seed": 3, "steps": args.steps, "width": args.size,
        "height": args.size, **fields})
    return plan_job(request, spec, init_size=None, random_seed=0, adapters=adapters).plan


if __name__ == "__main__":
    main()
