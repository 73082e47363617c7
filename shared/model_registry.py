"""Names → model sources and what each model supports. Pure data: the API lists and
validates against it without torch; the worker turns a source into a loaded pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.schemas import FLOW_SCHEDULERS, NOISE_SCHEDULERS, SCHEDULERS, ModelInfo, Task

if TYPE_CHECKING:  # settings import this module for the default model's name
    from shared.settings import Settings

TINY_RANDOM = "tiny-random"
EMOJI = "emoji"
EMBEDDED_PREFIX = "builtin:"

# The model a request that names none gets: the embedded one, so the first prompt works
# offline on a CPU.
DEFAULT_MODEL = EMOJI
# The emoji model's classifier-free guidance scale with the best top-5 (and skin-tone-free
# top-1) in `python -m models.evaluate` on the committed weights; 3.0 ties on top-1.
EMOJI_GUIDANCE_SCALE = 5.0


class GuidanceKind(StrEnum):
    """How a model is steered by ``guidance_scale`` (and so whether it reads a negative prompt).

    classifier-free: two passes, prompt and negative prompt (SD 1.x/2.x, SDXL, SD3);
    distilled: the scale is an input of one pass, no negative prompt (Flux);
    none: the model ignores guidance altogether.
    """

    CLASSIFIER_FREE = "classifier-free"
    DISTILLED = "distilled"
    NONE = "none"


class ModelSpec(BaseModel):
    """How to load one model and the bounds requests to it must respect.

    Unknown keys are refused, so a typo in ``LATENTD_MODELS`` stops the service at start.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    # "builtin:<name>", a local diffusers directory, or a hub id ("org/name").
    source: str
    tasks: list[Task] = Field(default_factory=lambda: list(Task))
    default_width: int = 512
    default_height: int = 512
    # Below this the UNet's deepest level is one pixel, where its normalisation has
    # nothing to normalise and the run fails: refused at submit instead.
    min_width: int = Field(64, ge=8)
    min_height: int = Field(64, ge=8)
    max_width: int = Field(1024, ge=8)
    max_height: int = Field(1024, ge=8)
    default_steps: int = Field(30, ge=1, le=150)
    default_guidance_scale: float = Field(7.5, ge=0, le=30)
    default_scheduler: str = "dpmpp_2m"
    # Samplers this model's requests may choose; flow-matching models have their own.
    schedulers: list[str] = Field(default_factory=lambda: list(NOISE_SCHEDULERS))
    guidance: GuidanceKind = GuidanceKind.CLASSIFIER_FREE
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        unknown = [name for name in self.schedulers if name not in SCHEDULERS]
        if unknown or not self.schedulers:
            raise ValueError(
                f"schedulers must be a non-empty list of {', '.join(SCHEDULERS)}; got {unknown}"
            )
        if self.default_scheduler not in self.schedulers:
            raise ValueError(
                f"default_scheduler '{self.default_scheduler}' is not in schedulers "
                f"({', '.join(self.schedulers)})"
            )
        if not (self.min_width <= self.default_width <= self.max_width
                and self.min_height <= self.default_height <= self.max_height):
            raise ValueError("default_width/default_height must lie between min_* and max_*")
        return self

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(EMBEDDED_PREFIX)

    def info(self) -> ModelInfo:
        """What ``/v1/models`` shows of this spec."""
        return ModelInfo.model_validate(self.model_dump(include=set(ModelInfo.model_fields)))


