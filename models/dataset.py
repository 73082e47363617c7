"""The emoji training set: every fully-qualified emoji Noto Color Emoji draws as one glyph.

    python -m models.dataset --out data/emoji-dataset.npz

Each image is the glyph rendered with Pillow, alpha-composited onto white and resized to
64×64 RGB; its captions are the CLDR name ("waving hand: medium skin tone") followed by
the `emoji` package's aliases where they say something different. The build is
deterministic: same font and `emoji` version, same file.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 64
DEFAULT_FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
# Noto Color Emoji is a bitmap (CBDT) font with one strike: FreeType refuses other sizes.
NOTO_BITMAP_SIZE = 109
# One glyph at size 109 is 136 px wide; a ZWJ sequence the font cannot ligate is laid out
# as two or more glyphs side by side, so anything wider is not one emoji picture.
NOTO_GLYPH_WIDTH = 136

FULLY_QUALIFIED = 2  # emoji.STATUS["fully_qualified"]

SKIN_TONES = {
    "\U0001f3fb": "light skin tone",
    "\U0001f3fc": "medium-light skin tone",
    "\U0001f3fd": "medium skin tone",
    "\U0001f3fe": "medium-dark skin tone",
    "\U0001f3ff": "dark skin tone",
}
_SKIN_TONE_IN_NAME = re.compile(r"_(?:medium-light|medium-dark|medium|light|dark)_skin_tone")
# CLDR puts these after the colon: "man: dark skin tone, beard".
_HAIR_STYLE_NAME = re.compile(
    r"^(man|woman|person)_(red_hair|curly_hair|white_hair|blond_hair|bald|beard)$"
)
# CLDR lists the members after the colon, before any skin tones: "kiss: woman, man".
_GROUP_NAME = re.compile(r"^(family|kiss|couple_with_heart)_(.+)$")
# Aliases of one or two letters (":a:", ":ab:") are button labels, not descriptions.
_MIN_ALIAS_LENGTH = 3


@dataclass(frozen=True)
class EmojiDataset:
    """Images with their emoji, captions (CLDR name first) and skin-tone flags."""

    images: np.ndarray  # uint8 [N, 64, 64, 3]
    emoji: list[str]
    captions: list[list[str]]
    is_skin_tone: np.ndarray  # bool [N]

    def __len__(self) -> int:
        return len(self.emoji)

    @property
    def names(self) -> list[str]:
        return [captions[0] for captions in self.captions]


def save_dataset(dataset: EmojiDataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Captions travel as JSON strings so the file loads without pickle.
    np.savez_compressed(
        path,
        images=dataset.images,
        emoji=np.array(dataset.emoji),
        captions=np.array([json.dumps(c, ensure_ascii=False) for c in dataset.captions]),
        is_skin_tone=dataset.is_skin_tone,
    )


def load_dataset(path: str | Path) -> EmojiDataset:
    with np.load(path, allow_pickle=False) as arrays:
        return EmojiDataset(
            images=arrays["images"],
            emoji=[str(e) for e in arrays["emoji"]],
            captions=[json.loads(str(c)) for c in arrays["captions"]],
            is_skin_tone=arrays["is_skin_tone"].astype(bool),
        )


def _is_flag(char: str) -> bool:
    regional_indicators = all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in char)
    subdivision_flag = char.startswith("\U0001f3f4\U000e0067")  # black flag + tag letters
    return regional_indicators or subdivision_flag


def cldr_name(char: str, shortcode: str) -> str:
    """CLDR short name from the `emoji` package's shortcode, e.g. ':man_dark_skin_tone_beard:'.

    The package keeps CLDR's words but drops its punctuation, so the colon-and-comma
    structure is put back from the emoji's own code points (tones) and known name shapes.
    """
    body = shortcode.strip(":")
    tones = [SKIN_TONES[c] for c in char if c in SKIN_TONES]
    body = _SKIN_TONE_IN_NAME.sub("", body)
    if _is_flag(char):
        return "flag: " + body.replace("_", " ")
    if body.startswith("keycap_"):
        return "keycap: " + body.removeprefix("keycap_")
    if match := _HAIR_STYLE_NAME.match(body):
        base, details = match[1], tones + [match[2].replace("_", " ")]
    elif match := _GROUP_NAME.match(body):
        base, details = match[1], match[2].split("_") + tones
    else:
        base, details = body, tones
    base = base.replace("_", " ")
    return f"{base}: {', '.join(details)}" if details else base


def _normalised(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def captions_for(char: str, data: dict) -> list[str]:
    """CLDR name, then each alias that reads differently once case and punctuation go."""
    captions = [cldr_name(char, data["en"])]
    seen = {_normalised(captions[0])}
    for alias in data.get("alias", []):
        text = alias.strip(":").replace("_", " ")
        key = _normalised(text)
        if len(key) >= _MIN_ALIAS_LENGTH and key not in seen:
            seen.add(key)
            captions.append(text)
    return captions


class EmojiRenderer:
    """Renders one emoji to a 64×64 RGB array, or None when the font lacks a single glyph."""

    def __init__(self, font_path: Path = DEFAULT_FONT_PATH):
        self.font = ImageFont.truetype(str(font_path), NOTO_BITMAP_SIZE)
        if self.font.layout_engine != ImageFont.Layout.RAQM:
            # Without raqm's shaping, flags and ZWJ sequences never ligate and would all
            # be dropped as "several glyphs".
            raise RuntimeError("Pillow was built without libraqm; emoji sequences cannot be shaped")

    def render_picture(self, char: str) -> Image.Image | None:
        """The glyph centred on a white square at the font's own size (about 136 px)."""
        left, top, right, bottom = self.font.getbbox(char)
        width, height = right - left, bottom - top
        if height <= 0 or width > NOTO_GLYPH_WIDTH:
            return None  # missing glyph (.notdef is empty here) or an unligated sequence
        side = max(width, height)
        canvas = Image.new("RGBA", (side, side), (255, 255, 255, 0))
        origin = ((side - width) // 2 - left, (side - height) // 2 - top)
        ImageDraw.Draw(canvas).text(origin, char, font=self.font, embedded_color=True)
        white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, canvas).convert("RGB")

    def render(self, char: str) -> np.ndarray | None:
        picture = self.render_picture(char)
        if picture is None:
            return None
        pixels = np.asarray(picture.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS))
        if pixels.min() == 255:
            return None  # drawn nothing
        return pixels


