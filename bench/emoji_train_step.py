"""Seconds per training step of each emoji-model stage, for sizing models/train.py's profiles.

    python bench/emoji_train_step.py [--device cpu] [--vae-batch 32] [--unet-batch 64]

Times the real losses, backward passes and AdamW updates on random data (the data path
costs nothing next to them). On a shared CPU, run it when nothing else is busy: OpenMP
threads that have to wait for a core make every op several times slower.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from models.architecture import LATENT_CHANNELS, LATENT_SIZE, make_unet, make_vae
from models.text_encoder import MAX_CAPTION_TOKENS, TEXT_EMBED_DIM
from models.train_unet import VPredictionLoss
from models.train_vae import CROP_SIZE, vae_loss
from models.training import autocast_for


def seconds_per_step(model, compute_loss, device, warmup: int, repeats: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    timings = []
    for attempt in range(warmup + repeats):
        started = time.perf_counter()
        loss = compute_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt >= warmup:
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--unet-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    vae = make_vae().to(device)
    crops = torch.rand(args.vae_batch, 3, CROP_SIZE, CROP_SIZE, device=device) * 2 - 1

    def vae_step_loss():
        with autocast_for(device, args.bf16):
            return vae_loss(vae, crops, kl_weight=1e-4)

    vae_seconds = seconds_per_step(vae, vae_step_loss, device, warmup=2, repeats=args.repeats)
    print(
        f"vae  batch {args.vae_batch:>4} ({CROP_SIZE}×{CROP_SIZE} crops): {vae_seconds:.3f} s/step"
    )

    unet = make_unet().to(device)
    loss_fn = VPredictionLoss(gamma=5.0, device=device)
    generator = torch.Generator(device).manual_seed(0)
    latents = torch.randn(args.unet_batch, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, device=device)
    states = torch.randn(args.unet_batch, MAX_CAPTION_TOKENS, TEXT_EMBED_DIM, device=device)

    def unet_step_loss():
        return loss_fn(unet, latents, states, generator, autocast_for(device, args.bf16))

    unet_seconds = seconds_per_step(unet, unet_step_loss, device, warmup=2, repeats=args.repeats)
    print(f"unet batch {args.unet_batch:>4}: {unet_seconds:.3f} s/step")


if __name__ == "__main__":
    main()