BUILTIN_MODELS: dict[str, ModelSpec] = {
    EMOJI: ModelSpec(
        name=EMOJI,
        source=EMBEDDED_PREFIX + EMOJI,
        default_width=64,
        default_height=64,
        # At 8x8 its UNet's deepest level is one pixel and the run fails; 16 runs (measured).
        min_width=16,
        min_height=16,
        # Trained at 64×64; the networks are convolutional, so larger canvases run
        # (useful for outpainting) but drift from what the model has seen.
        max_width=256,
        max_height=256,
        default_steps=25,
        default_guidance_scale=EMOJI_GUIDANCE_SCALE,
        default_scheduler="ddim",
        description=(
            "Tiny demo model trained by this project on Noto Color Emoji (64×64, CPU-fast). "
            "For real work point LATENTD_MODELS at SD 1.5 / SDXL / Flux weights."
        ),
    ),
    TINY_RANDOM: ModelSpec(
        name=TINY_RANDOM,
        source=EMBEDDED_PREFIX + TINY_RANDOM,
        default_width=64,
        default_height=64,
        # 16x16 leaves its UNet's deepest level one pixel (measured); 24 leaves more.
        min_width=24,
        min_height=24,
        max_width=512,
        max_height=512,
        default_steps=4,
        default_guidance_scale=5.0,
        default_scheduler="ddim",
        description="Random weights built in code: milliseconds per image, for tests.",
    ),
}


class UnknownModel(KeyError):
    pass


class ModelRegistry:
    """Every model this deployment knows: the built-ins plus ``LATENTD_MODELS``."""

    def __init__(self, specs: dict[str, ModelSpec], default_model: str):
        if default_model not in specs:
            known = ", ".join(sorted(specs))
            raise ValueError(f"default model '{default_model}' is not registered (known: {known})")
        self._specs = specs
        self.default_model = default_model

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry ``settings`` describe; ``ValueError`` naming the setting otherwise."""
        # tiny-random is for tests: offered only where the settings name it, so a user's
        # request for it is refused instead of queued where no worker serves it.
        wanted = {settings.default_model, *settings.worker_models}
        specs = {name: spec for name, spec in BUILTIN_MODELS.items()
                 if name != TINY_RANDOM or name in wanted}
        for name, entry in settings.models.items():
            fields = {"source": entry} if isinstance(entry, str) else dict(entry)
            if isinstance(fields.get("source"), str):
                fields = {**family_defaults(fields["source"]), **fields}
            try:
                specs[name] = ModelSpec(name=name, **fields)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in err['loc']) or name}: {err['msg']}"
                    for err in exc.errors()
                )
                raise ValueError(f"LATENTD_MODELS['{name}'] is invalid: {problems}") from None
        if settings.default_model not in specs:
            known = ", ".join(sorted(specs))
            raise ValueError(
                f"LATENTD_DEFAULT_MODEL '{settings.default_model}' is not a registered model "
                f"(known: {known})"
            )
        for name in settings.worker_models:
            if name not in specs:
                known = ", ".join(sorted(specs))
                raise ValueError(
                    f"LATENTD_WORKER_MODELS names '{name}', which is not a registered model "
                    f"(known: {known})"
                )
        return cls(specs, settings.default_model)

    def get(self, name: str | None) -> ModelSpec:
        try:
            return self._specs[name or self.default_model]
        except KeyError:
            raise UnknownModel(name) from None

    def names(self) -> list[str]:
        return list(self._specs)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())


# Pipelines whose guidance is not classifier-free, by the class model_index.json names.
_DISTILLED_PIPELINES = ("FluxPipeline",)


def family_defaults(source: str) -> dict[str, object]:
    """Spec values a local diffusers folder implies, read from its JSON (no torch).

    Flow-matching models (SD3, Flux) only run with their own sampler, and Flux's guidance
    is distilled (no negative prompt). Values given in ``LATENTD_MODELS`` win.
    """
    folder = Path(source).expanduser()
    defaults: dict[str, object] = {}
    try:
        index = json.loads((folder / "model_index.json").read_text())
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        return defaults  # a hub id or a folder the worker will judge when it loads it
    if "FlowMatch" in str(scheduler.get("_class_name", "")):
        defaults.update(schedulers=list(FLOW_SCHEDULERS), default_scheduler=FLOW_SCHEDULERS[0])
    if str(index.get("_class_name", "")) in _DISTILLED_PIPELINES:
        defaults["guidance"] = GuidanceKind.DISTILLED
    return defaults


def queue_for_model(name: str) -> str:
    """Celery queue of a model's generation tasks: one queue per model."""
    return f"gen.{name}"
