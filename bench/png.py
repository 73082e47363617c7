"""PNG encoding of an output image at zlib levels side by side: what the worker's level
(``worker.images.PNG_COMPRESS_LEVEL``) costs and saves against Pillow's default (6).

    .venv/bin/python -m bench.png [--size 1024] [--repeats 5]

The image is docs/emoji-samples.png resized to the size, with seeded noise of a few levels
(a generated image is never flat like a resized icon, and flat images compress far
better than real outputs). Prints the median encode time of each level and the file size,
each as a ratio to level 6's.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from worker.images import PNG_COMPRESS_LEVEL

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "docs" / "emoji-samples.png"
LEVELS = (0, 1, 3, 6, 9)
PILLOW_DEFAULT_LEVEL = 6


def test_image(size: int, seed: int = 0) -> Image.Image:
    base = np.asarray(Image.open(SAMPLE).convert("RGB").resize((size, size), Image.BICUBIC))
    noise = np.random.default_rng(seed).integers(-6, 7, base.shape)
    return Image.fromarray(np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8))


def encode(image: Image.Image, level: int) -> tuple[float, int]:
    buffer = io.BytesIO()
    started = time.perf_counter()
    image.save(buffer, format="PNG", compress_level=level)
    return time.perf_counter() - started, len(buffer.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    image = test_image(args.size)
    seconds: dict[int, list[float]] = {level: [] for level in LEVELS}
    sizes: dict[int, int] = {}
    for _ in range(args.repeats):  # levels interleaved, so noise hits each alike
        for level in LEVELS:
            elapsed, sizes[level] = encode(image, level)
            seconds[level].append(elapsed)
    medians = {level: statistics.median(times) for level, times in seconds.items()}
    reference = PILLOW_DEFAULT_LEVEL
    print(f"PNG encoding, {args.size}x{args.size} RGB, median of {args.repeats}; "
          f"the worker writes level {PNG_COMPRESS_LEVEL}, Pillow's default is {reference}")
    print(f"{'level':>5}  {'encode':>9}  {'vs 6':>6}  {'size':>9}  {'vs 6':>6}")
    for level in LEVELS:
        print(f"{level:>5}  {1000 * medians[level]:>6.1f} ms  "
              f"{medians[level] / medians[reference]:>5.2f}x  {sizes[level] / 1024:>5.0f} KiB  "
              f"{sizes[level] / sizes[reference]:>5.2f}x")


if __name__ == "__main__":
    main()
