"""Names → model sources and what each model supports. Pure data: the API lists and
validates against it without torch; the worker turns a source into a loaded pipeline.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError

from shared.schemas import SCHEDULERS, ModelInfo, Task
from shared.settings import Settings

TINY_RANDOM = "tiny-random"
EMOJI = "emoji"
EMBEDDED_PREFIX = "builtin:"


class ModelSpec(BaseModel):
    """How to load one model and the bounds requests to it must respect."""

    name: str
    # "builtin:<name>", a local diffusers directory, or a hub id ("org/name").
    source: str
    tasks: list[Task] = Field(default_factory=lambda: list(Task))
    default_width: int = 512
    default_height: int = 512
    max_width: int = Field(1024, ge=8)
    max_height: int = Field(1024, ge=8)
    default_steps: int = Field(30, ge=1, le=150)
    default_guidance_scale: float = Field(7.5, ge=0, le=30)
    default_scheduler: str = "dpmpp_2m"
    description: str = ""

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(EMBEDDED_PREFIX)

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            source=self.source,
            tasks=self.tasks,
            default_width=self.default_width,
            default_height=self.default_height,
            max_width=self.max_width,
            max_height=self.max_height,
            default_steps=self.default_steps,
            default_guidance_scale=self.default_guidance_scale,
            default_scheduler=self.default_scheduler,
            schedulers=list(SCHEDULERS),
            description=self.description,
        )


BUILTIN_MODELS: dict[str, ModelSpec] = {
    EMOJI: ModelSpec(
        name=EMOJI,
        source=EMBEDDED_PREFIX + EMOJI,
        default_width=64,
        default_height=64,
        # Trained at 64×64; the networks are convolutional, so larger canvases run
        # (useful for outpainting) but drift from what the model has seen.
        max_width=256,
        max_height=256,
        default_steps=25,
        default_guidance_scale=5.0,
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
        specs = dict(BUILTIN_MODELS)
        for name, entry in settings.models.items():
            fields = {"source": entry} if isinstance(entry, str) else dict(entry)
            try:
                specs[name] = ModelSpec(name=name, **fields)
            except ValidationError as exc:
                raise ValueError(f"LATENTD_MODELS['{name}'] is invalid: {exc}") from exc
        return cls(specs, settings.default_model)

    def get(self, name: str | None) -> ModelSpec:
        try:
            return self._specs[name or self.default_model]
        except KeyError:
            raise UnknownModel(name) from None

    def names(self) -> list[str]:
        return list(self._specs)

    def __iter__(self):
        return iter(self._specs.values())


def queue_for_model(name: str) -> str:
    """Celery queue of a model's generation tasks: one queue per model."""
    return f"gen.{name}"
