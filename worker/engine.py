"""The generation engine: one job's plan in, images with their seeds out.

Reads like a diffusers pipeline: ``check_inputs`` rejects what only a worker can know
cannot run (the request itself was planned and checked at submit, ``shared.plan``), then
numbered steps that run exactly what the plan says. Progress and cancellation go through
``callback_on_step_end``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from shared.adapters import Adapters
from shared.batching import batch_signature
from shared.schemas import VIDEO_TASKS, JobPlan, Task
from worker.adapters import LoraAdapters
from worker.control import ControlNets, control_kwargs
from worker.images import outpaint_canvas
from worker.pipelines import LoadedModel
from worker.schedulers import make_scheduler
from worker.upscale import upscale

# on_step(step, total_steps) -> True to stop the run (the job's cancel flag is set).
OnStep = Callable[[int, int], bool]

_IMAGE_TASKS = (Task.IMAGE_TO_IMAGE, Task.INPAINT, Task.OUTPAINT, Task.UPSCALE)


class GenerationCanceled(Exception):
    """The job's cancel flag stopped the run after ``step`` of ``total_steps``."""

    def __init__(self, step: int, total_steps: int):
        super().__init__(f"canceled after step {step} of {total_steps}")
        self.step = step
        self.total_steps = total_steps


@dataclass(frozen=True)
class GeneratedImage:
    """An output image; for a video, its first frame (the poster) and all its frames."""

    image: Image.Image
    seed: int
    frames: list[Image.Image] | None = None


def _never_cancel(step: int, total_steps: int) -> bool:
    return False


class _StepCallback:
    """``callback_on_step_end`` for one run: reports each step, interrupts on request.

    A base → refiner job is one run in two stages: the base stage reports its steps plus
    the steps left to the refiner (``later_stage``), the refiner stage counts on from the
    base's last step (``done_before``), so one progress bar covers both.
    """

    def __init__(self, on_step: OnStep, fallback_total: int, later_stage: bool = False):
        self.on_step = on_step
        self.fallback_total = fallback_total
        self.later_stage = later_stage
        self.done_before = 0
        self.last_step = 0
        self.canceled_at: tuple[int, int] | None = None

    def next_stage(self) -> None:
        """The refiner stage begins: count on from the base's steps."""
        self.done_before, self.later_stage = self.last_step, False

    def __call__(
        self, pipe: DiffusionPipeline, step_index: int, timestep: Any, callback_kwargs: dict
    ) -> dict:
        # num_timesteps is what the loop really runs: steps * strength for image tasks,
        # about twice the steps for second-order samplers such as Heun.
        total = getattr(pipe, "_num_timesteps", None) or self.fallback_total
        if self.later_stage:
            # The base stops at denoising_end: the refiner runs the rest of the schedule.
            total = max(total, len(getattr(pipe.scheduler, "timesteps", ())))
        step = self.done_before + step_index + 1
        total += self.done_before
        self.last_step = step
        if self.on_step(step, total) and self.canceled_at is None:
            self.canceled_at = (step, total)
            # diffusers skips the remaining denoising steps once this is set.
            pipe._interrupt = True
        return callback_kwargs


class _BatchStepCallback:
    """``callback_on_step_end`` for a batch: reports each step to every job still in it; a
    job asking to stop leaves the batch (its images are dropped at the end) while the
    others go on; the run is interrupted only once every job has stopped."""

    def __init__(self, on_steps: list[OnStep], fallback_total: int):
        self.on_steps = on_steps
        self.fallback_total = fallback_total
        self.stopped_at: list[tuple[int, int] | None] = [None] * len(on_steps)

    def __call__(
        self, pipe: DiffusionPipeline, step_index: int, timestep: Any, callback_kwargs: dict
    ) -> dict:
        total = getattr(pipe, "_num_timesteps", None) or self.fallback_total
        step = step_index + 1
        for index, on_step in enumerate(self.on_steps):
            if self.stopped_at[index] is None and on_step(step, total):
                self.stopped_at[index] = (step, total)
        if all(stopped is not None for stopped in self.stopped_at):
            pipe._interrupt = True
        return callback_kwargs


