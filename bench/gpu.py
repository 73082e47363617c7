"""GPU throughput of SD 1.5- and SDXL-architecture pipelines with random weights, in one
run on one GPU: plain diffusers, the service's engine with the fast path, the same
compiled, the whole service vs direct, and the batching gain; the published reference
beside them.

    python -m bench.gpu                    # on an NVIDIA GPU: the published shapes
    python -m bench.gpu --tiny             # tiny shapes on the CPU (the default without CUDA)
    python -m bench.gpu --models sd15 --no-compile --steps 20

The pipelines are built in code from the published configs (``unet/config.json``,
``vae/config.json``, ``text_encoder*/config.json`` of runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-xl-base-1.0), with random weights: no download, and speed
does not depend on the weights' values. The tokenizer is the byte-level CLIP tokenizer
of the tiny test model (worker/pipelines.py); token ids fall inside the published
vocabulary, so every tensor has the published shape. it/s counts denoising steps per
second (the UNet calls, as diffusers' progress bar does), timed from the first step's
end to the last's. Measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from shared.model_registry import ModelSpec
from shared.schemas import JobPlan, OutputFormat, Priority, Task
from shared.settings import Settings
from worker.engine import GenerationEngine
from worker.fast_path import FastPath, configure_backends, fast_path_for, place, warm_up
from worker.pipelines import LoadedModel, build_byte_level_clip_tokenizer, torch_dtype_for

REFERENCE = ("published reference (stable-fast's README): SD 1.5 on an H100, fp16, batch 1, "
             "512x512: 54.5 it/s plain diffusers, 66 it/s compiled")
PROMPT = "a photograph of an astronaut riding a horse"
CLIP_VOCAB = 49408  # CLIP's BPE vocabulary (the byte-level tokenizer's ids lie below it)

# --- the published configs ---------------------------------------------------------------

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "act_fn": "silu",
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "norm_eps": 1e-5,
}
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
}
VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32, "act_fn": "silu",
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}
CLIP_L = {"vocab_size": CLIP_VOCAB, "hidden_size": 768, "intermediate_size": 3072,
              "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
              "hidden_act": "quick_gelu", "projection_dim": 768}
OPENCLIP_BIG_G = {"vocab_size": CLIP_VOCAB, "hidden_size": 1280, "intermediate_size": 5120,
                  "num_hidden_layers": 32, "num_attention_heads": 20,
                  "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1280}
SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}

# --- tiny stand-ins for the CPU (the same architectures, small widths) -----------------

TINY_SD15_UNET = dict(SD15_UNET, block_out_channels=(32, 64), layers_per_block=1,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                      cross_attention_dim=32, attention_head_dim=(2, 4), sample_size=8)
TINY_SDXL_UNET = dict(SDXL_UNET, block_out_channels=(32, 64), layers_per_block=1,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                      transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4),
                      cross_attention_dim=64, addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=80, sample_size=8)
TINY_VAE = dict(VAE, block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8)
TINY_CLIP = dict(CLIP_L, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, projection_dim=32)


@dataclass(frozen=True)
class Architecture:
    name: str
    pipeline: type
    unet: dict
    vae: dict
    text_encoders: tuple[dict, ...]
    size: int  # the published default resolution


def architectures(tiny: bool) -> dict[str, Architecture]:
    if tiny:
        return {
            "sd15": Architecture("sd15", StableDiffusionPipeline, TINY_SD15_UNET,
                                 dict(TINY_VAE, sample_size=64), (TINY_CLIP,), 64),
            # CLIP-L 32 wide + bigG-shaped 32 wide = 64 = the tiny UNet's cross-attention.
            "sdxl": Architecture("sdxl", StableDiffusionXLPipeline, TINY_SDXL_UNET,
                                 dict(TINY_VAE, sample_size=64, force_upcast=True),
                                 (TINY_CLIP, dict(TINY_CLIP, hidden_act="gelu")), 64),
        }
    return {
        "sd15": Architecture("sd15", StableDiffusionPipeline, SD15_UNET,
                             dict(VAE, sample_size=512, scaling_factor=0.18215),
                             (CLIP_L,), 512),
        "sdxl": Architecture("sdxl", StableDiffusionXLPipeline, SDXL_UNET,
                             dict(VAE, sample_size=1024, scaling_factor=0.13025,
                                  force_upcast=True),
                             (CLIP_L, OPENCLIP_BIG_G), 1024),
    }


def build(arch: Architecture, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """The architecture with random weights, created on ``device`` (no CPU detour)."""
    torch.manual_seed(0)
    tokenizer = build_byte_level_clip_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    with torch.device(device):
        unet = UNet2DConditionModel(**arch.unet)
        vae = AutoencoderKL(**arch.vae)
        encoders = [CLIPTextModel(CLIPTextConfig(**arch.text_encoders[0], **ids))]
        if len(arch.text_encoders) > 1:
            encoders.append(CLIPTextModelWithProjection(
                CLIPTextConfig(**arch.text_encoders[1], **ids)))
    scheduler = DDIMScheduler(**SCHEDULER)
    parts: dict[str, Any] = {"unet": unet.eval(), "vae": vae.eval(), "scheduler": scheduler,
                                 "tokenizer": tokenizer, "text_encoder": encoders[0].eval()}
    if arch.pipeline is StableDiffusionXLPipeline:
        parts.update(text_encoder_2=encoders[1].eval(), tokenizer_2=tokenizer)
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = arch.pipeline(**parts).to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- measuring ---------------------------------------------------------------------------


class StepClock:
    """Times each denoising step's end; it/s from the first step's end to the last's."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def its(self) -> float:
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def plain_its(pipe: DiffusionPipeline, size: int, steps: int, batch: int = 1) -> float:
    """Diffusers as documented: ``pipe(prompt)``, fp16, no other change."""
    clock = StepClock()

    def on_step(pipe: Any, index: int, timestep: Any, kwargs: dict) -> dict:
        clock.tick()
        return kwargs

    pipe(PROMPT, num_inference_steps=steps, width=size, height=size,
         num_images_per_prompt=batch, callback_on_step_end=on_step, output_type="pil")
    return clock.its()


