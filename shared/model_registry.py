"""Names → model sources and what each model supports. Pure data: the API lists and
validates against it without torch; the worker turns a source into a loaded pipeline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.schemas import (
    FLOW_SCHEDULERS,
    MAX_FPS,
    MAX_FRAMES,
    NOISE_SCHEDULERS,
    SCHEDULERS,
    VIDEO_TASKS,
    GuidanceKind,
    ModelInfo,
    Task,
)

if TYPE_CHECKING:  # settings import this module for the default model's name
    from shared.settings import Settings

TINY_RANDOM = "tiny-random"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
EMOJI = "emoji"
EMOJI_UPSCALER = "emoji-upscaler"
EMBEDDED_PREFIX = "builtin:"

# The model a request that names none gets: the embedded one, so the first prompt works
# offline on a CPU.
DEFAULT_MODEL = EMOJI
# The emoji model's classifier-free guidance scale with the best top-5 (and skin-tone-free
# top-1) in `python -m models.evaluate` on the committed weights; 3.0 ties on top-1.
EMOJI_GUIDANCE_SCALE = 5.0
# What a spec serves when it names no tasks: every task but upscale, which only a model
# made for it can run.
# The embedded upscaler's run (models/upscaler_pipeline.py: DEFAULT_STEPS, its config's
# default_noise_level and max_noise_level; tests/worker/test_emoji_upscaler.py checks that
# these agree with it).
EMOJI_UPSCALER_STEPS = 2
EMOJI_UPSCALER_NOISE_LEVEL = 0
EMOJI_UPSCALER_MAX_NOISE_LEVEL = 350
DEFAULT_TASKS: tuple[Task, ...] = tuple(
    task for task in Task if task is not Task.UPSCALE and task not in VIDEO_TASKS)
UPSCALE_SCALES = (2, 4)




class ModelFamily(StrEnum):
    """The architecture a model belongs to, which decides its defaults and what it can do.

    ``other`` is anything else (the embedded emoji model, a hub id not yet described):
    its spec is what ``LATENTD_MODELS`` says.
    """

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"
    SD3 = "sd3"
    FLUX = "flux"
    OTHER = "other"


# The range of guidance_scale each kind is run at, unless the spec says otherwise.
# Distilled guidance (Flux dev) is an input the model was trained on for about 1–10;
# outside that it produces noise rather than stronger guidance.
GUIDANCE_SCALE_RANGES: dict[GuidanceKind, tuple[float, float]] = {
    GuidanceKind.CLASSIFIER_FREE: (0.0, 30.0),
    GuidanceKind.DISTILLED: (1.0, 10.0),
    GuidanceKind.NONE: (0.0, 0.0),
}
DTYPES = ("float32", "float16", "bfloat16")


class ModelSpec(BaseModel):
    """How to load one model and the bounds requests to it must respect.

    Unknown keys are refused, so a typo in ``LATENTD_MODELS`` stops the service at start.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    # "builtin:<name>", a local diffusers directory, a single-file checkpoint
    # (.safetensors/.ckpt), or a hub id ("org/name").
    source: str
    family: ModelFamily = ModelFamily.OTHER
    # Image models by default; a video or upscale model says so (family_defaults does, from
    # its folder).
    tasks: list[Task] = Field(default_factory=lambda: list(DEFAULT_TASKS))
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
    # Filled from the guidance kind's range (GUIDANCE_SCALE_RANGES) when not given.
    min_guidance_scale: float | None = Field(None, ge=0, le=30)
    max_guidance_scale: float | None = Field(None, ge=0, le=30)
    # Requests' width and height must be multiples of this: 8 for the UNet models (the
    # VAE's factor), 16 for SD3 and Flux (VAE factor × transformer patch / latent packing).
    size_multiple: int = Field(8, ge=8, le=128, multiple_of=8)
    # Flux: real classifier-free guidance on top of the distilled one, with a negative
    # prompt, when a request's true_cfg_scale is above 1 (two passes a step).
    true_cfg: bool = False
    # SDXL refiner: the aesthetic scores its UNet is conditioned on (its training's
    # defaults); None for every other model.
    aesthetic_score: float | None = None
    negative_aesthetic_score: float | None = None
    # Video models (text-to-video): frames per video and the file's frame rate. The
    # defaults are AnimateDiff's: its motion modules are trained on 16 frames and hold
    # positions for 32 at most.
    default_frames: int = Field(16, ge=1, le=MAX_FRAMES)
    min_frames: int = Field(2, ge=1, le=MAX_FRAMES)
    max_frames: int = Field(32, ge=1, le=MAX_FRAMES)
    # Frame counts are 1 + a multiple of this; 1 allows any count. CogVideoX: 8 (its VAE
    # packs 4 frames into one latent and decodes an odd number of latents into 8k+1
    # frames; an even number comes out as 8k, not the frames asked for).
    frame_step: int = Field(1, ge=1, le=16)
    default_fps: int = Field(8, ge=1, le=MAX_FPS)
    max_fps: int = Field(30, ge=1, le=MAX_FPS)
    # Upscale models (tasks ["upscale"]) only; for them min_*/max_* bound the *output*.
    # scales: the factors served. default_noise_level/max_noise_level: the noise added to
    # the input before denoising, and its upper bound (None: the model takes no noise
    # level). tile_size: the largest input side (pixels) run in one piece; a larger input
    # is cut into tile_size squares overlapping by tile_overlap pixels, so memory stays
    # bounded however large the input (None: never tiled).
    scales: list[int] = Field(default_factory=list)
    default_noise_level: int | None = Field(None, ge=0)
    max_noise_level: int | None = Field(None, ge=0)
    tile_size: int | None = Field(None, ge=16, multiple_of=8)
    tile_overlap: int | None = Field(None, ge=0, multiple_of=8)
    description: str = ""

    # How the worker loads it (worker/pipelines.py); not part of what /v1/models shows.
    # dtype: None = bfloat16 for Flux and float16 for the others on CUDA, float32 on CPU.
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    # Weight file variant inside the folder, e.g. "fp16" for *.fp16.safetensors.
    variant: str | None = None
    # Single-file checkpoints: a local diffusers folder (or hub id) with the
    # pipeline's configs, so that loading needs no network.
    config: str | None = None
    # Keep each module on the CPU until it runs (CUDA only): for models larger than the GPU.
    cpu_offload: bool = False
    # Decode the image tile by tile: large sizes in little memory, a little slower.
    vae_tiling: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        low, high = GUIDANCE_SCALE_RANGES[self.guidance]
        if self.min_guidance_scale is None:
            self.min_guidance_scale = low
        if self.max_guidance_scale is None:
            self.max_guidance_scale = high
        if not (self.min_guidance_scale <= self.default_guidance_scale
                <= self.max_guidance_scale):
            raise ValueError(
                f"default_guidance_scale {self.default_guidance_scale} must lie between "
                f"min_guidance_scale {self.min_guidance_scale} and max_guidance_scale "
                f"{self.max_guidance_scale} ({self.guidance.value} guidance)"
            )
        sizes = (self.min_width, self.min_height, self.default_width, self.default_height)
        if any(size % self.size_multiple for size in sizes):
            raise ValueError(f"min_*/default_* sizes must be multiples of size_multiple "
                             f"{self.size_multiple}")
        if self.is_single_file and self.family is ModelFamily.OTHER:
            raise ValueError("a single-file checkpoint needs its family (\"family\": "
                             "\"sd1\", ...) or a \"config\" folder to read it from")
        if self.true_cfg and self.guidance is GuidanceKind.CLASSIFIER_FREE:
            raise ValueError("true_cfg is for distilled or no guidance; classifier-free "
                             "models use guidance_scale itself")
        self._check_upscale()
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
        if not self.min_frames <= self.default_frames <= self.max_frames:
            raise ValueError("default_frames must lie between min_frames and max_frames")
        if (self.default_frames - 1) % self.frame_step:
            raise ValueError("default_frames must be 1 more than a multiple of frame_step")
        if self.default_fps > self.max_fps:
            raise ValueError("default_fps must be at most max_fps")
        return self

    def _check_upscale(self) -> None:
        if Task.UPSCALE not in self.tasks:
            if self.scales:
                raise ValueError("scales are for upscale models (tasks [\"upscale\"])")
            return
        if self.tasks != [Task.UPSCALE]:
            raise ValueError("an upscale model serves task 'upscale' alone")
        if not self.scales or any(scale not in UPSCALE_SCALES for scale in self.scales):
            raise ValueError(f"an upscale model needs scales, each one of {UPSCALE_SCALES}")
        if (self.default_noise_level is None) != (self.max_noise_level is None):
            raise ValueError("default_noise_level and max_noise_level go together")
        if (self.default_noise_level or 0) > (self.max_noise_level or 0):
            raise ValueError("default_noise_level must not exceed max_noise_level")
        if self.tile_size is not None and 2 * (self.tile_overlap or 0) > self.tile_size:
            raise ValueError("tile_overlap must be at most half of tile_size")

    @property
    def serves_video(self) -> bool:
        return any(task in VIDEO_TASKS for task in self.tasks)

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(EMBEDDED_PREFIX)

    @property
    def is_single_file(self) -> bool:
        return self.source.endswith(SINGLE_FILE_SUFFIXES)

    def info(self) -> ModelInfo:
        """What ``/v1/models`` shows of this spec (frame bounds only for video models)."""
        fields = self.model_dump(include=set(ModelInfo.model_fields))
        if not self.serves_video:
            fields = {k: v for k, v in fields.items() if k not in _VIDEO_BOUNDS}
        return ModelInfo.model_validate(fields)


