"""Train the emoji upscaler from the rendered pairs, on CPU.

    python -m models.train_upscaler --out models/emoji-upscaler --max-minutes 47

One thread is the default on purpose: on a shared 2-core machine two threads ran up to 20×
slower per step (a 0.6M-parameter variant, machine busy: 0.26 s on one, 5.5 s on two),
their OpenMP workers waiting on each other whenever another process held a core.

Every checkpoint exports a loadable pipeline (EMA UNet, fp16) to --out, so a run stopped
by --max-minutes or by hand still leaves usable weights; --resume continues from the
training state in --work-dir. --max-minutes shortens the cosine schedule to fit once the
first steps are timed (models.training.StageRunner), so the run still ends at a low LR.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.training import ExponentialMovingAverage, StageRunner, StageSettings
from models.upscaler_architecture import (
    MAX_NOISE_LEVEL,
    make_low_res_scheduler,
    make_training_scheduler,
    make_upscaler_unet,
    noisy_low_res,
    to_cells,
    upsample,
)
from models.upscaler_data import DEFAULT_PAIRS_PATH, UpscalePairs, load_or_build_pairs, split
from models.upscaler_pipeline import DEFAULT_UPSCALER_DIR, save_emoji_upscaler_pipeline

# Half of the samples get a noise level a clean input would be given (0-20), the rest any
# level up to the maximum: serving mostly upscales clean emoji-model output.
LOW_NOISE_LEVEL = 20
LOW_NOISE_SHARE = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--out", type=Path, default=DEFAULT_UPSCALER_DIR, help="pipeline directory to write")
    add("--work-dir", type=Path, default=Path("data/train-upscaler"), help="training state")
    add("--pairs", type=Path, default=DEFAULT_PAIRS_PATH, help="rendered pairs (built if absent)")
    add("--dataset", type=Path, default=Path("data/emoji-dataset.npz"), help="emoji order")
    add("--threads", type=int, default=1, help="CPU threads")
    add("--seed", type=int, default=0)
    add("--resume", action="store_true", help="continue from the state in --work-dir")
    add("--steps", type=int, default=20000, help="planned steps (--max-minutes may cut them)")
    add("--batch", type=int, default=16)
    add("--crop", type=int, default=48, help="side of the crops of the 128×128 images")
    add("--lr", type=float, default=2e-3)
    add("--warmup", type=int, default=100)
    add("--ema-decay", type=float, default=0.999)
    add("--checkpoint-every", type=int, default=200)
    add("--max-minutes", type=float, help="stop cleanly and export after this")
    add(
        "--more-steps",
        type=int,
        default=0,
        help="with --resume: lengthen the saved plan by this many steps (the cosine schedule "
        "restarts warm from where the longer plan puts it)",
    )
    add("--limit", type=int, help="train on the first N training pairs only (smoke tests)")
    return parser.parse_args(argv)


@dataclass
class PairBatches:
    """Random crops of (condition cells, scaled residual cells) from the training pairs."""

    low: torch.Tensor  # uint8 [N, 3, 64, 64]
    high: torch.Tensor  # uint8 [N, 3, 128, 128]
    residual_scale: float
    crop: int
    generator: torch.Generator

    @classmethod
    def from_pairs(cls, pairs: UpscalePairs, crop: int, generator: torch.Generator):
        low = torch.from_numpy(pairs.low).permute(0, 3, 1, 2).contiguous()
        high = torch.from_numpy(pairs.high).permute(0, 3, 1, 2).contiguous()
        return cls(low, high, residual_scale(low, high), crop, generator)

    def sample(self, batch_size: int, alphas: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(condition, residual, noise levels); both images as [B, 12, crop/2, crop/2] cells."""
        gen = self.generator
        index = torch.randint(0, len(self.low), (batch_size,), generator=gen)
        low, high = _unit(self.low[index]), _unit(self.high[index])
        low_noise = torch.randn(low.shape, generator=gen)
        any_level = torch.randint(0, MAX_NOISE_LEVEL + 1, (batch_size,), generator=gen)
        clean_level = torch.randint(0, LOW_NOISE_LEVEL + 1, (batch_size,), generator=gen)
        clean = torch.rand(batch_size, generator=gen) < LOW_NOISE_SHARE
        levels = torch.where(clean, clean_level, any_level)
        # Upsampled whole, then cropped: the crops see exactly the borders a full image has.
        condition = to_cells(upsample(noisy_low_res(low, low_noise, levels, alphas)))
        residual = to_cells(high - upsample(low)) * self.residual_scale
        cell_crop = self.crop // 2
        side = condition.shape[-1]
        tops = torch.randint(0, side - cell_crop + 1, (batch_size,), generator=gen).tolist()
        lefts = torch.randint(0, side - cell_crop + 1, (batch_size,), generator=gen).tolist()

        def crops(cells: torch.Tensor) -> torch.Tensor:
            return torch.stack(
                [
                    c[:, top : top + cell_crop, left : left + cell_crop]
                    for c, top, left in zip(cells, tops, lefts)
                ]
            )

        return crops(condition), crops(residual), levels


