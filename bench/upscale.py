"""Upscale cost: the pipeline called directly vs the engine's upscale in one piece vs tiled.

    .venv/bin/python -m bench.upscale                          # emoji-upscaler, 64 px input
    .venv/bin/python -m bench.upscale --size 128 --tile 64 --overlap 16
    .venv/bin/python -m bench.upscale --model tiny-x4          # random weights, built here

Runs the same input and seed through each mode, alternating round by round so machine noise
hits all alike, and prints the median seconds per upscale job of each, the ratios engine /
direct (what the engine adds around one call) and tiled / one piece (the tile overhead:
overlapping pixels computed twice, and one call per tile), and how far the tiled output is
from the one-piece output. Measured, never asserted.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.model_registry import BUILTIN_MODELS, EMOJI_UPSCALER, ModelSpec, family_defaults
from shared.plan import plan_job
from shared.schemas import GenerationRequest
from shared.settings import Settings
from worker.engine import GenerationEngine
from worker.pipelines import load_pipeline
from worker.upscale import tile_boxes

TINY_X4 = "tiny-x4"


def _spec(name: str, workdir: Path) -> ModelSpec:
    if name == TINY_X4:
        from tests.upscalers import build_tiny_x4_upscaler  # test helper: random weights

        folder = workdir / TINY_X4
        build_tiny_x4_upscaler().save_pretrained(folder)
        return ModelSpec(name=name, source=str(folder), **family_defaults(str(folder)))
    return BUILTIN_MODELS[name]


def _input(size: int) -> Image.Image:
    """A smooth, colourful input (a seam would show against it)."""
    x = np.linspace(0, 1, size)
    r = np.outer(np.ones(size), x)
    g = np.outer(x, np.ones(size))
    b = 0.5 + 0.5 * np.sin(6 * r) * np.cos(6 * g)
    return Image.fromarray((np.stack([r, g, b], axis=2) * 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMOJI_UPSCALER, help=f"{EMOJI_UPSCALER} or {TINY_X4}")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--tile", type=int, default=32, help="tile side of the tiled mode")
    parser.add_argument("--overlap", type=int, default=8, help="tile overlap of the tiled mode")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-upscale-"))
    spec = _spec(args.model, workdir)
    whole = spec.model_copy(update={"tile_size": None})
    tiled = spec.model_copy(update={"tile_size": args.tile, "tile_overlap": args.overlap})
    loaded = load_pipeline(whole, Settings(torch_threads=args.torch_threads))
    engine = GenerationEngine({spec.name: loaded})
    image = _input(args.size)
    request = GenerationRequest(task="upscale", model=spec.name, init_image="-",
                                steps=args.steps, seed=1)
    plans = {name: plan_job(request, s, init_size=image.size, random_seed=0).plan
             for name, s in (("one piece", whole), ("tiled", tiled))}
    tiles = len(tile_boxes(args.size, args.size, plans["tiled"].tile))
    pipe = loaded.upscale
    assert pipe is not None

    def direct() -> Image.Image:
        plan = plans["one piece"]
        kwargs: dict = {"noise_level": plan.noise_level} if plan.noise_level is not None else {}
        if "guidance_scale" in inspect.signature(pipe.__call__).parameters:
            kwargs["guidance_scale"] = plan.guidance_scale
        return pipe(prompt=plan.prompt, image=image, num_inference_steps=plan.steps,
                    generator=[torch.Generator().manual_seed(1)], output_type="pil",
                    **kwargs).images[0]

    runs = {"direct": direct,
            "one piece": lambda: engine.generate(plans["one piece"], image)[0].image,
            "tiled": lambda: engine.generate(plans["tiled"], image)[0].image}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, Image.Image] = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    out = outputs["tiled"].size
    print(f"model {spec.name}, input {args.size}x{args.size} -> {out[0]}x{out[1]}, "
          f"{plans['tiled'].steps} steps, torch threads {args.torch_threads}, "
          f"{args.rounds} rounds")
    for name, value in median.items():
        extra = f" ({tiles} tiles of {args.tile}px, overlap {args.overlap}px)" \
            if name == "tiled" else ""
        print(f"  {name:<10} {value:7.3f} s per job{extra}")
    print(f"  engine / direct     {median['one piece'] / median['direct']:.2f}x")
    print(f"  tiled / one piece   {median['tiled'] / median['one piece']:.2f}x "
          f"(pixels computed: {tiles * args.tile ** 2 / args.size ** 2:.2f}x)")
    a, b = (np.asarray(outputs[n], dtype=np.float64) for n in ("one piece", "tiled"))
    print(f"  tiled vs one piece: mean |difference| {np.abs(a - b).mean():.1f} / 255")
    same = np.array_equal(np.asarray(outputs["direct"]), np.asarray(outputs["one piece"]))
    print(f"  engine one piece == direct pipeline call: {same}")


if __name__ == "__main__":
    main()
