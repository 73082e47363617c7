"""The generation engine: one job's parameters in, images with their seeds out.

Reads like a diffusers pipeline: ``check_inputs`` rejects what cannot run, then numbered
steps. Progress and cancellation go through ``callback_on_step_end``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from shared.schemas import SCHEDULERS, JobParams, Task
from worker.images import outpaint_canvas
from worker.pipelines import LoadedModel
from worker.schedulers import make_scheduler

# on_step(step, total_steps) -> True to stop the run (the job's cancel flag is set).
OnStep = Callable[[int, int], bool]

# Outpainting starts the new area from stretched edge pixels, which should not survive:
# the masked area is fully re-noised whatever strength the request carries.
OUTPAINT_STRENGTH = 1.0

_IMAGE_TASKS = (Task.IMAGE_TO_IMAGE, Task.INPAINT, Task.OUTPAINT)


class GenerationCanceled(Exception):
    """The job's cancel flag stopped the run after ``step`` of ``total_steps``."""

    def __init__(self, step: int, total_steps: int):
        super().__init__(f"canceled after step {step} of {total_steps}")
        self.step = step
        self.total_steps = total_steps


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image
    seed: int


def _never_cancel(step: int, total_steps: int) -> bool:
    return False


class _StepCallback:
    """``callback_on_step_end`` for one run: reports each step, interrupts on request."""

    def __init__(self, on_step: OnStep, fallback_total: int):
        self.on_step = on_step
        self.fallback_total = fallback_total
        self.canceled_at: tuple[int, int] | None = None

    def __call__(
        self, pipe: DiffusionPipeline, step_index: int, timestep: Any, callback_kwargs: dict
    ) -> dict:
        # num_timesteps is what the loop really runs: steps * strength for image tasks,
        # about twice the steps for second-order samplers such as Heun.
        total = getattr(pipe, "_num_timesteps", None) or self.fallback_total
        step = step_index + 1
        if self.on_step(step, total) and self.canceled_at is None:
            self.canceled_at = (step, total)
            # diffusers skips the remaining denoising steps once this is set.
            pipe._interrupt = True
        return callback_kwargs


class GenerationEngine:
    """Runs jobs on already-loaded models (one process holds one engine)."""

    def __init__(self, models: dict[str, LoadedModel]):
        self.models = models
        # A model's pipeline objects are shared by every job; runs take turns so one job's
        # scheduler and interrupt flag are never another's.
        self._lock = threading.Lock()

    def check_inputs(
        self, params: JobParams, init_image: Image.Image | None, mask_image: Image.Image | None
    ) -> None:
        """Raise ``ValueError`` naming the argument for anything this engine cannot run."""
        model = self.models.get(params.model)
        if model is None:
            served = ", ".join(sorted(self.models)) or "none"
            raise ValueError(f"model '{params.model}' is not loaded here (serving: {served})")
        if model.pipeline_for(params.task) is None:
            raise ValueError(f"task '{params.task.value}' is not supported by model '{params.model}'")
        if params.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}")
        for name in ("width", "height"):
            value = getattr(params, name)
            if value < 8 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value}")
        if params.steps < 1:
            raise ValueError(f"steps must be at least 1, got {params.steps}")
        if params.num_images < 1 or len(params.seeds) != params.num_images:
            raise ValueError(
                f"seeds must hold one seed per image ({params.num_images}), got {len(params.seeds)}"
            )
        if params.task in _IMAGE_TASKS and init_image is None:
            raise ValueError(f"init_image is required for task '{params.task.value}'")
        if params.task is Task.INPAINT and mask_image is None:
            raise ValueError("mask_image is required for task 'inpaint'")
        partial_denoise = params.task in (Task.IMAGE_TO_IMAGE, Task.INPAINT)
        if partial_denoise and int(params.steps * params.strength) < 1:
            raise ValueError(
                f"strength {params.strength} leaves no denoising steps out of {params.steps}"
            )
        if params.task is Task.OUTPAINT:
            margins = params.outpaint
            if margins is None or not any((margins.left, margins.right, margins.top, margins.bottom)):
                raise ValueError("outpaint needs at least one non-zero margin")
            if params.width <= margins.left + margins.right or params.height <= (
                margins.top + margins.bottom
            ):
                raise ValueError("outpaint margins must leave room for the init image in width/height")

    def generate(
        self,
        params: JobParams,
        init_image: Image.Image | None = None,
        mask_image: Image.Image | None = None,
        on_step: OnStep | None = None,
    ) -> list[GeneratedImage]:
        """Run one job; raises ``GenerationCanceled`` if ``on_step`` asked to stop."""
        # 1. Check inputs
        self.check_inputs(params, init_image, mask_image)
        model = self.models[params.model]
        pipe = model.pipeline_for(params.task)
        assert pipe is not None  # check_inputs guarantees it

        # 2. Prepare the task's images (sized to the output)
        task_kwargs = self._task_inputs(params, init_image, mask_image)

        # 3. One generator per image: image i depends on seeds[i] alone, so a job re-run
        #    or a single image re-requested with its seed comes out the same.
        generators = [torch.Generator(model.device).manual_seed(seed) for seed in params.seeds]

        # 4. Denoise with a fresh scheduler, reporting progress and honouring cancellation
        callback = _StepCallback(on_step or _never_cancel, fallback_total=params.steps)
        call_kwargs = {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance_scale,
            "num_images_per_prompt": params.num_images,
            "generator": generators,
            "callback_on_step_end": callback,
            "output_type": "pil",
            **task_kwargs,
        }
        with self._lock:
            pipe.scheduler = make_scheduler(params.scheduler, model.scheduler_config)
            output = pipe(**_accepted_kwargs(pipe, call_kwargs))

        # 5. Stop here if the job was canceled mid-run (the partial images are dropped)
        if callback.canceled_at is not None:
            raise GenerationCanceled(*callback.canceled_at)

        # 6. Pair each image with its seed
        return [
            GeneratedImage(image=image, seed=seed)
            for image, seed in zip(output.images, params.seeds, strict=True)
        ]

    def _task_inputs(
        self, params: JobParams, init_image: Image.Image | None, mask_image: Image.Image | None
    ) -> dict[str, Any]:
        size = (params.width, params.height)
        if params.task is Task.TEXT_TO_IMAGE:
            return {"width": params.width, "height": params.height}
        assert init_image is not None
        if params.task is Task.IMAGE_TO_IMAGE:
            return {"image": _fit(init_image.convert("RGB"), size), "strength": params.strength}
        if params.task is Task.INPAINT:
            assert mask_image is not None
            return {
                "image": _fit(init_image.convert("RGB"), size),
                # Nearest keeps the mask's edge hard; white = repaint.
                "mask_image": mask_image.convert("L").resize(size, Image.Resampling.NEAREST),
                "width": params.width,
                "height": params.height,
                "strength": params.strength,
            }
        assert params.outpaint is not None
        canvas, mask = outpaint_canvas(init_image.convert("RGB"), params.outpaint, size)
        return {
            "image": canvas,
            "mask_image": mask,
            "width": params.width,
            "height": params.height,
            "strength": OUTPAINT_STRENGTH,
        }


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def _accepted_kwargs(pipe: DiffusionPipeline, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop a negative prompt the pipeline has no parameter for (e.g. guidance-distilled
    models) instead of failing the job; everything else every supported pipeline takes."""
    if "negative_prompt" not in inspect.signature(pipe.__call__).parameters:
        kwargs = {key: value for key, value in kwargs.items() if key != "negative_prompt"}
    return kwargs
