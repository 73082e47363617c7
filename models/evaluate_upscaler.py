"""Score the upscaler on the held-out emoji: PSNR and SSIM against bicubic and nearest.

    python -m models.evaluate_upscaler                    # committed weights, 1 thread

Each held-out emoji's 64×64 image (the emoji dataset's own) is enlarged to 128×128 and
compared with the glyph rendered at 128×128. The upscaler runs at its default steps and
noise level with seed i for image i; PSNR is over 8-bit RGB, SSIM is scikit-image's
(7×7 windows, per channel, averaged). Seconds per image are wall-clock over the whole
held-out set in batches of --batch on --threads CPU threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from models.upscaler_data import DEFAULT_PAIRS_PATH, HIGH_SIZE, load_or_build_pairs, split
from models.upscaler_pipeline import (
    DEFAULT_STEPS,
    DEFAULT_UPSCALER_DIR,
    load_emoji_upscaler_pipeline,
)


def scores(predicted: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over images, uint8 [N, H, W, 3] each."""
    psnr = [peak_signal_noise_ratio(t, p, data_range=255) for p, t in zip(predicted, target)]
    ssim = [
        structural_similarity(t, p, data_range=255, channel_axis=-1)
        for p, t in zip(predicted, target)
    ]
    return float(np.mean(psnr)), float(np.mean(ssim))


def resize_all(low: np.ndarray, method: Image.Resampling) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    out = np.stack(
        [np.asarray(Image.fromarray(image).resize((HIGH_SIZE, HIGH_SIZE), method)) for image in low]
    )
    return out, (time.perf_counter() - started) / len(low)


def upscale_all(pipe, low: np.ndarray, steps: int, noise_level: int | None, batch: int):
    started = time.perf_counter()
    outputs = []
    for start in range(0, len(low), batch):
        images = [Image.fromarray(image) for image in low[start : start + batch]]
        generators = [torch.Generator().manual_seed(start + i) for i in range(len(images))]
        result = pipe(
            image=images,
            num_inference_steps=steps,
            noise_level=noise_level,
            generator=generators,
        )
        outputs.extend(np.asarray(image) for image in result.images)
    return np.stack(outputs), (time.perf_counter() - started) / len(low)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_UPSCALER_DIR)
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS_PATH)
    parser.add_argument("--steps", type=int, nargs="+", default=[DEFAULT_STEPS])
    parser.add_argument("--noise-level", type=int, help="default: the pipeline's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--limit", type=int, help="only the first N held-out emoji")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    _, held_out = split(load_or_build_pairs(args.pairs))
    low, high = held_out.low, held_out.high
    if args.limit:
        low, high = low[: args.limit], high[: args.limit]
    pipe = load_emoji_upscaler_pipeline(path=args.path)
    pipe.set_progress_bar_config(disable=True)
    noise_level = pipe.default_noise_level if args.noise_level is None else args.noise_level

    rows = []
    for name, method in (("nearest", Image.NEAREST), ("bicubic (Pillow)", Image.BICUBIC)):
        predicted, seconds = resize_all(low, method)
        rows.append((name, *scores(predicted, high), seconds))
    for steps in args.steps:
        predicted, seconds = upscale_all(pipe, low, steps, noise_level, args.batch)
        label = (
            f"upscaler, {steps} {type(pipe.scheduler).__name__} steps, noise level {noise_level}"
        )
        rows.append((label, *scores(predicted, high), seconds))

    print(
        f"{len(low)} held-out emoji, 64×64 → 128×128; {args.threads} CPU thread(s), "
        f"batches of {args.batch}; seeds 0..{len(low) - 1}\n"
    )
    print("| method | PSNR (dB) | SSIM | seconds / image |")
    print("| --- | --- | --- | --- |")
    for name, psnr, ssim, seconds in rows:
        print(f"| {name} | {psnr:.2f} | {ssim:.4f} | {seconds:.4f} |")


if __name__ == "__main__":
    main()