_VIDEO_BOUNDS = ("default_frames", "min_frames", "max_frames", "frame_step", "default_fps",
                 "max_fps")


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
    EMOJI_UPSCALER: ModelSpec(
        name=EMOJI_UPSCALER,
        source=EMBEDDED_PREFIX + EMOJI_UPSCALER,
        tasks=[Task.UPSCALE],
        scales=[2],
        # Output bounds: inputs of 8 to 256 pixels a side.
        default_width=128,
        default_height=128,
        min_width=16,
        min_height=16,
        max_width=512,
        max_height=512,
        default_steps=EMOJI_UPSCALER_STEPS,
        default_guidance_scale=0.0,
        default_scheduler="ddim",
        # Samplers of its v-prediction cosine schedule that it runs well (and the tests run).
        schedulers=["ddim", "ddpm", "euler", "dpmpp_2m"],
        guidance=GuidanceKind.NONE,
        default_noise_level=EMOJI_UPSCALER_NOISE_LEVEL,
        max_noise_level=EMOJI_UPSCALER_MAX_NOISE_LEVEL,
        # Trained on 64×64 emoji: larger inputs run as 64-pixel tiles.
        tile_size=64,
        tile_overlap=16,
        description="2× upscaler trained by this project on Noto Color Emoji (64→128, CPU-fast).",
    ),
    TINY_RANDOM: ModelSpec(
        name=TINY_RANDOM,
        source=EMBEDDED_PREFIX + TINY_RANDOM,
        family=ModelFamily.SD1,
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
        from shared.adapters import controlnet_source  # it reads this module's specs

        for name, entry in settings.models.items():
            if controlnet_source(entry) is not None:
                continue  # a control model (shared.adapters), not one to generate with
            fields = {"source": entry} if isinstance(entry, str) else dict(entry)
            if isinstance(fields.get("source"), str):
                where = fields.get("config") or fields["source"]
                family = fields.get("family")
                if family is not None and family not in set(ModelFamily):
                    raise ValueError(
                        f"{settings.model_origin(name)} is invalid: family: {family!r} is not "
                        f"one of {', '.join(ModelFamily)}")
                fields = _with_defaults(family_defaults(str(where), family), fields)
                builtin = BUILTIN_MODELS.get(fields["source"].removeprefix(EMBEDDED_PREFIX))
                if builtin is not None and builtin.source == fields["source"]:
                    # A built-in under another name (e.g. with another tile) starts from
                    # the built-in's own spec.
                    fields = {**builtin.model_dump(exclude={"name", "source"}), **fields}
            try:
                specs[name] = ModelSpec(name=name, **fields)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in err['loc']) or name}: {err['msg']}"
                    for err in exc.errors()
                )
                raise ValueError(f"{settings.model_origin(name)} is invalid: {problems}") from None
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