def plan_for(name: str, size: int, steps: int, seed: int = 1) -> JobPlan:
    return JobPlan(task=Task.TEXT_TO_IMAGE, model=name, prompt=PROMPT, negative_prompt=None,
                   width=size, height=size, num_images=1, steps=steps, guidance_scale=7.5,
                   scheduler="ddim", seeds=[seed], strength=None, outpaint=None,
                   output_format=OutputFormat.PNG, priority=Priority.NORMAL, webhook=None)


def engine_for(name: str, pipe: DiffusionPipeline, size: int, device: torch.device,
               dtype: torch.dtype) -> GenerationEngine:
    spec = ModelSpec(name=name, source="bench", tasks=[Task.TEXT_TO_IMAGE],
                     default_width=size, default_height=size, max_width=max(1024, size),
                     max_height=max(1024, size), default_scheduler="ddim")
    return GenerationEngine({name: LoadedModel(
        spec=spec, text_to_image=pipe, image_to_image=None, inpaint=None,
        scheduler_config=dict(pipe.scheduler.config), device=device, dtype=dtype)})


def engine_its(engine: GenerationEngine, plan: JobPlan) -> float:
    clock = StepClock()

    def on_step(step: int, total: int) -> bool:
        clock.tick()
        return False

    engine.generate(plan, on_step=on_step)
    return clock.its()


def images_per_second(run: Callable[[], None], images: int) -> float:
    started = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images / (time.perf_counter() - started)


def batching_gain(engine: GenerationEngine, name: str, size: int, steps: int,
                  batch: int) -> tuple[float, float]:
    """(images/s one call per image, images/s one call for all) for ``batch`` images."""
    plans = [plan_for(name, size, steps, seed=i) for i in range(batch)]
    never: list[Callable[[int, int], bool]] = [lambda step, total: False] * batch
    engine.generate_batch(plans, never)  # warm: this batch shape's kernels
    alone = images_per_second(lambda: [engine.generate(plan) for plan in plans], batch)
    together = images_per_second(lambda: engine.generate_batch(plans, never), batch)
    return alone, together


def service_vs_direct(name: str, pipe: DiffusionPipeline, size: int, steps: int,
                      device: str, jobs: int, engine: GenerationEngine) -> tuple[float, float]:
    """(images/s direct engine calls, images/s through the service) for ``jobs`` jobs
    submitted at once; the service serves the same pipeline saved to a folder."""
    import asyncio

    from scripts.service_processes import running_service

    workdir = Path(tempfile.mkdtemp(prefix="latentd-bench-gpu-"))
    folder = workdir / name
    pipe.save_pretrained(folder)
    models = {name: {"source": str(folder), "default_width": size, "default_height": size,
                     "max_width": max(1024, size), "max_height": max(1024, size),
                     "min_width": min(64, size), "min_height": min(64, size),
                     "default_scheduler": "ddim", "default_steps": steps}}
    env = {"LATENTD_MODELS": json.dumps(models), "LATENTD_DEFAULT_MODEL": name,
           "LATENTD_WORKER_MODELS": name, "LATENTD_DEVICE": device,
           "LATENTD_TORCH_THREADS": str(torch.get_num_threads())}
    bodies = [{"model": name, "prompt": PROMPT, "seed": i, "steps": steps} for i in range(jobs)]

    async def at_once(url: str) -> float:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            async def one(body: dict) -> None:
                response = await client.post("/v1/jobs", json=body,
                                             headers={"Prefer": "wait=60"})
                while response.status_code == 202 or response.json()["status"] in (
                        "queued", "running"):
                    response = await client.get(f"/v1/jobs/{response.json()['id']}",
                                                headers={"Prefer": "wait=60"})
                assert response.json()["status"] == "succeeded", response.text[:300]
            started = time.perf_counter()
            await asyncio.gather(*(one(body) for body in bodies))
            return time.perf_counter() - started

    plans = [plan_for(name, size, steps, seed=i) for i in range(jobs)]
    try:
        with running_service(workdir, env, node_tag="bench-gpu") as service:
            asyncio.run(at_once(service.url))  # warm-up round
            service_rate = jobs / asyncio.run(at_once(service.url))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    direct_rate = images_per_second(lambda: [engine.generate(plan) for plan in plans], jobs)
    return direct_rate, service_rate


