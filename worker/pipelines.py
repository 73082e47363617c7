"""Model sources → loaded diffusers pipelines: one text-to-image load per model, with the
image-to-image and inpaint variants built on the same weights (``from_pipe``); upscale
models load as their own upscale pipeline instead.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DDIMScheduler,
    DiffusionPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import SingleFileComponentError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from shared.model_registry import (
    EMBEDDED_PREFIX,
    EMOJI,
    EMOJI_UPSCALER,
    TINY_RANDOM,
    ModelFamily,
    ModelSpec,
)
from shared.schemas import Task
from shared.settings import Settings
from worker import fast_path

logger = logging.getLogger(__name__)

TINY_RANDOM_SEED = 0
# CLIP's context length: prompts are truncated to it, like Stable Diffusion's.
TINY_MAX_TOKENS = 77
# The diffusers pipeline classes an upscale model's folder may hold.
UPSCALE_PIPELINE_CLASSES = (StableDiffusionUpscalePipeline, StableDiffusionLatentUpscalePipeline)


class ModelLoadError(RuntimeError):
    """A model's source could not be turned into a pipeline (missing, offline, unsupported)."""


@dataclass
class LoadedModel:
    """One model's pipelines, all sharing the same weights on one device (an upscale
    model has its upscale pipeline alone)."""

    spec: ModelSpec
    # None for a model that only refines (the SDXL refiner).
    text_to_image: DiffusionPipeline | None
    image_to_image: DiffusionPipeline | None
    inpaint: DiffusionPipeline | None
    # The scheduler config the model shipped with: every run's scheduler starts from it
    # (empty for a pipeline without a diffusers scheduler).
    scheduler_config: Mapping[str, Any]
    device: torch.device
    dtype: torch.dtype
    # A video model's pipeline (worker/video.py loads it); None for image models.
    text_to_video: DiffusionPipeline | None = None
    upscale: DiffusionPipeline | None = None

    def pipeline_for(self, task: Task) -> DiffusionPipeline | None:
        """The pipeline that runs ``task`` (outpaint is inpainting a padded canvas)."""
        if task not in self.spec.tasks:
            return None
        return {
            Task.TEXT_TO_IMAGE: self.text_to_image,
            Task.IMAGE_TO_IMAGE: self.image_to_image,
            Task.INPAINT: self.inpaint,
            Task.OUTPAINT: self.inpaint,
            Task.TEXT_TO_VIDEO: self.text_to_video,
            Task.UPSCALE: self.upscale,
        }[task]


def torch_dtype_for(device: str, spec: ModelSpec | None = None) -> torch.dtype:
    """The spec's ``dtype``, else: on CUDA bfloat16 for Flux (its activations overflow
    float16) and float16 for the others (twice the speed, half the memory); float32 on CPU."""
    if spec is not None and spec.dtype is not None:
        return getattr(torch, spec.dtype)
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if spec is not None and spec.family is ModelFamily.FLUX else (
        torch.float16)


def configure_torch(settings: Settings) -> None:
    """Apply process-wide torch settings (threads, the fast path's TF32) before any model
    runs."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    fast_path.configure_backends(fast_path.fast_path_for(settings))


def load_pipeline(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """Load ``spec``'s weights once and derive the pipeline of each task it serves."""
    if spec.serves_video:
        # Imported here: worker.video builds on this module's types.
        from worker.video import load_video_model
        return load_video_model(spec, settings)
    configure_torch(settings)
    device = torch.device(settings.device)
    dtype = torch_dtype_for(settings.device, spec)
    if Task.UPSCALE in spec.tasks:
        return _load_upscale(spec, device, dtype)
    pipe = _load(spec, dtype)
    _place(pipe, spec, device, fast_path.fast_path_for(settings))
    pipe.set_progress_bar_config(disable=True)
    text_to_image = _text_to_image(pipe, spec)
    image_to_image = _derive(AutoPipelineForImage2Image, pipe, spec, Task.IMAGE_TO_IMAGE)
    inpaint = _derive(AutoPipelineForInpainting, pipe, spec, Task.INPAINT)
    logger.info(
        "loaded model %s (%s, %s) as %s on %s/%s", spec.name, spec.source, spec.family.value,
        type(pipe).__name__, device, str(dtype).removeprefix("torch."),
    )
    return LoadedModel(
        spec=spec,
        text_to_image=text_to_image,
        image_to_image=image_to_image,
        inpaint=inpaint,
        scheduler_config=dict(pipe.scheduler.config),
        device=device,
        dtype=dtype,
    )