def build_dataset(font_path: Path = DEFAULT_FONT_PATH) -> EmojiDataset:
    import emoji  # build-time only: training and serving read the saved file

    renderer = EmojiRenderer(font_path)
    images, chars, captions, skin_tone = [], [], [], []
    for char in sorted(emoji.EMOJI_DATA):
        data = emoji.EMOJI_DATA[char]
        if data["status"] != FULLY_QUALIFIED:
            continue
        pixels = renderer.render(char)
        if pixels is None:
            continue
        images.append(pixels)
        chars.append(char)
        captions.append(captions_for(char, data))
        skin_tone.append(any(c in SKIN_TONES for c in char))
    return EmojiDataset(
        images=np.stack(images),
        emoji=chars,
        captions=captions,
        is_skin_tone=np.array(skin_tone, dtype=bool),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Render the emoji training set.")
    parser.add_argument("--out", type=Path, default=Path("data/emoji-dataset.npz"))
    parser.add_argument("--font", type=Path, default=DEFAULT_FONT_PATH)
    args = parser.parse_args()
    dataset = build_dataset(args.font)
    save_dataset(dataset, args.out)
    print(
        f"wrote {len(dataset)} emoji ({int(dataset.is_skin_tone.sum())} skin-tone variants) "
        f"to {args.out}"
    )


if __name__ == "__main__":
    main()
