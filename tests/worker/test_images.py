"""Output encoding with embedded parameters, and the outpaint canvas."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.schemas import OutpaintMargins, OutputFormat
from tests.factories import make_plan
from worker.images import decode_image, encode_image, outpaint_canvas, parameters_text


def gradient(width: int = 32, height: int = 24) -> Image.Image:
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    return Image.fromarray(pixels)


def test_parameters_text_is_automatic1111s_format() -> None:
    params = make_plan(prompt="a cat", negative_prompt="dog", steps=20, scheduler="dpmpp_2m_karras",
                         guidance_scale=7.0, width=512, height=768)
    assert parameters_text(params, seed=9) == (
        "a cat\nNegative prompt: dog\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 9, Size: 512x768, "
        "Model: tiny-random"
    )


def test_parameters_text_omits_an_empty_negative_prompt_and_adds_strength_for_edits() -> None:
    params = make_plan(task="image-to-image", strength=0.6)
    text = parameters_text(params, seed=1)
    assert "Negative prompt" not in text
    assert text.endswith(", Denoising strength: 0.6")


def test_png_keeps_the_parameters_and_is_deterministic() -> None:
    image = gradient()
    first = encode_image(image, OutputFormat.PNG, "a cat\nSteps: 1")
    assert first == encode_image(image, OutputFormat.PNG, "a cat\nSteps: 1")
    decoded = Image.open(io.BytesIO(first))
    assert decoded.format == "PNG" and decoded.text["parameters"] == "a cat\nSteps: 1"
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_png_parameters_survive_a_non_latin_prompt() -> None:
    data = encode_image(gradient(), OutputFormat.PNG, "猫 🙂")
    assert Image.open(io.BytesIO(data)).text["parameters"] == "猫 🙂"


def test_jpeg_and_webp_encode_deterministically() -> None:
    for fmt, name in ((OutputFormat.JPEG, "JPEG"), (OutputFormat.WEBP, "WEBP")):
        data = encode_image(gradient(), fmt, "ignored")
        assert data == encode_image(gradient(), fmt, "ignored")
        assert Image.open(io.BytesIO(data)).format == name


def test_decode_image_converts_the_mode() -> None:
    buffer = io.BytesIO()
    gradient().convert("RGBA").save(buffer, format="PNG")
    assert decode_image(buffer.getvalue()).mode == "RGB"
    assert decode_image(buffer.getvalue(), mode="L").mode == "L"


def test_outpaint_canvas_keeps_the_image_and_masks_only_the_new_area() -> None:
    image = gradient(32, 24)
    margins = OutpaintMargins(left=8, right=16, top=0, bottom=8)
    canvas, mask = outpaint_canvas(image, margins)
    assert canvas.size == mask.size == (56, 32)
    inner = (8, 0, 40, 24)
    assert np.array_equal(np.asarray(canvas.crop(inner)), np.asarray(image))
    mask_pixels = np.asarray(mask)
    assert (mask_pixels[0:24, 8:40] == 0).all()
    assert mask_pixels.sum() == 255 * (56 * 32 - 32 * 24)
    # The new area continues the edge colours (softened), it is not a flat fill.
    left_column = np.asarray(canvas)[:24, 0, 1].astype(int)
    assert left_column[-1] - left_column[0] > 100