def _text_to_image(pipe: DiffusionPipeline, spec: ModelSpec) -> DiffusionPipeline | None:
    """The loaded pipeline itself when it is a text-to-image one (most folders are; the
    embedded model's class is its own), else its text-to-image sibling."""
    if Task.TEXT_TO_IMAGE not in spec.tasks:
        return None
    name = type(pipe).__name__
    if "Img2Img" in name or "Inpaint" in name:
        return _derive(AutoPipelineForText2Image, pipe, spec, Task.TEXT_TO_IMAGE)
    return pipe


def _place(pipe: DiffusionPipeline, spec: ModelSpec, device: torch.device,
           tuning: fast_path.FastPath) -> None:
    """Move the weights to ``device``, or with ``cpu_offload`` (the spec's, or
    LATENTD_CPU_OFFLOAD for every model) let each module visit the GPU only while it
    runs; ``vae_tiling`` decodes large images tile by tile; then the fast path."""
    if (spec.cpu_offload or tuning.cpu_offload) and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        if spec.cpu_offload:
            # Nothing to offload to: on the CPU the weights are in CPU memory anyway.
            logger.info("model %s: cpu_offload ignored on %s", spec.name, device)
        pipe.to(device)
    if spec.vae_tiling:
        pipe.vae.enable_tiling()
    fast_path.tune(pipe, tuning)


