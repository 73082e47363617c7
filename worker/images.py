"""Image plumbing around the pipelines: input decoding, the outpaint canvas, and output
encoding with the generation parameters embedded (AUTOMATIC1111's ``parameters`` text).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter, PngImagePlugin

from shared.schemas import GuidanceKind, JobPlan, OutpaintMargins, OutputFormat
from worker.schedulers import A1111_SAMPLER_NAMES

JPEG_QUALITY = 95
WEBP_QUALITY = 90
# zlib level of output PNGs. Pillow's default (6) takes about 350 ms for a 1024x1024
# image on the development CPU, level 1 about 110 ms for a file 15% larger
# (``python -m bench.png``): at 6 the encode alone would add a fifth to an SDXL image a
# GPU makes in a second or two, and a worker encodes while its GPU waits.
PNG_COMPRESS_LEVEL = 1
# The stretched edge pixels are blurred so the model sees soft colour fields to build on
# rather than hard streaks it would copy.
OUTPAINT_BLUR_FRACTION = 0.25


def decode_image(data: bytes, mode: str = "RGB") -> Image.Image:
    """An uploaded image (any format Pillow reads) converted to ``mode``."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert(mode)


def outpaint_canvas(
    image: Image.Image, margins: OutpaintMargins
) -> tuple[Image.Image, Image.Image]:
    """The init image padded by ``margins``, and a mask that is white on the new area
    (to be painted) and black over the original.

    The new area starts as the image's edge pixels stretched outwards and blurred.
    """
    inner = image.size
    size = (inner[0] + margins.left + margins.right, inner[1] + margins.top + margins.bottom)
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


def parameters_text(plan: JobPlan, seed: int) -> str:
    """What ran, in AUTOMATIC1111's ``parameters`` format, which many tools read back.

    Every value comes from the plan, which is what the engine ran (and what the job shows).
    """
    lines = [plan.prompt]
    if plan.negative_prompt:
        lines.append(f"Negative prompt: {plan.negative_prompt}")
    fields = [
        f"Steps: {plan.steps}",
        f"Sampler: {A1111_SAMPLER_NAMES[plan.scheduler]}",
        *_guidance_fields(plan),
        f"Seed: {seed}",
        f"Size: {plan.width}x{plan.height}",
        f"Model: {plan.model}",
    ]
    if plan.strength is not None:
        fields.append(f"Denoising strength: {plan.strength}")
    if plan.aesthetic_score is not None:
        fields.append(f"Aesthetic score: {plan.aesthetic_score}")
        fields.append(f"Negative aesthetic score: {plan.negative_aesthetic_score}")
    if plan.refiner is not None:
        fields.append(f"Refiner: {plan.refiner.model}")
        fields.append(f"Refiner switch at: {plan.refiner.switch_at}")
    if plan.loras:
        # Quoted like AUTOMATIC1111's "Lora hashes": the value holds commas.
        loras = ", ".join(f"{lora.name}: {lora.scale:g}" for lora in plan.loras)
        fields.append(f'LoRA: "{loras}"')
    for index, control in enumerate(plan.control):
        # The sd-webui-controlnet extension's layout, which its readers parse back.
        fields.append(
            f'ControlNet {index}: "Model: {control.model}, Weight: {control.scale:g}, '
            f'Guidance Start: {control.start:g}, Guidance End: {control.end:g}"'
        )
    if plan.scale is not None:
        fields.append(f"Upscale: {plan.scale}x")
        if plan.noise_level is not None:
            fields.append(f"Noise level: {plan.noise_level}")
        fields.append(f"Tiles: {plan.tile.size}px overlap {plan.tile.overlap}px"
                      if plan.tile else "Tiles: none")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def _guidance_fields(plan: JobPlan) -> list[str]:
    """Guidance under the name of what ran. Forge (the A1111 fork that runs Flux) writes a
    distilled scale as "Distilled CFG Scale" and true CFG as "CFG scale"; a model without
    guidance gets neither unless true CFG ran."""
    fields = []
    if plan.guidance is GuidanceKind.CLASSIFIER_FREE:
        fields.append(f"CFG scale: {plan.guidance_scale}")
    elif plan.guidance is GuidanceKind.DISTILLED:
        fields.append(f"Distilled CFG Scale: {plan.guidance_scale}")
    if plan.true_cfg_scale is not None:
        fields.append(f"CFG scale: {plan.true_cfg_scale}")
    return fields


def encode_image(image: Image.Image, output_format: OutputFormat, parameters: str) -> bytes:
    """The image as ``output_format`` bytes; identical input gives identical bytes.

    PNGs carry ``parameters`` as a tEXt chunk (iTXt when the prompt is not Latin-1);
    Pillow writes no timestamp, so a re-run of the same job produces the same file.
    """
    buffer = io.BytesIO()
    if output_format is OutputFormat.PNG:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
        image.save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    elif output_format is OutputFormat.JPEG:
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="WEBP", quality=WEBP_QUALITY)
    return buffer.getvalue()
