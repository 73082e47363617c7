"""Dataset captions (CLDR names) and rendering with Noto Color Emoji."""

from __future__ import annotations

import numpy as np
import pytest

from models.dataset import DEFAULT_FONT_PATH, IMAGE_SIZE, captions_for, cldr_name


@pytest.mark.parametrize(
    ("char", "shortcode", "expected"),
    [
        ("🐱", ":cat_face:", "cat face"),
        ("🇯🇵", ":Japan:", "flag: Japan"),
        ("👋🏽", ":waving_hand_medium_skin_tone:", "waving hand: medium skin tone"),
        ("1️⃣", ":keycap_1:", "keycap: 1"),
        ("👨‍👩‍👧", ":family_man_woman_girl:", "family: man, woman, girl"),
        ("🧔🏿‍♂️", ":man_dark_skin_tone_beard:", "man: dark skin tone, beard"),
        (
            "👩🏾‍❤️‍💋‍👩🏻",
            ":kiss_woman_woman_medium-dark_skin_tone_light_skin_tone:",
            "kiss: woman, woman, medium-dark skin tone, light skin tone",
        ),
        (
            "🧑🏽‍🤝‍🧑🏼",
            ":people_holding_hands_medium_skin_tone_medium-light_skin_tone:",
            "people holding hands: medium skin tone, medium-light skin tone",
        ),
    ],
)
def test_cldr_name(char, shortcode, expected):
    assert cldr_name(char, shortcode) == expected


def test_captions_keep_only_aliases_that_differ():
    data = {"en": ":red_heart:", "alias": [":heart:", ":red_heart:", ":ab:"]}
    assert captions_for("❤️", data) == ["red heart", "heart"]


@pytest.fixture(scope="module")
def renderer():
    if not DEFAULT_FONT_PATH.is_file():
        pytest.skip(f"Noto Color Emoji not installed at {DEFAULT_FONT_PATH}")
    from models.dataset import EmojiRenderer

    return EmojiRenderer()


@pytest.mark.parametrize("char", ["🐱", "🇯🇵", "👋🏽", "👨‍👩‍👧", "🕙"])
def test_single_glyph_renders_64x64_on_white(renderer, char):
    pixels = renderer.render(char)
    assert pixels is not None
    assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and pixels.dtype == np.uint8
    assert (pixels < 200).any(axis=-1).mean() > 0.05, "mostly blank"
    assert (pixels[0, 0] == 255).all(), "background should be white"


@pytest.mark.parametrize(
    "char",
    [
        "🐱\u200d🍕",  # ZWJ sequence the font has no ligature for: two glyphs side by side
        "A",  # not in the font: .notdef draws nothing
    ],
)
def test_anything_but_one_glyph_is_dropped(renderer, char):
    assert renderer.render(char) is None
