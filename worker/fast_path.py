"""The GPU fast path: how a loaded pipeline is placed and tuned for the device.

On an NVIDIA GPU every model (its weights already in half precision, chosen by
``worker.pipelines.torch_dtype_for``) gets, by default:
- PyTorch's fused scaled-dot-product attention (``AttnProcessor2_0``, the default of
  recent diffusers, set explicitly where a pipeline came with another processor);
- ``channels_last`` memory format for the UNet and VAE convolutions (cuDNN's fast
  layout for NHWC kernels);
- VAE slicing (a batch is decoded one image at a time: the decode's memory peak stays
  one image's, whatever the batch) and VAE tiling (kicks in only for latents larger
  than the VAE's own sample size, so normal sizes decode exactly as before);
- TF32 matmuls and convolutions: float32 work left in a half-precision pipeline (the
  schedulers, upcast VAE parts) runs on tensor cores with a 10-bit mantissa, well below
  what 8-bit output pixels can show.

Opt-in: ``LATENTD_TORCH_COMPILE`` compiles the denoiser (UNet or transformer) and the
VAE decoder with ``torch.compile``. On a GPU (and whenever compiling) the worker runs a warm-up generation
per model at worker start, alone and as a full batch, before it beats (so /readyz
reports the model served only once it is warm): the first call of each new shape
compiles for tens of seconds, and cuDNN's benchmark mode times its kernels on it.
``LATENTD_CPU_OFFLOAD`` keeps each model's modules in CPU memory and moves each to the
GPU only while it runs (accelerate's model offload, as a model spec's ``cpu_offload``
does for one model): slower, for GPUs too small for the model.

On the CPU nothing here changes the pipeline (float32, as loaded), so CPU results stay
the reference the tests compare against (``LATENTD_TORCH_COMPILE`` works there too, but
compiling takes minutes even for the tiny test model). ``LATENTD_FAST_PATH=false`` turns
every default off on a GPU too (plain diffusers in half precision), for comparisons.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from shared.settings import Settings

if TYPE_CHECKING:  # the engine imports the pipelines module, which imports this one
    from worker.engine import GenerationEngine

logger = logging.getLogger(__name__)

# The warm-up's denoising steps: enough to run every module of the call once.
WARM_UP_STEPS = 2


@dataclass(frozen=True)
class FastPath:
    """What is done to each pipeline of a worker process (all process-wide settings)."""

    sdpa_attention: bool = False
    channels_last: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    tf32: bool = False
    compile: bool = False
    cpu_offload: bool = False
    # Run a generation per model before serving: compiled modules trace, and cuDNN's
    # benchmark mode times its kernels, on the first call of each shape.
    warm_up: bool = False


def fast_path_for(settings: Settings) -> FastPath:
    """The fast path for the worker's device: everything on an NVIDIA GPU, nothing on CPU."""
    compile = settings.torch_compile
    if not settings.device.startswith("cuda"):
        # Compiling works on CPU too, but takes minutes even for the tiny test model.
        return FastPath(compile=compile, warm_up=compile)
    if not settings.fast_path:
        return FastPath(compile=compile, cpu_offload=settings.cpu_offload, warm_up=compile)
    return FastPath(sdpa_attention=True, channels_last=True, vae_slicing=True,
                    vae_tiling=True, tf32=True, compile=compile,
                    cpu_offload=settings.cpu_offload, warm_up=True)


def configure_backends(fast_path: FastPath) -> None:
    """Process-wide torch switches (before any model runs)."""
    if fast_path.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # Let cuDNN pick the fastest convolution for each shape (shapes repeat every step).
        torch.backends.cudnn.benchmark = True


def place(pipe: DiffusionPipeline, device: torch.device, fast_path: FastPath) -> None:
    """Move ``pipe`` to ``device`` (or offload it) and tune it; its derived pipelines
    (image-to-image, inpaint) share these very modules."""
    if fast_path.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    tune(pipe, fast_path)


def tune(pipe: DiffusionPipeline, fast_path: FastPath) -> None:
    """Apply the fast path to a pipeline already on its device."""
    if fast_path.sdpa_attention and hasattr(pipe, "unet"):
        _use_sdpa(pipe.unet)
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and fast_path.channels_last:
            module.to(memory_format=torch.channels_last)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if fast_path.vae_slicing:
            vae.enable_slicing()
        if fast_path.vae_tiling:
            vae.enable_tiling()
    if fast_path.compile:
        _compile(pipe)


def _use_sdpa(unet: Any) -> None:
    processors: Mapping[str, Any] = unet.attn_processors
    if all(isinstance(processor, AttnProcessor2_0) for processor in processors.values()):
        return  # diffusers' default already
    unet.set_attn_processor(AttnProcessor2_0())


def _compile(pipe: DiffusionPipeline) -> None:
    # "max-autotune" is what diffusers' and PyTorch's diffusion guides use for the UNet;
    # fullgraph=False: a pipeline's callback and scheduler code stay eager.
    # The denoiser: a UNet (SD 1.x/2.x, SDXL) or a transformer (SD3, Flux).
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, torch.compile(getattr(pipe, name), mode="max-autotune"))
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        vae.decode = torch.compile(vae.decode, mode="max-autotune")


def warm_up(engine: GenerationEngine, max_batch: int) -> dict[str, float]:
    """One short generation per model at its default size, alone and as a full batch (the
    shapes a compiled module is then traced for); seconds per model. Run before the
    worker beats, so it is reported serving only once warm."""
    from shared.schemas import JobPlan, OutputFormat, Priority, Task

    seconds: dict[str, float] = {}
    for name, model in engine.models.items():
        spec = model.spec
        if model.pipeline_for(Task.TEXT_TO_IMAGE) is None:
            continue  # a refiner: it runs inside its base model's jobs, warmed up there
        started = time.monotonic()
        plans = [
            JobPlan(task=Task.TEXT_TO_IMAGE, model=name, prompt="warm-up",
                    negative_prompt=None, guidance=spec.guidance, width=spec.default_width, height=spec.default_height,
                    num_images=1, steps=WARM_UP_STEPS, guidance_scale=spec.default_guidance_scale,
                    scheduler=spec.default_scheduler, seeds=[seed], strength=None,
                    outpaint=None, output_format=OutputFormat.PNG, priority=Priority.NORMAL,
                    webhook=None)
            for seed in range(max(1, max_batch))
        ]
        engine.generate(plans[0])
        if len(plans) > 1:
            engine.generate_batch(plans, [_never_stop] * len(plans))
        seconds[name] = time.monotonic() - started
        logger.info("model %s warmed up in %.1fs", name, seconds[name])
    return seconds


def _never_stop(step: int, total_steps: int) -> bool:
    return False
