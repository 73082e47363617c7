"""Upscale runs: one job's input image made ``plan.scale`` times larger, tile by tile.

An input larger than the model's tile (``plan.tile``) is cut into square tiles that
overlap their neighbours; each tile is upscaled on its own, so memory stays that of one
tile however large the input, and the outputs are joined with feathered weights across
each overlap, so no seam shows where two tiles meet. Every run (image × tile) has its own
generator derived from the image's seed alone: a job re-run gives the same bytes.

Progress counts the denoising steps of all runs together; a cancel stops the current run
within a step, whichever callback the pipeline has (diffusers' upscalers still take the
old per-step ``callback``; newer pipelines ``callback_on_step_end``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from shared.schemas import JobPlan, UpscaleTiling
from worker.pipelines import LoadedModel
from worker.schedulers import make_scheduler

# on_step(step, total_steps) -> True to stop the run (the same contract as the engine's).
OnStep = Callable[[int, int], bool]
# (left, top, right, bottom) of a tile, in input pixels.
Box = tuple[int, int, int, int]
# Inputs are sized to multiples of 8 (shared.plan); tiles start on the same grid.
GRID = 8


@dataclass
class UpscaleResult:
    """The upscaled images in seed order, or where a cancel stopped the run."""

    images: list[Image.Image] = field(default_factory=list)
    canceled_at: tuple[int, int] | None = None


class _StopRun(Exception):
    """Raised from an old-style callback: the only way to leave its loop early."""


def tile_boxes(width: int, height: int, tiling: UpscaleTiling | None) -> list[Box]:
    """The tiles covering a ``width``×``height`` input, row by row; one box when untiled.

    Tiles are ``tiling.size`` squares (cut to the image on a side it does not exceed),
    neighbours overlapping by at least ``tiling.overlap``; the last of a row or column
    ends at the image's edge, so every tile has the full size.
    """
    if tiling is None:
        return [(0, 0, width, height)]
    xs = _starts(width, tiling.size, tiling.overlap)
    ys = _starts(height, tiling.size, tiling.overlap)
    return [(x, y, min(x + tiling.size, width), min(y + tiling.size, height))
            for y in ys for x in xs]


def _starts(length: int, size: int, overlap: int) -> list[int]:
    """Tile starts along one side: as few tiles as keep ``overlap``, spread evenly (so no
    pair overlaps much more than the others), on the 8-pixel grid of the input."""
    if length <= size:
        return [0]
    count = math.ceil((length - overlap) / (size - overlap))
    # Rounded up to the grid, the stride stays within size - overlap (itself on the grid).
    stride = math.ceil((length - size) / (count - 1) / GRID) * GRID
    return sorted({min(index * stride, length - size) for index in range(count)})


def tile_seed(seed: int, tile_index: int) -> int:
    """The seed of one tile of an image: from the image's seed and the tile's place only."""
    return int(np.random.SeedSequence([seed, tile_index]).generate_state(1)[0])


def feather_weights(box: Box, image_size: tuple[int, int], ramp: int) -> np.ndarray:
    """A tile's blending weight (height × width × 1): 1 inside, falling linearly towards
    each side where another tile overlaps it (a side on the image's edge stays 1), over
    ``ramp`` pixels. Never 0, so every pixel has weight."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top

    def profile(length: int, at_start: bool, at_end: bool) -> np.ndarray:
        weights = np.ones(length)
        steps = min(ramp, length // 2)
        if steps:
            rising = (np.arange(steps) + 0.5) / steps
            if not at_start:
                weights[:steps] = rising
            if not at_end:
                weights[length - steps:] = rising[::-1]
        return weights

    columns = profile(width, left == 0, right == image_size[0])
    rows = profile(height, top == 0, bottom == image_size[1])
    return (rows[:, None] * columns[None, :])[:, :, None]


def blend_tiles(
    tiles: list[tuple[Box, Image.Image]], size: tuple[int, int], ramp: int
) -> Image.Image:
    """Join upscaled tiles (boxes in output pixels) into one ``size`` image, each overlap
    a weighted mean of the tiles covering it."""
    total = np.zeros((size[1], size[0], 3))
    weight = np.zeros((size[1], size[0], 1))
    for box, tile in tiles:
        left, top, right, bottom = box
        w = feather_weights(box, size, ramp)
        total[top:bottom, left:right] += np.asarray(tile.convert("RGB"), dtype=np.float64) * w
        weight[top:bottom, left:right] += w
    return Image.fromarray(np.clip(np.rint(total / weight), 0, 255).astype(np.uint8))


class _Progress:
    """Steps of every run counted as one job: run ``index`` of ``runs``."""

    def __init__(self, on_step: OnStep, runs: int, fallback_steps: int):
        self.on_step = on_step
        self.runs = runs
        self.fallback_steps = fallback_steps
        self.index = 0
        self.canceled_at: tuple[int, int] | None = None

    def report(self, pipe: DiffusionPipeline, step_index: int) -> bool:
        per_run = _steps_of(pipe) or self.fallback_steps
        step, total = self.index * per_run + step_index + 1, self.runs * per_run
        if self.on_step(step, total) and self.canceled_at is None:
            self.canceled_at = (step, total)
        return self.canceled_at is not None


def _steps_of(pipe: DiffusionPipeline) -> int | None:
    """How many steps this run really takes (second-order samplers take about twice)."""
    steps = getattr(pipe, "_num_timesteps", None)
    if steps:
        return int(steps)
    scheduler = getattr(pipe, "scheduler", None)
    timesteps = getattr(scheduler, "timesteps", None)
    return len(timesteps) if timesteps is not None else None


def upscale(
    model: LoadedModel, plan: JobPlan, image: Image.Image, on_step: OnStep
) -> UpscaleResult:
    """Upscale ``image`` once per seed of ``plan``; the caller holds the model's lock."""
    pipe = model.pipeline_for(plan.task)
    assert pipe is not None and plan.scale is not None
    scale = plan.scale
    boxes = tile_boxes(image.width, image.height, plan.tile)
    progress = _Progress(on_step, runs=len(plan.seeds) * len(boxes), fallback_steps=plan.steps)
    # A full cross-fade: across an overlap one tile fades out as its neighbour fades in.
    ramp = (plan.tile.overlap if plan.tile else 0) * scale
    result = UpscaleResult()
    for seed in plan.seeds:
        tiles = []
        for index, box in enumerate(boxes):
            # An untiled run uses the image's seed itself, as the pipeline alone would.
            run_seed = seed if len(boxes) == 1 else tile_seed(seed, index)
            generator = torch.Generator(model.device).manual_seed(run_seed)
            tile = _run(pipe, model, plan, image.crop(box), generator, progress)
            if progress.canceled_at is not None:
                result.canceled_at = progress.canceled_at
                return result
            expected = ((box[2] - box[0]) * scale, (box[3] - box[1]) * scale)
            if tile.size != expected:
                raise ValueError(f"model '{plan.model}' returned a {tile.size[0]}x"
                                 f"{tile.size[1]} tile, {expected[0]}x{expected[1]} expected")
            left, top, right, bottom = box
            tiles.append(((left * scale, top * scale, right * scale, bottom * scale), tile))
            progress.index += 1
        if len(tiles) == 1:
            result.images.append(tiles[0][1])
        else:
            result.images.append(blend_tiles(tiles, (plan.width, plan.height), ramp))
    return result


def _run(
    pipe: DiffusionPipeline, model: LoadedModel, plan: JobPlan, tile: Image.Image,
    generator: torch.Generator, progress: _Progress,
) -> Image.Image:
    """One pipeline call on one tile, with a fresh scheduler and the progress callback."""
    accepted = inspect.signature(pipe.__call__).parameters
    if isinstance(getattr(pipe, "scheduler", None), SchedulerMixin):
        pipe.scheduler = make_scheduler(plan.scheduler, model.scheduler_config)
    kwargs: dict[str, Any] = {
        "prompt": plan.prompt,
        "image": tile,
        "num_inference_steps": plan.steps,
        "generator": [generator],
        "output_type": "pil",
    }
    if "guidance_scale" in accepted:
        kwargs["guidance_scale"] = plan.guidance_scale
    if plan.noise_level is not None:
        kwargs["noise_level"] = plan.noise_level
    if plan.negative_prompt is not None:
        kwargs["negative_prompt"] = plan.negative_prompt
    if "callback_on_step_end" in accepted:
        def on_step_end(pipe: DiffusionPipeline, step_index: int, timestep: Any,
                        callback_kwargs: dict) -> dict:
            if progress.report(pipe, step_index):
                pipe._interrupt = True  # the remaining steps are skipped
            return callback_kwargs

        kwargs["callback_on_step_end"] = on_step_end
    else:
        def on_step_old(step_index: int, timestep: Any, latents: torch.Tensor) -> None:
            if progress.report(pipe, step_index):
                raise _StopRun

        kwargs.update(callback=on_step_old, callback_steps=1)
    try:
        output = pipe(**kwargs)
    except _StopRun:
        return tile  # canceled: the caller reads progress.canceled_at and drops it
    return output.images[0]