def _unit(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1


def residual_scale(low: torch.Tensor, high: torch.Tensor, chunk: int = 256) -> float:
    """1 / std of the residual over bicubic, like a VAE's latent scaling factor."""
    total, squares, count = 0.0, 0.0, 0
    for start in range(0, len(low), chunk):
        residual = _unit(high[start : start + chunk]) - upsample(_unit(low[start : start + chunk]))
        total += residual.sum().item()
        squares += residual.square().sum().item()
        count += residual.numel()
    mean = total / count
    return float(1 / np.sqrt(squares / count - mean**2))


class VelocityLoss:
    """Unweighted v-prediction MSE: it weights the x0 error by SNR+1 ≥ 1 at every level,
    so the high-noise steps that decide a few-step sample are not discounted (as min-SNR
    weighting would)."""

    def __init__(self):
        scheduler = make_training_scheduler()
        self.alphas_cumprod = scheduler.alphas_cumprod.float()
        self.num_timesteps = scheduler.config.num_train_timesteps

    def __call__(self, unet, condition, residual, levels, generator) -> torch.Tensor:
        batch = len(residual)
        timesteps = torch.randint(0, self.num_timesteps, (batch,), generator=generator)
        noise = torch.randn(residual.shape, generator=generator)
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        signal, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        noisy = signal * residual + sigma * noise
        target = signal * noise - sigma * residual
        prediction = unet(torch.cat([noisy, condition], 1), timesteps, class_labels=levels).sample
        return (prediction - target).square().mean()


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pairs = load_or_build_pairs(args.pairs, args.dataset)
    training, held_out = split(pairs)
    if args.limit:
        training = training.subset(np.arange(min(args.limit, len(training))))
    generator = torch.Generator().manual_seed(args.seed + 1)
    batches = PairBatches.from_pairs(training, args.crop, generator)
    print(
        f"pairs: {len(training)} training, {len(held_out)} held out; "
        f"residual scale {batches.residual_scale:.3f}; {args.threads} thread(s)"
    )

    torch.manual_seed(args.seed)
    unet = make_upscaler_unet()
    exported = make_upscaler_unet()  # receives the EMA weights for each export
    ema = ExponentialMovingAverage(unet, args.ema_decay)
    low_res_alphas = make_low_res_scheduler().alphas_cumprod.float()
    loss_fn = VelocityLoss()

    def compute_loss(step: int) -> torch.Tensor:
        condition, residual, levels = batches.sample(args.batch, low_res_alphas)
        return loss_fn(unet, condition, residual, levels, generator)

    def export() -> None:
        ema.copy_to(exported)
        save_emoji_upscaler_pipeline(args.out, exported, batches.residual_scale)

    settings = StageSettings(
        name="upscaler",
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        checkpoint_every=args.checkpoint_every,
        max_minutes=args.max_minutes,
    )
    runner = StageRunner(
        settings,
        unet,
        compute_loss,
        export=export,
        state_path=args.work_dir / "upscaler_state.pt",
        generator=generator,
        ema=ema,
    )
    if args.resume and runner.load_state():
        runner.total_steps += args.more_steps
        print(f"[upscaler] resuming at step {runner.step} of {runner.total_steps}")
        if runner.done:
            export()
            print(f"[upscaler] already trained, re-exported to {args.out}")
            return
    result = runner.run()
    how = "done" if result.finished else "stopped by its time budget"
    print(
        f"[upscaler] {result.steps_done} steps × {args.batch}, {result.seconds / 60:.1f} min, {how}"
    )
    print(f"wrote {args.out} in {(time.monotonic() - started) / 60:.1f} min")


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
