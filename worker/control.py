"""ControlNet on a loaded model: the ControlNet weights are loaded once per process (at
its start, for those that fit its models), and the ControlNet variant of a task's pipeline is derived from the model's already-loaded
pipeline (``from_pipe``), so the base weights are shared, never loaded a second time.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    ControlNetModel,
    DiffusionPipeline,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from shared.adapters import ControlNetSpec, control_mismatch
from shared.schemas import ControlSettings, Task
from worker.adapters import modules_owner
from worker.pipelines import LoadedModel

logger = logging.getLogger(__name__)

# diffusers picks the SD 1.x/2.x or SDXL ControlNet class of a task from the base pipeline.
_AUTO_PIPELINES: dict[Task, Any] = {
    Task.TEXT_TO_IMAGE: AutoPipelineForText2Image,
    Task.IMAGE_TO_IMAGE: AutoPipelineForImage2Image,
    Task.INPAINT: AutoPipelineForInpainting,
    Task.OUTPAINT: AutoPipelineForInpainting,
}


class ControlNets:
    """The ControlNets this process may attach, loaded on first use and kept."""

    def __init__(self, specs: Mapping[str, ControlNetSpec]):
        self.specs = dict(specs)
        self._modules: dict[tuple[str, torch.device, torch.dtype], ControlNetModel] = {}
        # The derived pipelines of each loaded model, by (task, ControlNet names), built
        # once; keyed by the model's own pipeline so that a model the memory budget evicts
        # takes its derived pipelines (and its modules) with it.
        self._pipelines: weakref.WeakKeyDictionary[
            DiffusionPipeline, dict[tuple[Task, tuple[str, ...]], DiffusionPipeline]] = (
            weakref.WeakKeyDictionary())
        self.loads = 0  # how many ControlNet weight loads this process made

    def preload(self, models: Iterable[LoadedModel]) -> None:
        """Load, at process start, every ControlNet that fits one of ``models`` (on that
        model's device and dtype), so no job pays for it; others stay unloaded."""
        for model in models:
            base = _unet_config(model)
            for name, spec in self.specs.items():
                if base is not None and control_mismatch(spec, base, model.spec.name) is None:
                    self._module(name, model.device, model.dtype)

    def check(self, model: LoadedModel, controls: list[ControlSettings]) -> None:
        """``ValueError`` naming the ControlNet this process lacks or the model cannot take."""
        base = _unet_config(model)
        for control in controls:
            spec = self.specs.get(control.model)
            if spec is None:
                raise ValueError(f"ControlNet '{control.model}' is not registered on this worker")
            if base is None:
                raise ValueError(f"model '{model.spec.name}' has no UNet a ControlNet can steer")
            misfit = control_mismatch(spec, base, model.spec.name)
            if misfit is not None:
                raise ValueError(misfit)

    def pipeline_for(
        self, model: LoadedModel, task: Task, controls: list[ControlSettings]
    ) -> DiffusionPipeline:
        """The ControlNet pipeline of ``task`` on ``model``'s modules."""
        names = tuple(control.model for control in controls)
        derived = self._pipelines.setdefault(modules_owner(model), {})
        pipe = derived.get((task, names))
        if pipe is None:
            modules = [self._module(name, model.device, model.dtype) for name in names]
            controlnet = modules[0] if len(modules) == 1 else MultiControlNetModel(modules)
            base = model.pipeline_for(task)
            if base is None:
                raise ValueError(f"task '{task.value}' is not supported by model "
                                 f"'{model.spec.name}'")
            try:
                pipe = _AUTO_PIPELINES[task].from_pipe(base, controlnet=controlnet)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"model '{model.spec.name}' has no ControlNet pipeline for "
                                 f"'{task.value}': {exc}") from exc
            pipe.set_progress_bar_config(disable=True)
            derived[(task, names)] = pipe
        return pipe

    def _module(self, name: str, device: torch.device, dtype: torch.dtype) -> ControlNetModel:
        key = (name, device, dtype)
        module = self._modules.get(key)
        if module is None:
            source = self.specs[name].source
            module = ControlNetModel.from_pretrained(source, torch_dtype=dtype,
                                                     local_files_only=True)
            module.to(device).eval()
            self._modules[key] = module
            self.loads += 1
            logger.info("loaded ControlNet %s (%s) on %s", name, source, device)
        return module


def _unet_config(model: LoadedModel) -> dict[str, Any] | None:
    unet = getattr(modules_owner(model), "unet", None)
    return dict(unet.config) if unet is not None else None


def control_kwargs(
    task: Task, controls: list[ControlSettings], images: list[Image.Image]
) -> dict[str, Any]:
    """The ControlNet arguments of one pipeline call (one value, or one per ControlNet)."""
    def one_or_list(values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else values

    # Text-to-image pipelines take the conditioning image as `image`; the image-task
    # variants already use `image` for the init image and take it as `control_image`.
    image_argument = "image" if task is Task.TEXT_TO_IMAGE else "control_image"
    return {
        image_argument: one_or_list(images),
        "controlnet_conditioning_scale": one_or_list([c.scale for c in controls]),
        "control_guidance_start": one_or_list([c.start for c in controls]),
        "control_guidance_end": one_or_list([c.end for c in controls]),
    }