class GenerationEngine:
    """Runs jobs on already-loaded models (one process holds one engine)."""

    def __init__(self, models: Mapping[str, LoadedModel], adapters: Adapters | None = None):
        # The models loaded now: a plain dict, or the worker's ModelCache (whose ``use``
        # the caller holds around ``generate`` so the model is loaded and stays).
        self.models = models
        adapters = adapters or Adapters()
        # LoRA and ControlNet weights: loaded on first use, kept for the process's life.
        self.loras = LoraAdapters(adapters.loras)
        self.controlnets = ControlNets(adapters.controlnets)
        # A model's pipeline objects are shared by every job; runs take turns so one job's
        # scheduler and interrupt flag are never another's.
        self._lock = threading.Lock()

    def check_inputs(
        self, plan: JobPlan, init_image: Image.Image | None, mask_image: Image.Image | None,
        control_images: list[Image.Image] | None = None,
    ) -> None:
        """Raise ``ValueError`` naming the argument for what this worker cannot run."""
        model = self.models.get(plan.model)
        if model is None:
            served = ", ".join(sorted(self.models)) or "none"
            raise ValueError(f"model '{plan.model}' is not loaded here (serving: {served})")
        pipe = model.pipeline_for(plan.task)
        if pipe is None:
            raise ValueError(f"task '{plan.task.value}' is not supported by model '{plan.model}'")
        # The plan drops negative prompts for models registered without classifier-free
        # guidance; a pipeline that has no such parameter means the registration is wrong.
        if plan.negative_prompt is not None and not _takes(pipe, "negative_prompt"):
            raise ValueError(
                f"negative_prompt: model '{plan.model}' ({type(pipe).__name__}) takes none; "
                "register it with \"guidance\": \"distilled\" in LATENTD_MODELS"
            )
        if plan.true_cfg_scale is not None and not _takes(pipe, "true_cfg_scale"):
            raise ValueError(f"true_cfg_scale: model '{plan.model}' ({type(pipe).__name__}) "
                             "has no true CFG")
        if plan.refiner is not None and plan.refiner.model not in self.models:
            served = ", ".join(sorted(self.models))
            raise ValueError(f"refiner: model '{plan.refiner.model}' is not loaded here "
                             f"(serving: {served}); serve it with the base model")
        if plan.task in VIDEO_TASKS and (plan.num_frames is None or plan.fps is None):
            raise ValueError("num_frames and fps: a video plan needs both")
        expected = _input_size(plan)
        for name, image in (("init_image", init_image), ("mask_image", mask_image)):
            needed = plan.task in _IMAGE_TASKS if name == "init_image" else (
                plan.task is Task.INPAINT)
            if needed and image is None:
                raise ValueError(f"{name} is required for task '{plan.task.value}'")
            if image is not None and image.size != expected:
                raise ValueError(
                    f"{name} is {image.size[0]}x{image.size[1]}, the plan says "
                    f"{expected[0]}x{expected[1]}"
                )
        self.loras.check(plan.loras)
        controls = control_images or []
        if len(controls) != len(plan.control):
            raise ValueError(f"control: the plan has {len(plan.control)} ControlNet(s) and "
                             f"{len(controls)} control image(s)")
        self.controlnets.check(model, plan.control)
        for index, image in enumerate(controls):
            if image.size != (plan.width, plan.height):
                raise ValueError(f"control.{index}.image is {image.size[0]}x{image.size[1]}, "
                                 f"the plan says {plan.width}x{plan.height}")

    def generate(
        self,
        plan: JobPlan,
        init_image: Image.Image | None = None,
        mask_image: Image.Image | None = None,
        on_step: OnStep | None = None,
        control_images: list[Image.Image] | None = None,
    ) -> list[GeneratedImage]:
        """Run one job's plan; raises ``GenerationCanceled`` if ``on_step`` asked to stop."""
        # 1. Check inputs
        self.check_inputs(plan, init_image, mask_image, control_images)
        model = self.models[plan.model]
        if plan.task is Task.UPSCALE:  # tiled, one run per tile: worker/upscale.py
            assert init_image is not None
            with self._lock:
                result = upscale(model, plan, init_image, on_step or _never_cancel)
            if result.canceled_at is not None:
                raise GenerationCanceled(*result.canceled_at)
            return [GeneratedImage(image=image, seed=seed)
                    for image, seed in zip(result.images, plan.seeds, strict=True)]
        pipe = model.pipeline_for(plan.task)
        assert pipe is not None  # check_inputs guarantees it
        if plan.task in VIDEO_TASKS:
            # Imported here: worker.video builds on this module's callback and results.
            from worker.video import generate_videos

            with self._lock:
                return generate_videos(pipe, plan, model.scheduler_config, model.device,
                                       on_step or _never_cancel)
        scheduler = make_scheduler(plan.scheduler, model.scheduler_config)

        # 2. The task's images, already at the plan's size (sized once, at submit), and
        #    the ControlNet variant of the pipeline on the same modules when the plan has one
        task_kwargs = _task_inputs(plan, init_image, mask_image)
        if plan.control:
            with self._lock:
                pipe = self.controlnets.pipeline_for(model, plan.task, plan.control)
            task_kwargs.update(control_kwargs(plan.task, plan.control, control_images or []))

        # 3. One generator per image: image i depends on seeds[i] alone, so a job re-run
        #    or a single image re-requested with its seed comes out the same.
        generators = [torch.Generator(model.device).manual_seed(seed) for seed in plan.seeds]

        # 4. Denoise with a fresh scheduler, reporting progress and honouring cancellation
        callback = _StepCallback(on_step or _never_cancel, fallback_total=plan.steps,
                                 later_stage=plan.refiner is not None)
        call_kwargs: dict[str, Any] = {
            "prompt": plan.prompt,
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "num_images_per_prompt": plan.num_images,
            "generator": generators,
            "callback_on_step_end": callback,
            "output_type": "pil",
            **task_kwargs,
            **_guidance_inputs(plan, pipe),
        }
        if plan.task is Task.IMAGE_TO_IMAGE and _takes(pipe, "width"):
            # SD3's and Flux's image-to-image resize the image to their own default size
            # (1024) unless told; the image is at the plan's size already.
            call_kwargs.update(width=plan.width, height=plan.height)
        if plan.refiner is not None:
            # The base stops at switch_at and hands its latents over, undecoded.
            call_kwargs.update(denoising_end=plan.refiner.switch_at, output_type="latent")
        with self._lock, self.loras.applied(model, plan.loras):
            pipe.scheduler = scheduler
            output = pipe(**call_kwargs)
            if plan.refiner is not None and callback.canceled_at is None:
                callback.next_stage()
                output = self._refine(plan, output.images, generators, callback)

        # 5. Stop here if the job was canceled mid-run (the partial images are dropped)
        if callback.canceled_at is not None:
            raise GenerationCanceled(*callback.canceled_at)

        # 6. Pair each image with its seed
        return [
            GeneratedImage(image=image, seed=seed)
            for image, seed in zip(output.images, plan.seeds, strict=True)
        ]

    def _refine(
        self, plan: JobPlan, latents: torch.Tensor, generators: list[torch.Generator],
        callback: _StepCallback,
    ) -> Any:
        """The refiner stage: the base's latents denoised from switch_at to the end."""
        assert plan.refiner is not None
        refiner = self.models[plan.refiner.model]
        pipe = refiner.pipeline_for(Task.IMAGE_TO_IMAGE)
        assert pipe is not None  # a refiner spec serves image-to-image
        pipe.scheduler = make_scheduler(plan.scheduler, refiner.scheduler_config)
        count = len(plan.seeds)
        # One prompt per latent: the latents are the batch already.
        kwargs: dict[str, Any] = {
            "prompt": [plan.prompt] * count,
            "image": latents,
            "num_inference_steps": plan.steps,
            "denoising_start": plan.refiner.switch_at,
            "guidance_scale": plan.guidance_scale,
            "aesthetic_score": plan.refiner.aesthetic_score,
            "negative_aesthetic_score": plan.refiner.negative_aesthetic_score,
            "generator": generators,
            "callback_on_step_end": callback,
            "output_type": "pil",
        }
        if plan.negative_prompt is not None:
            kwargs["negative_prompt"] = [plan.negative_prompt] * count
        return pipe(**kwargs)

    def generate_batch(
        self, plans: list[JobPlan], on_steps: list[OnStep]
    ) -> list[list[GeneratedImage] | GenerationCanceled]:
        """Run jobs that share a batch signature in one pipeline call; per job (in order)
        its images, or the ``GenerationCanceled`` that took it out of the batch.

        Every image keeps its own generator seeded with its own seed, so each equals the
        image the job gets alone up to the last bits of the batched matmuls (the engine
        tests state the tolerance).
        """
        if len(plans) == 1:
            try:
                return [self.generate(plans[0], on_step=on_steps[0])]
            except GenerationCanceled as exc:
                return [exc]
        # 1. Check inputs: one call can run them only if nothing but the per-image values
        #    differs (shared.batching decides which, for the queue as well).
        signatures = {batch_signature(plan) for plan in plans}
        if None in signatures or len(signatures) != 1:
            raise ValueError("the jobs of a batch must share one batch signature")
        for plan in plans:
            self.check_inputs(plan, None, None)
        first = plans[0]
        model = self.models[first.model]
        pipe = model.pipeline_for(first.task)
        assert pipe is not None  # check_inputs guarantees it
        scheduler = make_scheduler(first.scheduler, model.scheduler_config)

        # 2. One row per image: its job's prompts, its own seeded generator
        prompts = [plan.prompt for plan in plans for _ in plan.seeds]
        generators = [torch.Generator(model.device).manual_seed(seed)
                      for plan in plans for seed in plan.seeds]

        # 3. Denoise all rows together, each job reporting (and stopping) on its own
        callback = _BatchStepCallback(on_steps, fallback_total=first.steps)
        call_kwargs: dict[str, Any] = {
            "prompt": prompts,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance_scale,
            "num_images_per_prompt": 1,
            "generator": generators,
            "callback_on_step_end": callback,
            "output_type": "pil",
            **_task_inputs(first, None, None),
            **_guidance_inputs(first, pipe),
        }
        if first.negative_prompt is not None:
            call_kwargs["negative_prompt"] = [
                plan.negative_prompt for plan in plans for _ in plan.seeds]
        with self._lock, self.loras.applied(model, first.loras):
            pipe.scheduler = scheduler
            output = pipe(**call_kwargs)

        # 4. Hand each job its rows (a job that stopped gets why instead)
        results: list[list[GeneratedImage] | GenerationCanceled] = []
        row = 0
        for plan, stopped in zip(plans, callback.stopped_at, strict=True):
            images = output.images[row:row + len(plan.seeds)]
            row += len(plan.seeds)
            if stopped is not None:
                results.append(GenerationCanceled(*stopped))
            else:
                results.append([GeneratedImage(image=image, seed=seed)
                                for image, seed in zip(images, plan.seeds, strict=True)])
        return results