# The SDXL refiner's aesthetic conditioning, as in its training (and diffusers' defaults).
REFINER_AESTHETIC_SCORE = 6.0
REFINER_NEGATIVE_AESTHETIC_SCORE = 2.5
_NOISE = list(NOISE_SCHEDULERS)
# Flux passes its own sigmas to the scheduler, which Heun's cannot take.
_FLUX_SCHEDULERS = ["flow_match_euler", "flow_match_dpmpp_2m"]
# Every image task but upscale (video and upscale models say so themselves:
# VIDEO_PIPELINES, UPSCALE_PIPELINES).
_ALL_TASKS = list(DEFAULT_TASKS)

# What each family runs at, as its reference pipelines and model cards do. A local
# folder's own configs then set the sizes (sample size × VAE factor) and, for Flux, the
# guidance (dev-like or schnell-like); LATENTD_MODELS wins over both.
FAMILY_DEFAULTS: dict[ModelFamily, dict[str, Any]] = {
    ModelFamily.SD1: {
        "default_width": 512, "default_height": 512, "max_width": 1024, "max_height": 1024,
        "default_steps": 30, "default_guidance_scale": 7.5, "schedulers": _NOISE,
        "default_scheduler": "dpmpp_2m", "size_multiple": 8, "tasks": _ALL_TASKS},
    ModelFamily.SD2: {
        "default_width": 768, "default_height": 768, "max_width": 1536, "max_height": 1536,
        "default_steps": 30, "default_guidance_scale": 7.5, "schedulers": _NOISE,
        "default_scheduler": "dpmpp_2m", "size_multiple": 8, "tasks": _ALL_TASKS},
    ModelFamily.SDXL: {
        "default_width": 1024, "default_height": 1024, "max_width": 2048, "max_height": 2048,
        "default_steps": 30, "default_guidance_scale": 5.0, "schedulers": _NOISE,
        "default_scheduler": "dpmpp_2m", "size_multiple": 8, "tasks": _ALL_TASKS},
    # The refiner only denoises an existing image (or the base's latents): its UNet is
    # conditioned on aesthetic scores, 6 and 2.5 in its training.
    ModelFamily.SDXL_REFINER: {
        "default_width": 1024, "default_height": 1024, "max_width": 2048, "max_height": 2048,
        "default_steps": 30, "default_guidance_scale": 5.0, "schedulers": _NOISE,
        "default_scheduler": "dpmpp_2m", "size_multiple": 8, "tasks": [Task.IMAGE_TO_IMAGE],
        "aesthetic_score": REFINER_AESTHETIC_SCORE,
        "negative_aesthetic_score": REFINER_NEGATIVE_AESTHETIC_SCORE},
    ModelFamily.SD3: {
        "default_width": 1024, "default_height": 1024, "max_width": 2048, "max_height": 2048,
        "default_steps": 28, "default_guidance_scale": 7.0, "schedulers": list(FLOW_SCHEDULERS),
        "default_scheduler": "flow_match_euler", "size_multiple": 16, "tasks": _ALL_TASKS},
    # Flux dev-like; a schnell-like folder (no guidance embedding) gets _FLUX_SCHNELL.
    ModelFamily.FLUX: {
        "default_width": 1024, "default_height": 1024, "max_width": 2048, "max_height": 2048,
        "default_steps": 28, "guidance": GuidanceKind.DISTILLED, "default_guidance_scale": 3.5,
        "schedulers": _FLUX_SCHEDULERS, "default_scheduler": "flow_match_euler", "size_multiple": 16,
        "true_cfg": True, "tasks": _ALL_TASKS},
    ModelFamily.OTHER: {},
}
# Timestep-distilled Flux: four steps, and no guidance input at all.
_FLUX_SCHNELL = {"guidance": GuidanceKind.NONE, "default_guidance_scale": 0.0, "default_steps": 4}

_SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                 "StableDiffusionInpaintPipeline")
_SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                   "StableDiffusionXLInpaintPipeline")
_SD3_PIPELINES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                  "StableDiffusion3InpaintPipeline")
_FLUX_PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
# SD 2.x's text encoder (OpenCLIP ViT-H) is 1024 wide; SD 1.x's CLIP ViT-L 768.
_SD2_CROSS_ATTENTION_DIM = 1024
# Flux pipelines default to 128 latent pixels a side (1024 with the usual VAE).
_FLUX_SAMPLE_SIZE = 128
SMALLEST_MIN_SIZE = 64
# latents 4 + mask 1 + masked-image latents 4
_INPAINT_UNET_CHANNELS = 9
# Text-to-video pipelines (worker/video.py runs them), by the same class name, with the
# spec values their model cards give. AnimateDiff is an SD 1.5 checkpoint plus a
# MotionAdapter, saved together as one pipeline folder. CogVideoX (2b/5b; 1.5 makes 81
# frames at 16 fps: set those in LATENTD_MODELS) is a native video transformer whose
# latents are cut into 2×2 patches.
VIDEO_PIPELINES: dict[str, dict[str, object]] = {
    "AnimateDiffPipeline": {
        "tasks": [Task.TEXT_TO_VIDEO],
        "default_frames": 16,
        "max_frames": 32,
        "default_fps": 8,
        "default_steps": 25,
        "default_scheduler": "ddim",
    },
    "CogVideoXPipeline": {
        "tasks": [Task.TEXT_TO_VIDEO],
        "default_width": 720,
        "default_height": 480,
        "min_width": 32,
        "min_height": 32,
        "max_width": 1360,
        "max_height": 1360,
        "size_multiple": 16,
        "default_frames": 49,
        "min_frames": 9,
        "max_frames": 81,
        "frame_step": 8,
        "default_fps": 8,
        "default_steps": 50,
        "default_guidance_scale": 6.0,
        # Its own DDIM and DPM samplers (worker/video.py), named as the image ones are.
        "schedulers": ["ddim", "dpmpp_2m"],
        "default_scheduler": "ddim",
    },
}