def _load_upscale(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """An upscale model: its own pipeline class, never a text-to-image one."""
    pipe = _load_upscale_pipeline(spec, dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    logger.info(
        "loaded upscale model %s (%s) as %s on %s/%s",
        spec.name, spec.source, type(pipe).__name__, device, str(dtype).removeprefix("torch."),
    )
    scheduler = getattr(pipe, "scheduler", None)
    return LoadedModel(
        spec=spec, text_to_image=None, image_to_image=None, inpaint=None, upscale=pipe,
        scheduler_config=dict(scheduler.config) if scheduler is not None else {},
        device=device, dtype=dtype,
    )


def _load_upscale_pipeline(spec: ModelSpec, dtype: torch.dtype) -> DiffusionPipeline:
    source = spec.source
    if source == EMBEDDED_PREFIX + EMOJI_UPSCALER:
        return _load_emoji_upscaler(dtype)
    if source.startswith(EMBEDDED_PREFIX):
        raise ModelLoadError(f"model '{spec.name}': {source!r} is not an upscale model")
    path = Path(source).expanduser()
    if not path.is_dir() and (path.is_absolute() or source.startswith((".", "~"))):
        raise ModelLoadError(f"model '{spec.name}': directory {source!r} does not exist")
    local = path.is_dir()
    try:
        pipe = DiffusionPipeline.from_pretrained(
            path if local else source, dtype=dtype, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model '{spec.name}': {source!r} is not a loadable diffusers pipeline ({exc})"
            + ("" if local else ". Hub models need network access the first time (or a "
               "populated HF cache); point the model at a local directory to run offline.")
        ) from exc
    if not isinstance(pipe, UPSCALE_PIPELINE_CLASSES):
        names = ", ".join(c.__name__ for c in UPSCALE_PIPELINE_CLASSES)
        raise ModelLoadError(f"model '{spec.name}' serves upscale, but {source!r} holds a "
                             f"{type(pipe).__name__}, not one of {names}")
    return pipe


def _load_emoji_upscaler(dtype: torch.dtype) -> DiffusionPipeline:
    try:
        # Imported here, like the emoji model: optional and heavy.
        module = importlib.import_module("models.upscaler_pipeline")
    except ImportError as exc:
        raise ModelLoadError(f"the embedded emoji upscaler is not available: {exc}") from exc
    try:
        return module.load_emoji_upscaler_pipeline(dtype=dtype)
    except OSError as exc:  # weights not trained/shipped yet, or a pinned file mismatch
        raise ModelLoadError(f"the embedded emoji upscaler could not be loaded: {exc}") from exc


def _derive(
    auto_class: Any, pipe: DiffusionPipeline, spec: ModelSpec, task: Task
) -> DiffusionPipeline | None:
    """The ``task`` variant of ``pipe`` on the same modules, or None if diffusers has none."""
    wanted = task in spec.tasks or (task is Task.INPAINT and Task.OUTPAINT in spec.tasks)
    if not wanted:
        return None
    try:
        derived = auto_class.from_pipe(pipe)
    except (ValueError, KeyError, TypeError) as exc:
        # Some pipelines have no sibling for a task: the model still serves the others
        # and requests for the missing task fail clearly.
        logger.warning("model %s has no %s pipeline: %s", spec.name, task.value, exc)
        return None
    derived.set_progress_bar_config(disable=True)
    return derived


def _load(spec: ModelSpec, dtype: torch.dtype) -> DiffusionPipeline:
    """The model's own pipeline class (a refiner folder loads as image-to-image)."""
    source = spec.source
    if source.startswith(EMBEDDED_PREFIX):
        return _load_builtin(source.removeprefix(EMBEDDED_PREFIX), dtype)
    path = Path(source).expanduser()
    if spec.is_single_file:
        return _load_single_file(spec, path, dtype)
    if path.is_dir():
        return _load_local_directory(spec, path, dtype)
    if path.is_absolute() or source.startswith((".", "~")):
        raise ModelLoadError(f"model '{spec.name}': directory {source!r} does not exist")
    return _load_from_hub(spec, source, dtype)


# Single-file checkpoints name no pipeline class: the spec's family does.
SINGLE_FILE_PIPELINES: dict[ModelFamily, type[DiffusionPipeline]] = {
    ModelFamily.SD1: StableDiffusionPipeline,
    ModelFamily.SD2: StableDiffusionPipeline,
    ModelFamily.SDXL: StableDiffusionXLPipeline,
    ModelFamily.SDXL_REFINER: StableDiffusionXLImg2ImgPipeline,
    ModelFamily.SD3: StableDiffusion3Pipeline,
    ModelFamily.FLUX: FluxPipeline,
}


# The denoiser of each family: what a denoiser-only checkpoint (most Flux and SD3 files)
# holds, under the folder name its pipeline keeps it.
SINGLE_FILE_DENOISERS: dict[ModelFamily, tuple[str, Any]] = {
    ModelFamily.SD1: ("unet", UNet2DConditionModel),
    ModelFamily.SD2: ("unet", UNet2DConditionModel),
    ModelFamily.SDXL: ("unet", UNet2DConditionModel),
    ModelFamily.SDXL_REFINER: ("unet", UNet2DConditionModel),
    ModelFamily.SD3: ("transformer", SD3Transformer2DModel),
    ModelFamily.FLUX: ("transformer", FluxTransformer2DModel),
}


def _load_single_file(spec: ModelSpec, path: Path, dtype: torch.dtype) -> DiffusionPipeline:
    """A ``.safetensors``/``.ckpt`` checkpoint. Its configs come from ``config`` (a local
    diffusers folder: offline) or, without one, from the hub repo diffusers infers from
    the weights (needs network the first time). A checkpoint holding only the denoiser
    (the usual Flux and SD3 files) takes every other module from the ``config`` folder."""
    if not path.is_file():
        raise ModelLoadError(f"model '{spec.name}': checkpoint {str(path)!r} does not exist")
    pipeline_class = SINGLE_FILE_PIPELINES.get(spec.family)
    if pipeline_class is None:
        raise ModelLoadError(f"model '{spec.name}': single-file checkpoints need a family "
                             f"({', '.join(SINGLE_FILE_PIPELINES)})")
    config_dir = Path(spec.config).expanduser() if spec.config else None
    local_config = config_dir is not None and config_dir.is_dir()
    try:
        try:
            return pipeline_class.from_single_file(
                str(path), config=str(config_dir) if local_config else spec.config,
                torch_dtype=dtype, local_files_only=local_config,
            )
        except SingleFileComponentError:
            if not local_config:
                raise
            assert config_dir is not None
            return _load_denoiser_only(spec, path, config_dir, dtype)
    except (OSError, ValueError, SingleFileComponentError) as exc:
        hint = ("" if local_config else " Without a local \"config\" folder diffusers fetches "
                "the pipeline's configs from the hub, which needs network access.")
        raise ModelLoadError(
            f"model '{spec.name}': {path} is not a loadable {spec.family.value} "
            f"checkpoint ({exc}).{hint}"
        ) from exc


def _load_denoiser_only(
    spec: ModelSpec, path: Path, config_dir: Path, dtype: torch.dtype
) -> DiffusionPipeline:
    """The checkpoint's denoiser in the ``config`` folder's pipeline."""
    folder, model_class = SINGLE_FILE_DENOISERS[spec.family]
    denoiser = model_class.from_single_file(
        str(path), config=str(config_dir), subfolder=folder, torch_dtype=dtype,
        local_files_only=True,
    )
    return DiffusionPipeline.from_pretrained(
        config_dir, dtype=dtype, variant=spec.variant, local_files_only=True,
        **{folder: denoiser},
    )


def _load_builtin(name: str, dtype: torch.dtype) -> DiffusionPipeline:
    if name == TINY_RANDOM:
        pipe = build_tiny_random_pipeline()
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    if name == EMOJI:
        return _load_emoji(dtype)
    raise ModelLoadError(f"unknown built-in model 'builtin:{name}'")


def _load_emoji(dtype: torch.dtype) -> DiffusionPipeline:
    try:
        # Imported here: the embedded model's module is optional and heavy.
        from models.pipeline import load_emoji_pipeline
    except ImportError as exc:
        raise ModelLoadError(f"the embedded emoji model is not available: {exc}") from exc
    accepted = inspect.signature(load_emoji_pipeline).parameters
    kwargs: dict[str, Any] = {key: dtype for key in ("dtype", "torch_dtype") if key in accepted}
    try:
        pipe = load_emoji_pipeline(**kwargs)
    except OSError as exc:  # weights not trained/shipped yet, or a pinned file mismatch
        raise ModelLoadError(f"the embedded emoji model could not be loaded: {exc}") from exc
    return pipe if pipe.dtype == dtype else pipe.to(dtype=dtype)


def _load_local_directory(spec: ModelSpec, path: Path, dtype: torch.dtype) -> DiffusionPipeline:
    try:
        return DiffusionPipeline.from_pretrained(
            path, dtype=dtype, variant=spec.variant, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        variant = f" (variant {spec.variant!r})" if spec.variant else ""
        raise ModelLoadError(
            f"{path} is not a loadable diffusers pipeline{variant}: {exc}") from exc


def _load_from_hub(spec: ModelSpec, repo_id: str, dtype: torch.dtype) -> DiffusionPipeline:
    try:
        return DiffusionPipeline.from_pretrained(repo_id, dtype=dtype, variant=spec.variant)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model '{spec.name}': could not load hub id {repo_id!r} ({exc}). Hub models need "
            "network access the first time (or a populated HF cache); point the model at a "
            "local diffusers directory to run offline."
        ) from exc


# --- builtin:tiny-random ----------------------------------------------------------------


def build_tiny_random_pipeline() -> StableDiffusionPipeline:
    """A Stable-Diffusion-shaped pipeline with tiny random weights, identical on every call.

    Built in code (no download): the same shapes as diffusers' own pipeline tests, except a
    4-level VAE so latents are 1/8 of the image like the real model's.
    """
    # Seed a private copy of the RNG so building the model never disturbs the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_RANDOM_SEED)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 32, 32),
            norm_num_groups=8,
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            sample_size=64,
        )
        tokenizer = build_byte_level_clip_tokenizer()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=TINY_MAX_TOKENS,
                layer_norm_eps=1e-5,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    # Stable Diffusion 1.x's noise schedule.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_byte_level_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and no merges, made offline.

    Every string tokenizes (one token per byte, the last of a word marked ``</w>``), so
    any prompt works while the vocabulary stays at 514 entries.
    """
    symbols = _bytes_to_unicode()
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": len(symbols) + index for index, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TINY_MAX_TOKENS)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's table of 256 printable characters standing for the 256 byte values."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codepoints = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codepoints.append(256 + extra)
            extra += 1
    return [chr(codepoint) for codepoint in codepoints]
