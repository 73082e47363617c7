"""Low/high-resolution emoji pairs for the 2× upscaler, with a fixed held-out split.

    python -m models.upscaler_data --out data/upscaler-pairs.npz

The low-resolution image of each pair is the emoji dataset's own 64×64 image (the glyph
on white, Lanczos-resized by `EmojiRenderer.render`), so what the emoji model draws is
what the upscaler was trained to enlarge; the high-resolution image is the same picture
resized to 128×128 the same way. Every tenth emoji by dataset index is held out: it is
never trained on and is what `models.evaluate_upscaler` scores.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.dataset import DEFAULT_FONT_PATH, IMAGE_SIZE, EmojiRenderer

SCALE = 2
HIGH_SIZE = IMAGE_SIZE * SCALE
HELD_OUT_EVERY = 10
DEFAULT_PAIRS_PATH = Path("data/upscaler-pairs.npz")


@dataclass(frozen=True)
class UpscalePairs:
    low: np.ndarray  # uint8 [N, 64, 64, 3], identical to the emoji dataset's images
    high: np.ndarray  # uint8 [N, 128, 128, 3]
    emoji: list[str]

    def __len__(self) -> int:
        return len(self.emoji)

    def subset(self, indices: np.ndarray) -> UpscalePairs:
        return UpscalePairs(self.low[indices], self.high[indices], [self.emoji[i] for i in indices])


def is_held_out(index: np.ndarray | int) -> np.ndarray | bool:
    """Whether the emoji at this dataset index belongs to the evaluation split."""
    return np.asarray(index) % HELD_OUT_EVERY == 0


def split(pairs: UpscalePairs) -> tuple[UpscalePairs, UpscalePairs]:
    """(training, held-out) by dataset index."""
    held_out = is_held_out(np.arange(len(pairs)))
    return pairs.subset(np.flatnonzero(~held_out)), pairs.subset(np.flatnonzero(held_out))


def render_pair(renderer: EmojiRenderer, char: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(low 64×64, high 128×128) of one emoji, or None where the dataset would drop it."""
    low = renderer.render(char)
    picture = renderer.render_picture(char)
    if low is None or picture is None:
        return None
    high = np.asarray(picture.resize((HIGH_SIZE, HIGH_SIZE), Image.LANCZOS))
    return low, high


def build_pairs(emoji: list[str], font_path: Path = DEFAULT_FONT_PATH) -> UpscalePairs:
    """Pairs for the given emoji, in order (the emoji dataset's order keeps its indices)."""
    renderer = EmojiRenderer(font_path)
    lows, highs, kept = [], [], []
    for char in emoji:
        pair = render_pair(renderer, char)
        if pair is not None:
            lows.append(pair[0])
            highs.append(pair[1])
            kept.append(char)
    return UpscalePairs(np.stack(lows), np.stack(highs), kept)


def dataset_emoji(dataset_path: Path | None) -> list[str]:
    """The emoji dataset's emoji in its order: from its saved file, else enumerated afresh."""
    from models.dataset import build_dataset, load_dataset

    if dataset_path is not None and dataset_path.is_file():
        return load_dataset(dataset_path).emoji
    return build_dataset().emoji


def save_pairs(pairs: UpscalePairs, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, low=pairs.low, high=pairs.high, emoji=np.array(pairs.emoji))


def load_pairs(path: Path) -> UpscalePairs:
    with np.load(path, allow_pickle=False) as arrays:
        return UpscalePairs(arrays["low"], arrays["high"], [str(e) for e in arrays["emoji"]])


def load_or_build_pairs(
    path: Path = DEFAULT_PAIRS_PATH, dataset_path: Path | None = Path("data/emoji-dataset.npz")
) -> UpscalePairs:
    """The saved pairs, or render them (about 20 s) and save them there."""
    if path.is_file():
        return load_pairs(path)
    pairs = build_pairs(dataset_emoji(dataset_path))
    save_pairs(pairs, path)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description="Render the upscaler's low/high pairs.")
    parser.add_argument("--out", type=Path, default=DEFAULT_PAIRS_PATH)
    parser.add_argument("--dataset", type=Path, default=Path("data/emoji-dataset.npz"))
    args = parser.parse_args()
    pairs = build_pairs(dataset_emoji(args.dataset))
    save_pairs(pairs, args.out)
    train, held_out = split(pairs)
    print(
        f"wrote {len(pairs)} pairs ({len(train)} training, {len(held_out)} held out) to {args.out}"
    )


if __name__ == "__main__":
    main()