# Upscale pipelines by the class model_index.json names, and the spec each implies:
# diffusers' own call defaults (guidance, noise level), a tile the model runs well at,
# and outputs up to 2048 pixels a side (the input up to 512 for x4, 1024 for x2).
UPSCALE_PIPELINES: dict[str, dict[str, object]] = {
    # SD x4 upscaler: prompt-conditioned, adds noise_level of noise to the low-res input;
    # its latents are the input's size, so a 128-pixel tile is a 512-pixel output tile.
    "StableDiffusionUpscalePipeline": {
        "tasks": [Task.UPSCALE], "scales": [4], "default_steps": 50,
        "default_guidance_scale": 9.0, "default_scheduler": "ddim",
        "default_noise_level": 20, "max_noise_level": 350,
        "tile_size": 128, "tile_overlap": 32,
        "min_width": 64, "min_height": 64, "max_width": 2048, "max_height": 2048,
        "default_width": 512, "default_height": 512,
    },
    # SD latent x2 upscaler: a Karras-preconditioned Euler model (its loop reads the
    # Euler sigmas, so no other sampler runs it), no noise level; run unguided by default
    # as diffusers' example does.
    "StableDiffusionLatentUpscalePipeline": {
        "tasks": [Task.UPSCALE], "scales": [2], "default_steps": 20,
        "default_guidance_scale": 0.0, "default_scheduler": "euler", "schedulers": ["euler"],
        "tile_size": 512, "tile_overlap": 64,
        "min_width": 64, "min_height": 64, "max_width": 2048, "max_height": 2048,
        "default_width": 1024, "default_height": 1024,
    },
}



def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def detect_family(folder: Path) -> ModelFamily:
    """The family of a local diffusers folder, from its JSON files (OTHER if not one)."""
    pipeline = str(_read_json(folder / "model_index.json").get("_class_name", ""))
    if pipeline in _SD_PIPELINES:
        scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
        unet = _read_json(folder / "unet" / "config.json")
        if (scheduler.get("prediction_type") == "v_prediction"
                or unet.get("cross_attention_dim") == _SD2_CROSS_ATTENTION_DIM):
            return ModelFamily.SD2
        return ModelFamily.SD1
    if pipeline in _SDXL_PIPELINES:
        index = _read_json(folder / "model_index.json")
        # The refiner's UNet takes an aesthetic score among its time ids; the pipeline
        # records it, and the refiner has no first text encoder.
        if index.get("requires_aesthetics_score") is True:
            return ModelFamily.SDXL_REFINER
        return ModelFamily.SDXL
    if pipeline in _SD3_PIPELINES:
        return ModelFamily.SD3
    if pipeline in _FLUX_PIPELINES:
        return ModelFamily.FLUX
    return ModelFamily.OTHER


