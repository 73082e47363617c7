"""UNet stages: encode every caption variant once, then train on cached latents and states."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from tqdm import tqdm

from models.architecture import make_training_scheduler, make_unet
from models.dataset import EmojiDataset
from models.pipeline import save_emoji_pipeline
from models.text_encoder import encode_captions
from models.training import (
    ExponentialMovingAverage,
    StageResult,
    StageRunner,
    StageSettings,
    autocast_for,
)

# Prompts people type around a name. Lower-casing is not among them: the MiniLM tokenizer
# is uncased, so "Cat Face" and "cat face" are already the same tokens.
CAPTION_TEMPLATES = ("{}", "an emoji of {}", "{} emoji")
TEXT_BATCH_SIZE = 256


@dataclass
class UnetOptions:
    """UNet-specific knobs on top of the shared StageSettings."""

    ema_decay: float
    caption_drop: float  # share of "" captions, which classifier-free guidance needs
    skin_tone_weight: float  # sampling weight of a skin-tone variant relative to others
    name_share: float  # share of samples captioned with the bare CLDR name
    min_snr_gamma: float


@dataclass
class TextStates:
    """Encoder states of every caption variant, and which variants belong to which image."""

    states: torch.Tensor  # fp16 [V, tokens, 384]
    first_variant: torch.Tensor  # long [N]: image i owns variants first..first+count-1,
    variant_count: torch.Tensor  # long [N]   the first being its bare CLDR name
    empty_caption: int  # index of the "" state


def caption_variants(dataset: EmojiDataset) -> tuple[list[str], list[int], list[int]]:
    """All prompts to train on (names/aliases × templates), grouped by image, names first."""
    prompts: list[str] = []
    first, count = [], []
    for captions in dataset.captions:
        first.append(len(prompts))
        variants = dict.fromkeys(t.format(c) for c in captions for t in CAPTION_TEMPLATES)
        prompts.extend(variants)
        count.append(len(variants))
    return prompts, first, count


def encode_text_states(
    dataset: EmojiDataset, tokenizer, text_encoder, cache_path: Path
) -> TextStates:
    """Encode every caption variant (or reuse the cache written for the same prompts)."""
    prompts, first, count = caption_variants(dataset)
    prompts.append("")
    fingerprint = hashlib.sha256(
        json.dumps([prompts, tokenizer.model_max_length]).encode()
    ).hexdigest()
    if cache_path.is_file():
        cached = torch.load(cache_path, map_location="cpu", weights_only=True)
        if cached["fingerprint"] == fingerprint:
            print(f"[text] reusing {len(prompts)} cached caption states")
            return _text_states(cached["states"], first, count)
    chunks = []
    for start in tqdm(range(0, len(prompts), TEXT_BATCH_SIZE), desc="text", dynamic_ncols=True):
        batch = prompts[start : start + TEXT_BATCH_SIZE]
        chunks.append(encode_captions(tokenizer, text_encoder, batch).half().cpu())
    states = torch.cat(chunks)
    torch.save({"fingerprint": fingerprint, "states": states}, cache_path)
    return _text_states(states, first, count)


def _text_states(states: torch.Tensor, first: list[int], count: list[int]) -> TextStates:
    return TextStates(
        states=states,
        first_variant=torch.tensor(first),
        variant_count=torch.tensor(count),
        empty_caption=len(states) - 1,
    )


class ConditionSampler:
    """Draws (latent, caption state) training pairs with the stage's weighting rules."""

    def __init__(
        self,
        latents: torch.Tensor,
        text: TextStates,
        is_skin_tone: np.ndarray,
        options: UnetOptions,
        device: torch.device,
        generator: torch.Generator,
    ):
        self.latents = latents.to(device)
        self.states = text.states.to(device)
        self.first_variant = text.first_variant.to(device)
        self.variant_count = text.variant_count.to(device)
        self.empty_caption = text.empty_caption
        # Skin-tone variants are ~half the set but mostly repeat their base emoji's shape;
        # at full weight they would take half of the training signal.
        weights = np.where(is_skin_tone, options.skin_tone_weight, 1.0)
        self.image_weights = torch.tensor(weights, dtype=torch.float32, device=device)
        self.options = options
        self.generator = generator

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen, device = self.generator, self.latents.device
        images = torch.multinomial(self.image_weights, batch_size, True, generator=gen)
        pick = torch.rand(batch_size, generator=gen, device=device)
        any_variant = self.first_variant[images] + (pick * self.variant_count[images]).long().clamp(
            max=self.variant_count[images] - 1
        )
        use_name = torch.rand(batch_size, generator=gen, device=device) < self.options.name_share
        variant = torch.where(use_name, self.first_variant[images], any_variant)
        drop = torch.rand(batch_size, generator=gen, device=device) < self.options.caption_drop
        variant = torch.where(drop, torch.full_like(variant, self.empty_caption), variant)
        return self.latents[images], self.states[variant].float()


class VPredictionLoss:
    """v-prediction MSE with min-SNR-γ weighting (Hang et al. 2023), sampled timesteps."""

    def __init__(self, gamma: float, device: torch.device):
        scheduler = make_training_scheduler()
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.num_timesteps = scheduler.config.num_train_timesteps
        self.gamma = gamma

    def __call__(
        self,
        unet: UNet2DConditionModel,
        latents: torch.Tensor,
        states: torch.Tensor,
        generator: torch.Generator,
        autocast,
    ) -> torch.Tensor:
        device, batch = latents.device, len(latents)
        timesteps = torch.randint(
            0, self.num_timesteps, (batch,), generator=generator, device=device
        )
        noise = torch.randn(latents.shape, generator=generator, device=device)
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        signal, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        noisy = signal * latents + sigma * noise
        target = signal * noise - sigma * latents  # the velocity v
        with autocast:
            prediction = unet(noisy, timesteps, states).sample
        per_sample = (prediction.float() - target).square().mean(dim=(1, 2, 3))
        snr = (alpha_bar / (1 - alpha_bar)).flatten()
        # For v-prediction the min-SNR weight is min(snr, γ) / (snr + 1).
        weights = snr.clamp(max=self.gamma) / (snr + 1)
        return (weights * per_sample).mean()


def train_unet(
    sampler: ConditionSampler,
    settings: StageSettings,
    options: UnetOptions,
    vae: AutoencoderKL,
    device: torch.device,
    bf16: bool,
    work_dir: Path,
    out_dir: Path,
    resume: bool,
    seed: int,
) -> tuple[UNet2DConditionModel, StageResult | None]:
    """Train (or resume) the UNet; checkpoints export the EMA weights next to the VAE."""
    torch.manual_seed(seed)
    unet = make_unet().to(device)
    ema = ExponentialMovingAverage(unet, options.ema_decay)
    loss_fn = VPredictionLoss(options.min_snr_gamma, device)
    exported = make_unet()  # CPU copy that receives the EMA weights for each export

    def compute_loss(step: int) -> torch.Tensor:
        latents, states = sampler.sample(settings.batch_size)
        return loss_fn(unet, latents, states, sampler.generator, autocast_for(device, bf16))

    def export() -> None:
        ema.copy_to(exported)
        save_emoji_pipeline(out_dir, vae, exported)

    runner = StageRunner(
        settings,
        unet,
        compute_loss,
        export=export,
        state_path=work_dir / "unet_state.pt",
        generator=sampler.generator,
        ema=ema,
    )
    if resume and runner.load_state() and runner.done:
        print(f"[unet] already trained ({runner.step} steps), re-exporting it")
        export()
        return exported, None
    result = runner.run()
    return exported, result