def _guidance_inputs(plan: JobPlan, pipe: DiffusionPipeline) -> dict[str, Any]:
    """Negative prompt, Flux's true CFG and the refiner's aesthetic scores, as planned."""
    kwargs: dict[str, Any] = {}
    if plan.negative_prompt is not None:
        kwargs["negative_prompt"] = plan.negative_prompt
    if plan.true_cfg_scale is not None:
        kwargs["true_cfg_scale"] = plan.true_cfg_scale
    if plan.aesthetic_score is not None and _takes(pipe, "aesthetic_score"):
        kwargs["aesthetic_score"] = plan.aesthetic_score
        kwargs["negative_aesthetic_score"] = plan.negative_aesthetic_score
    return kwargs


def _input_size(plan: JobPlan) -> tuple[int, int]:
    """The size the plan's input images were stored at (outpaint: inside the margins;
    upscale: the output's over the scale)."""
    if plan.task is Task.UPSCALE:
        assert plan.scale is not None
        return plan.width // plan.scale, plan.height // plan.scale
    if plan.task is Task.OUTPAINT:
        assert plan.outpaint is not None
        margins = plan.outpaint
        return (plan.width - margins.left - margins.right,
                plan.height - margins.top - margins.bottom)
    return plan.width, plan.height


def _task_inputs(
    plan: JobPlan, init_image: Image.Image | None, mask_image: Image.Image | None
) -> dict[str, Any]:
    if plan.task is Task.TEXT_TO_IMAGE:
        return {"width": plan.width, "height": plan.height}
    assert init_image is not None and plan.strength is not None
    if plan.task is Task.IMAGE_TO_IMAGE:
        return {"image": init_image, "strength": plan.strength}
    if plan.task is Task.INPAINT:
        assert mask_image is not None
        image, mask = init_image, mask_image  # white = repaint
    else:
        assert plan.outpaint is not None
        image, mask = outpaint_canvas(init_image, plan.outpaint)
    return {
        "image": image,
        "mask_image": mask,
        "width": plan.width,
        "height": plan.height,
        "strength": plan.strength,
    }


def _takes(pipe: DiffusionPipeline, parameter: str) -> bool:
    return parameter in inspect.signature(pipe.__call__).parameters
