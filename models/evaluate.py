"""Measure the emoji model: does a caption produce its own emoji, and how fast?

    python -m models.evaluate [--n 200] [--guidance 1 3 5 7.5] [--quick]

For a fixed sample of dataset captions, one image each is generated (fixed seeds, 25
DDIM steps) and matched to its nearest neighbour among all dataset images in a 16×16 RGB
pixel space; top-1/top-5 say how often the caption's own emoji is that neighbour.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.dataset import EmojiDataset, load_dataset
from models.pipeline import DEFAULT_PIPELINE_DIR, RECOMMENDED_GUIDANCE_SCALE, load_emoji_pipeline

SAMPLE_SEED = 0
INFERENCE_STEPS = 25
FEATURE_SIZE = 16  # coarse enough to ignore sampling noise, fine enough to tell flags apart
GENERATION_BATCH = 50
SERVING_THREADS = 2


def pixel_features(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[N,H,W,3] uint8 or [0,1] float -> [N, 16*16*3] area-averaged pixels in [0,1]."""
    pixels = torch.as_tensor(images)
    pixels = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()
    pooled = F.adaptive_avg_pool2d(pixels.permute(0, 3, 1, 2), FEATURE_SIZE)
    return pooled.flatten(1)


def rank_of_own_emoji(
    generated: np.ndarray, own_indices: list[int], dataset_features: torch.Tensor
) -> np.ndarray:
    """0-based rank of each image's own emoji among all dataset images by L2 distance."""
    distances = torch.cdist(pixel_features(generated), dataset_features)
    own = distances[torch.arange(len(own_indices)), torch.tensor(own_indices)]
    return (distances < own[:, None]).sum(dim=1).numpy()


def sample_indices(dataset: EmojiDataset, count: int) -> list[int]:
    rng = np.random.default_rng(SAMPLE_SEED)
    return sorted(rng.choice(len(dataset), size=min(count, len(dataset)), replace=False).tolist())


def generate(pipe, prompts: list[str], guidance: float, first_seed: int = 0) -> np.ndarray:
    """One image per prompt, [N,64,64,3] floats in [0,1]; image i always uses seed first_seed+i."""
    images = []
    for start in range(0, len(prompts), GENERATION_BATCH):
        batch = prompts[start : start + GENERATION_BATCH]
        generators = [
            torch.Generator().manual_seed(first_seed + start + i) for i in range(len(batch))
        ]
        result = pipe(
            batch,
            guidance_scale=guidance,
            num_inference_steps=INFERENCE_STEPS,
            generator=generators,
            output_type="np",
        )
        images.append(result.images)
    return np.concatenate(images)


def seconds_per_image(pipe, guidance: float, repeats: int) -> float:
    """Median latency of one 25-step image, as a worker would serve it."""
    timings = []
    for attempt in range(repeats + 1):  # the first call is warm-up
        started = time.perf_counter()
        generate(pipe, ["grinning face"], guidance, first_seed=attempt)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings[1:]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_PIPELINE_DIR)
    parser.add_argument("--dataset", type=Path, default=Path("data/emoji-dataset.npz"))
    parser.add_argument("--n", type=int, default=200, help="captions to generate per guidance")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.5])
    parser.add_argument("--quick", action="store_true", help="32 captions, recommended guidance")
    args = parser.parse_args()
    if args.quick:
        args.n, args.guidance = 32, [RECOMMENDED_GUIDANCE_SCALE]

    torch.set_num_threads(SERVING_THREADS)
    pipe = load_emoji_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    latency = seconds_per_image(pipe, RECOMMENDED_GUIDANCE_SCALE, repeats=1 if args.quick else 3)
    serving_rss = peak_rss_mb()

    dataset = load_dataset(args.dataset)
    dataset_features = pixel_features(dataset.images)
    indices = sample_indices(dataset, args.n)
    prompts = [dataset.names[i] for i in indices]
    base = ~dataset.is_skin_tone[indices]
    print(
        f"{len(prompts)} captions (sample seed {SAMPLE_SEED}, {int(base.sum())} without skin "
        f"tone), {INFERENCE_STEPS} DDIM steps, nearest neighbour in {FEATURE_SIZE}×"
        f"{FEATURE_SIZE} RGB among {len(dataset)} images"
    )
    print(f"{'guidance':>8} {'top-1':>7} {'top-5':>7} {'top-1 no-tone':>14} {'top-5 no-tone':>14}")
    for guidance in args.guidance:
        ranks = rank_of_own_emoji(generate(pipe, prompts, guidance), indices, dataset_features)
        print(
            f"{guidance:>8.1f} {np.mean(ranks < 1):>7.1%} {np.mean(ranks < 5):>7.1%} "
            f"{np.mean(ranks[base] < 1):>14.1%} {np.mean(ranks[base] < 5):>14.1%}"
        )
    print(
        f"latency: {latency:.2f} s/image at guidance {RECOMMENDED_GUIDANCE_SCALE} "
        f"({INFERENCE_STEPS} steps, {SERVING_THREADS} threads); peak RSS after loading and one "
        f"image {serving_rss:.0f} MB, after the whole evaluation {peak_rss_mb():.0f} MB"
    )


if __name__ == "__main__":
    main()
