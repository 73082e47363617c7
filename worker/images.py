"""Image plumbing around the pipelines: input decoding, the outpaint canvas, and output
encoding with the generation parameters embedded (AUTOMATIC1111's ``parameters`` text).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter, PngImagePlugin

from shared.schemas import JobParams, OutpaintMargins, OutputFormat, Task
from worker.schedulers import A1111_SAMPLER_NAMES

JPEG_QUALITY = 95
WEBP_QUALITY = 90
# The stretched edge pixels are blurred so the model sees soft colour fields to build on
# rather than hard streaks it would copy.
OUTPAINT_BLUR_FRACTION = 0.25


def decode_image(data: bytes, mode: str = "RGB") -> Image.Image:
    """An uploaded image (any format Pillow reads) converted to ``mode``."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert(mode)


def outpaint_canvas(
    image: Image.Image, margins: OutpaintMargins, size: tuple[int, int]
) -> tuple[Image.Image, Image.Image]:
    """The init image padded by ``margins`` to ``size``, and a mask that is white on the
    new area (to be painted) and black over the original.

    The new area starts as the image's edge pixels stretched outwards and blurred.
    """
    width, height = size
    inner = (width - margins.left - margins.right, height - margins.top - margins.bottom)
    if image.size != inner:
        image = image.resize(inner, Image.Resampling.LANCZOS)
    pixels = np.asarray(image.convert("RGB"))
    padded = np.pad(
        pixels,
        ((margins.top, margins.bottom), (margins.left, margins.right), (0, 0)),
        mode="edge",
    )
    canvas = Image.fromarray(padded)
    mask = Image.new("L", size, 255)
    mask.paste(0, (margins.left, margins.top, margins.left + inner[0], margins.top + inner[1]))
    radius = max(margins.left, margins.right, margins.top, margins.bottom) * OUTPAINT_BLUR_FRACTION
    blurred = canvas.filter(ImageFilter.GaussianBlur(radius))
    return Image.composite(blurred, canvas, mask), mask


def parameters_text(params: JobParams, seed: int) -> str:
    """The generation parameters in AUTOMATIC1111's format, which many tools read back."""
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    fields = [
        f"Steps: {params.steps}",
        f"Sampler: {A1111_SAMPLER_NAMES.get(params.scheduler, params.scheduler)}",
        f"CFG scale: {params.guidance_scale}",
        f"Seed: {seed}",
        f"Size: {params.width}x{params.height}",
        f"Model: {params.model}",
    ]
    if params.task in (Task.IMAGE_TO_IMAGE, Task.INPAINT):
        fields.append(f"Denoising strength: {params.strength}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def encode_image(image: Image.Image, output_format: OutputFormat, parameters: str) -> bytes:
    """The image as ``output_format`` bytes; identical input gives identical bytes.

    PNGs carry ``parameters`` as a tEXt chunk (iTXt when the prompt is not Latin-1);
    Pillow writes no timestamp, so a re-run of the same job produces the same file.
    """
    buffer = io.BytesIO()
    if output_format is OutputFormat.PNG:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
        image.save(buffer, format="PNG", pnginfo=info)
    elif output_format is OutputFormat.JPEG:
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="WEBP", quality=WEBP_QUALITY)
    return buffer.getvalue()
