"""VAE stages: train the autoencoder, then encode the dataset into scaled latents once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from models.architecture import make_vae
from models.dataset import IMAGE_SIZE
from models.pipeline import save_emoji_pipeline
from models.training import StageResult, StageRunner, StageSettings, autocast_for

CROP_SIZE = 32
# A whole image has 4× the pixels of a crop: dividing the batch keeps the step time level.
PIXELS_RATIO_FULL_TO_CROP = (IMAGE_SIZE // CROP_SIZE) ** 2


@dataclass
class VaeOptions:
    """VAE-specific knobs on top of the shared StageSettings."""

    kl_weight: float
    full_image_fraction: float  # last part of the stage trains on whole 64×64 images


def images_on_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N,H,W,3] -> uint8 [N,3,H,W] on device (a quarter of the float memory)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


def random_crops(
    images: torch.Tensor, count: int, size: int, generator: torch.Generator
) -> torch.Tensor:
    """`count` random size×size crops from random images, as uint8 [count,3,size,size]."""
    device = images.device
    picked = torch.randint(0, len(images), (count,), generator=generator, device=device)
    span = images.shape[-1] - size + 1
    top, left = torch.randint(0, span, (2, count), generator=generator, device=device)
    offsets = torch.arange(size, device=device)
    rows = (top[:, None] + offsets)[:, :, None]
    cols = (left[:, None] + offsets)[:, None, :]
    # Advanced indices around the channel slice put the batch and pixel dims first.
    crops = images[picked[:, None, None], :, rows, cols]  # [count, size, size, 3]
    return crops.permute(0, 3, 1, 2)


def random_flips(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror half the batch: the VAE only has to reproduce pixels, so text and flags
    reading backwards does not matter here (the UNet never sees flipped images)."""
    flip = torch.rand(len(batch), generator=generator, device=batch.device) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


def vae_loss(vae: AutoencoderKL, batch: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """L1 reconstruction plus a small per-element KL that keeps the latents near unit scale."""
    posterior = vae.encode(batch).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    l1 = (reconstruction.float() - batch).abs().mean()
    mean, logvar = posterior.mean.float(), posterior.logvar.float()
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
    return l1 + kl_weight * kl


def train_vae(
    images: np.ndarray,
    settings: StageSettings,
    options: VaeOptions,
    device: torch.device,
    bf16: bool,
    work_dir: Path,
    out_dir: Path,
    resume: bool,
    seed: int,
) -> tuple[AutoencoderKL, StageResult | None]:
    """Train (or resume, or reload when already done) the VAE; returns it in eval mode."""
    torch.manual_seed(seed)
    vae = make_vae().to(device)
    pixels = images_on_device(images, device)
    generator = torch.Generator(device).manual_seed(seed)
    full_batch = max(1, settings.batch_size // PIXELS_RATIO_FULL_TO_CROP)

    def compute_loss(step: int) -> torch.Tensor:
        full_images_from = int(runner.total_steps * (1 - options.full_image_fraction))
        if step < full_images_from:
            batch = random_crops(pixels, settings.batch_size, CROP_SIZE, generator)
        else:
            picked = torch.randint(
                0, len(pixels), (full_batch,), generator=generator, device=device
            )
            batch = pixels[picked]
        batch = to_model_range(random_flips(batch, generator))
        with autocast_for(device, bf16):
            return vae_loss(vae, batch, options.kl_weight)

    runner = StageRunner(
        settings,
        vae,
        compute_loss,
        export=lambda: save_emoji_pipeline(out_dir, vae),
        state_path=work_dir / "vae_state.pt",
        generator=generator,
    )
    if resume and runner.load_state() and runner.done:
        print(f"[vae] already trained ({runner.step} steps), reusing it")
        return vae.eval(), None
    result = runner.run()
    return vae.eval(), result


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, images: np.ndarray, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Posterior means of every image, unscaled, float32 [N,4,16,16] on the CPU."""
    pixels = images_on_device(images, device)
    chunks = [
        vae.encode(to_model_range(pixels[start : start + batch_size])).latent_dist.mean.float()
        for start in range(0, len(pixels), batch_size)
    ]
    return torch.cat(chunks).cpu()


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """The factor that gives the latents unit std, which the noise schedule assumes."""
    return float(1.0 / latents.std())