def family_defaults(source: str, family: str | None = None) -> dict[str, object]:
    """Spec values a model implies: its family's (``family`` if given, else detected from
    a local diffusers folder's JSON, no torch), then the folder's own sizes and guidance.

    Values given in ``LATENTD_MODELS`` win over these. A hub id without ``family`` gets
    no defaults (the worker judges it when it loads it).
    """
    folder = Path(source).expanduser()
    is_folder = (folder / "model_index.json").is_file()
    chosen = ModelFamily(family) if family else (
        detect_family(folder) if is_folder else ModelFamily.OTHER)
    defaults: dict[str, object] = {"family": chosen, **FAMILY_DEFAULTS[chosen]}
    if not is_folder:
        return defaults
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    if chosen is ModelFamily.OTHER and "FlowMatch" in str(scheduler.get("_class_name", "")):
        # An unknown flow-matching pipeline: its own sampler is the one known to fit.
        defaults.update(schedulers=[FLOW_SCHEDULERS[0]], default_scheduler=FLOW_SCHEDULERS[0])
    defaults.update(_folder_sizes(folder, chosen))
    unet = _read_json(folder / "unet" / "config.json")
    if unet.get("in_channels") == _INPAINT_UNET_CHANNELS:
        # An inpainting checkpoint: its UNet also reads the mask and the masked image, so
        # it runs only with them.
        defaults["tasks"] = [Task.INPAINT, Task.OUTPAINT]
    if chosen is ModelFamily.FLUX:
        transformer = _read_json(folder / "transformer" / "config.json")
        # FluxTransformer2DModel's guidance_embeds defaults to False (schnell).
        if transformer and not transformer.get("guidance_embeds", False):
            defaults.update(_FLUX_SCHNELL)
    # A video pipeline serves text-to-video alone, with its frame bounds.
    pipeline = str(_read_json(folder / "model_index.json").get("_class_name", ""))
    defaults.update(VIDEO_PIPELINES.get(pipeline, {}))
    if scheduler.get("_class_name") == "CogVideoXDPMScheduler":  # CogVideoX-5b ships DPM
        defaults["default_scheduler"] = "dpmpp_2m"
    upscale = UPSCALE_PIPELINES.get(
        str(_read_json(folder / "model_index.json").get("_class_name", "")))
    if upscale is not None:
        # An upscale pipeline serves upscale alone, at its scale, with its tile.
        defaults.update(upscale)
        max_noise_level = _read_json(folder / "model_index.json").get("max_noise_level")
        if isinstance(max_noise_level, int) and "max_noise_level" in upscale:
            defaults["max_noise_level"] = max_noise_level  # the pipeline's own bound
    return defaults


def _with_defaults(defaults: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` over ``defaults``; a ``guidance`` given over the family's also replaces
    the family's scale defaults, which belong to the family's kind of guidance."""
    given = fields.get("guidance")
    if given is not None and given != defaults.get("guidance", GuidanceKind.CLASSIFIER_FREE):
        defaults = {key: value for key, value in defaults.items() if key not in (
            "default_guidance_scale", "min_guidance_scale", "max_guidance_scale", "true_cfg")}
        if given == GuidanceKind.NONE:
            defaults["default_guidance_scale"] = 0.0
        if given != GuidanceKind.CLASSIFIER_FREE and defaults.get("family") is ModelFamily.FLUX:
            defaults["true_cfg"] = True
    return {**defaults, **fields}


def _folder_sizes(folder: Path, family: ModelFamily) -> dict[str, int]:
    """Native size and size multiple from the folder's VAE and denoiser configs."""
    vae = _read_json(folder / "vae" / "config.json")
    levels = len(vae.get("block_out_channels") or [0, 0, 0, 0])
    vae_factor = 2 ** (levels - 1)
    if family in (ModelFamily.SD1, ModelFamily.SD2, ModelFamily.SDXL,
                  ModelFamily.SDXL_REFINER):
        sample_size = _read_json(folder / "unet" / "config.json").get("sample_size")
        multiple = vae_factor
    elif family is ModelFamily.SD3:
        transformer = _read_json(folder / "transformer" / "config.json")
        sample_size = transformer.get("sample_size")
        multiple = vae_factor * int(transformer.get("patch_size", 2))
    elif family is ModelFamily.FLUX:
        # Flux packs 2×2 latent pixels into one token.
        sample_size, multiple = _FLUX_SAMPLE_SIZE, vae_factor * 2
    else:
        return {}
    if not isinstance(sample_size, int):
        return {}
    # Requests are multiples of 8 already; the model's own multiple comes on top.
    multiple = math.lcm(8, multiple)
    native = max(multiple, sample_size * vae_factor // multiple * multiple)
    smallest = -(-min(SMALLEST_MIN_SIZE, native) // multiple) * multiple
    largest = max(2 * native, int(FAMILY_DEFAULTS[family].get("max_width", native)))
    return {"size_multiple": multiple, "default_width": native, "default_height": native,
                "min_width": smallest, "min_height": smallest, "max_width": largest, "max_height": largest}


def queue_for_model(name: str) -> str:
    """Celery queue of a model's generation tasks: one queue per model."""
    return f"gen.{name}"