# --- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[str]:
    on_gpu = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if on_gpu else "cpu")
    settings = Settings(device=device.type)
    tuned = fast_path_for(settings)
    dtype = torch_dtype_for(device.type)
    lines = [
        (f"latentd GPU benchmark on {torch.cuda.get_device_name() if on_gpu else 'CPU'}: "
        f"torch {torch.__version__}, {str(dtype).removeprefix('torch.')}, "
        f"{args.steps} steps, DDIM, guidance 7.5, random weights"),
    ]
    if not on_gpu:
        lines.append("  NOT A GPU RUN: tiny configs on the CPU (the published architectures "
                     "at small widths); the figures only show the benchmark works and are "
                     "not comparable to the reference")
    lines.append(f"  {REFERENCE}")
    for name in args.models:
        arch = architectures(not on_gpu)[name]
        size = arch.size if args.size is None else args.size
        _progress(f"{name}: building with random weights on {device}")
        pipe = build(arch, device, dtype)
        plain = statistics.median(plain_its(pipe, size, args.steps) for _ in range(2))
        place(pipe, device, FastPath(**{**tuned.__dict__, "compile": False}))
        configure_backends(tuned)
        engine = engine_for(name, pipe, size, device, dtype)
        plan = plan_for(name, size, args.steps)
        engine.generate(plan)  # warm (cuDNN benchmark picks its kernels)
        fast = statistics.median(engine_its(engine, plan) for _ in range(2))
        lines += ["", f"{name} ({arch.pipeline.__name__}), {size}x{size}, batch 1",
                  f"  plain diffusers pipe(prompt)            {plain:8.2f} it/s",
                  (f"  service engine, fast path               {fast:8.2f} it/s   "
                  f"({fast / plain:.2f}x plain)")]
        for batch in args.batches:
            _progress(f"{name}: batching gain at {batch}")
            alone, together = batching_gain(engine, name, size, args.steps, batch)
            lines.append(f"  batching gain at {batch}: {alone:.2f} -> {together:.2f} images/s "
                         f"({together / alone:.2f}x)")
        if args.service:
            _progress(f"{name}: the whole service vs direct")
            direct_rate, service_rate = service_vs_direct(
                name, pipe, size, args.steps, device.type, args.service_jobs, engine)
            lines.append(f"  end to end, {args.service_jobs} jobs at once: service "
                         f"{service_rate:.2f} images/s (batching on) vs direct "
                         f"{direct_rate:.2f} (one engine call per job) "
                         f"({service_rate / direct_rate:.2f}x)")
        if args.compile:
            _progress(f"{name}: torch.compile (minutes: every shape is traced and tuned)")
            compiled_pipe = build(arch, device, dtype)
            place(compiled_pipe, device, FastPath(**{**tuned.__dict__, "compile": True}))
            compiled = engine_for(name, compiled_pipe, size, device, dtype)
            warm_up(compiled, max_batch=1)
            compiled_its = statistics.median(engine_its(compiled, plan) for _ in range(2))
            lines.append(f"  service engine, fast path + compile     {compiled_its:8.2f} it/s   "
                         f"({compiled_its / plain:.2f}x plain)")
        del pipe, engine
        if on_gpu:
            torch.cuda.empty_cache()
    return lines


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny configs on the CPU (the default where CUDA is absent)")
    parser.add_argument("--models", type=lambda text: text.split(","), default=["sd15", "sdxl"],
                        help="comma-separated: sd15, sdxl (default both)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    parser.add_argument("--size", type=int, default=None,
                        help="image side (default: 512 for sd15, 1024 for sdxl; 64 tiny)")
    parser.add_argument("--batches", type=lambda text: [int(b) for b in text.split(",")],
                        default=[4, 8], help="batch sizes for the batching gain (default 4,8)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile line (it compiles for minutes)")
    parser.add_argument("--no-service", dest="service", action="store_false",
                        help="skip the end-to-end line (it saves the model and starts "
                             "the service)")
    parser.add_argument("--service-jobs", type=int, default=8,
                        help="jobs submitted at once for the end-to-end line (default 8)")
    args = parser.parse_args(argv)
    unknown = set(args.models) - {"sd15", "sdxl"}
    if unknown:
        parser.error(f"--models: unknown {', '.join(sorted(unknown))} (sd15, sdxl)")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (it/s is timed between steps)")
    if not torch.cuda.is_available() and not args.tiny:
        _progress("no CUDA device: running the tiny configs on the CPU (--tiny)")
        args.tiny = True
    if args.tiny and args.compile:
        _progress("--tiny: skipping torch.compile (minutes on a CPU even for tiny shapes)")
        args.compile = False
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiny:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    print("\n".join(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
