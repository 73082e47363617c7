"""LoRA adapters on a loaded model, through diffusers' PEFT backend: each file is loaded
into the model's modules once per process (``load_lora_weights(adapter_name=...)``), then
switched on with the plan's scales for one run and off again after it, however the run
ends, so no job sees another job's adapters.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from diffusers import DiffusionPipeline

from shared.adapters import LoraFile
from shared.schemas import LoraRequest
from worker.pipelines import LoadedModel

logger = logging.getLogger(__name__)


class LoraAdapters:
    """The LoRA files this process may load, and which are loaded into which model."""

    def __init__(self, files: Mapping[str, LoraFile]):
        self.files = dict(files)
        # The adapter names already in a model's modules, by the pipeline holding them:
        # a model the memory budget evicts and loads again comes back without them, and
        # its entry goes with the evicted pipeline.
        self._loaded: weakref.WeakKeyDictionary[DiffusionPipeline, set[str]] = (
            weakref.WeakKeyDictionary())

    def check(self, loras: list[LoraRequest]) -> None:
        """``ValueError`` naming the LoRA this process has no file for."""
        for lora in loras:
            if lora.name not in self.files:
                raise ValueError(f"LoRA '{lora.name}' is not in this worker's LATENTD_LORA_DIR")

    def loaded(self, model: LoadedModel) -> set[str]:
        return set(self._loaded.get(modules_owner(model), ()))

    @contextmanager
    def applied(self, model: LoadedModel, loras: list[LoraRequest]) -> Iterator[None]:
        """The plan's LoRAs active at their scales inside the block, none after it.

        Every pipeline of the model (each task's, ControlNet's) shares the same modules, so
        adapters set through any one of them act in all.
        """
        if not loras:
            yield
            return
        pipe = modules_owner(model)
        self._load(model.spec.name, pipe, [lora.name for lora in loras])
        try:
            pipe.enable_lora()
            pipe.set_adapters([lora.name for lora in loras], [lora.scale for lora in loras])
            yield
        finally:
            # Off for whatever runs next, also after a failed or canceled run: the
            # adapters stay loaded (cheap to switch on again) but change nothing.
            pipe.disable_lora()

    def _load(self, model: str, pipe: DiffusionPipeline, names: list[str]) -> None:
        loaded = self._loaded.setdefault(pipe, set())
        for name in names:
            if name in loaded:
                continue
            path = self.files[name].path
            try:
                with warnings.catch_warnings():
                    # PEFT warns at every adapter after the first; several are the point.
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    pipe.load_lora_weights(str(path), adapter_name=name)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                # A file that does not fit this model's modules leaves nothing behind.
                if name in _adapter_names(pipe):
                    pipe.delete_adapters(name)
                raise ValueError(f"LoRA '{name}' could not be added to model '{model}': "
                                 f"{exc}") from exc
            loaded.add(name)
            logger.info("loaded LoRA %s (%s) into model %s", name, path, model)


def modules_owner(model: LoadedModel) -> DiffusionPipeline:
    """One of the model's pipelines (they all hold the same modules)."""
    for pipe in (model.text_to_image, model.image_to_image, model.inpaint, model.upscale,
                 model.text_to_video):
        if pipe is not None:
            return pipe
    raise ValueError(f"model '{model.spec.name}' has no pipeline")


def _adapter_names(pipe: DiffusionPipeline) -> set[str]:
    try:
        listed = pipe.get_list_adapters()
    except (ValueError, AttributeError):
        return set()
    return {name for names in listed.values() for name in names}
