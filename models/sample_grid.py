"""Render a grid of the embedded model's outputs for the README.

    python -m models.sample_grid --out docs/emoji-samples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from models.pipeline import RECOMMENDED_GUIDANCE_SCALE, load_emoji_pipeline

PROMPTS = (
    "red heart", "cat face", "grinning face", "pizza", "rocket", "ten o’clock",
    "thumbs up", "flag: United States", "fire", "snowman", "banana", "waving hand",
    "an emoji of a dog face", "sun", "birthday cake", "rainbow",
)
CELL = 64
SCALE = 2


def render_grid(prompts: tuple[str, ...], guidance_scales: tuple[float, ...], seed: int) -> Image.Image:
    """One row per guidance scale, one column per prompt, the same seed per column."""
    pipe = load_emoji_pipeline()
    label_width = 70
    grid = Image.new("RGB", (label_width + CELL * len(prompts), CELL * len(guidance_scales)), "white")
    draw = ImageDraw.Draw(grid)
    for row, guidance in enumerate(guidance_scales):
        images = pipe(
            list(prompts), num_inference_steps=25, guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(seed + i) for i in range(len(prompts))],
        ).images
        for column, image in enumerate(images):
            grid.paste(image, (label_width + column * CELL, row * CELL))
        draw.text((4, row * CELL + CELL // 2 - 6), f"CFG {guidance:g}", fill="black")
    return grid.resize((grid.width * SCALE, grid.height * SCALE), Image.Resampling.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/emoji-samples.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render_grid(PROMPTS, (1.0, RECOMMENDED_GUIDANCE_SCALE), args.seed).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
