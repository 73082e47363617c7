"""Bad requests to ``POST /v1/jobs`` and what each must get: status, field, code.

One table for the in-process API tests (tests/api/test_bad_input.py) and the same over
HTTP against the real service (tests/integration/test_bad_input.py). Every row must be
refused with a 4xx in the one error shape, with nothing stored and nothing queued.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

from shared.schemas import MAX_IMAGE_B64_CHARS


def png_b64(size: tuple[int, int], mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def png_header_only(width: int, height: int) -> str:
    """A few-byte PNG that claims ``width``×``height``: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\0" * 64)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def gif_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="GIF")
    return base64.b64encode(buffer.getvalue()).decode()


OK = {"prompt": "a cat"}
NESTED_300: dict = {}
_level = NESTED_300
for _ in range(300):
    _level["k"] = {}
    _level = _level["k"]
IMG2IMG = {**OK, "task": "image-to-image"}
INIT = png_b64((64, 64))
UPSCALE = {"task": "upscale", "model": "emoji-upscaler", "init_image": INIT}
MISSING_JOB = "job:job_0123456789abcdef01234567/0"

# (case, body, status, field, code or None)
BAD_INPUTS = [
    ("prompt too long", {"prompt": "x" * 2001}, 422, "prompt", None),
    ("prompt missing", {"steps": 2}, 422, "prompt", None),
    ("width not a multiple of 8", {**OK, "width": 100}, 422, "width", None),
    ("width over the model max", {**OK, "width": 1024}, 422, "width", "size_too_large"),
    ("height over the model max", {**OK, "height": 520}, 422, "height", "size_too_large"),
    ("zero steps", {**OK, "steps": 0}, 422, "steps", None),
    ("151 steps", {**OK, "steps": 151}, 422, "steps", None),
    ("guidance 31", {**OK, "guidance_scale": 31}, 422, "guidance_scale", None),
    ("nine images", {**OK, "num_images": 9}, 422, "num_images", None),
    ("a boolean as a count", {**OK, "num_images": True}, 422, "num_images", None),
    ("a string as a number", {**OK, "steps": "20"}, 422, "steps", None),
    ("a float as an integer", {**OK, "width": 64.0}, 422, "width", None),
    ("a boolean as a scale", {**OK, "guidance_scale": False}, 422, "guidance_scale", None),
    ("a boolean seed", {**OK, "seed": True}, 422, "seed", None),
    ("a boolean margin", {**OK, "task": "outpaint", "init_image": INIT,
                          "outpaint": {"left": True}}, 422, "outpaint.left", None),
    ("unknown scheduler", {**OK, "scheduler": "magic"}, 422, "scheduler", None),
    ("unknown model", {**OK, "model": "nope"}, 422, "model", "unknown_model"),
    ("unknown task", {**OK, "task": "upscale-9000"}, 422, "task", None),
    ("negative seed", {**OK, "seed": -1}, 422, "seed", None),
    ("seed over 2**32-1", {**OK, "seed": 2**32}, 422, "seed", None),
    ("bad output format", {**OK, "output_format": "gif"}, 422, "output_format",
     "unsupported_output_format"),
    ("unknown field", {**OK, "colour": "red"}, 422, "colour", "unknown_field"),
    ("metadata too large", {**OK, "metadata": {"k": "v" * 5000}}, 422, "metadata", None),
    ("metadata nested too deep", {**OK, "metadata": NESTED_300}, 422, "metadata", None),
    ("bad base64", {**IMG2IMG, "init_image": "!!not base64!!"}, 422, "init_image",
     "invalid_image"),
    ("not an image", {**IMG2IMG, "init_image": base64.b64encode(b"hello").decode()}, 422,
     "init_image", "unsupported_image_format"),
    ("unsupported format", {**IMG2IMG, "init_image": gif_b64()}, 422, "init_image",
     "unsupported_image_format"),
    ("oversized image", {**IMG2IMG, "init_image": "A" * (MAX_IMAGE_B64_CHARS + 4)}, 413,
     "init_image", "image_too_large"),
    ("decompression bomb", {**IMG2IMG, "init_image": png_header_only(30000, 30000)}, 413,
     "init_image", "image_too_large"),
    ("just over 4 megapixels", {**IMG2IMG, "init_image": png_header_only(2100, 2100)}, 413,
     "init_image", "image_too_large"),
    ("bad mask base64", {**OK, "task": "inpaint", "init_image": INIT, "mask_image": "%%%"},
     422, "mask_image", "invalid_image"),
    ("init image over the model max", {**IMG2IMG, "init_image": png_b64((600, 64))}, 422,
     "init_image", "size_too_large"),
    ("image task without init image", {**IMG2IMG}, 422, "init_image", None),
    ("init image on text-to-image", {**OK, "init_image": INIT}, 422, "init_image", None),
    ("mask on image-to-image", {**IMG2IMG, "init_image": INIT, "mask_image": INIT}, 422,
     "mask_image", "unexpected_input"),
    ("flow-matching sampler on a noise model", {**OK, "scheduler": "flow_match_euler"}, 422,
     "scheduler", "unsupported_scheduler"),
    ("inpaint without mask", {**OK, "task": "inpaint", "init_image": INIT}, 422,
     "mask_image", None),
    ("outpaint without margins", {**OK, "task": "outpaint", "init_image": INIT}, 422,
     "outpaint", None),
    ("outpaint margin not a multiple of 8",
     {**OK, "task": "outpaint", "init_image": INIT, "outpaint": {"left": 5}}, 422,
     "outpaint.left", None),
    ("outpaint beyond the model max",
     {**OK, "task": "outpaint", "init_image": png_b64((512, 64)), "outpaint": {"left": 8}},
     422, "outpaint", "size_too_large"),
    ("strength 0", {**IMG2IMG, "init_image": INIT, "strength": 0}, 422, "strength", None),
    ("strength leaving no steps", {**IMG2IMG, "init_image": INIT, "steps": 4, "strength": 0.2},
     422, "strength", "no_denoising_steps"),
    ("webhook url not a url", {**OK, "webhook": {"url": "not a url"}}, 422, "webhook.url", None),
    ("webhook url not http", {**OK, "webhook": {"url": "ftp://example.com/x"}}, 422,
     "webhook.url", None),
    ("webhook on loopback", {**OK, "webhook": {"url": "http://127.0.0.1:9000/hook"}}, 422,
     "webhook.url", "invalid_webhook_url"),
    ("webhook on a private network", {**OK, "webhook": {"url": "http://10.1.2.3/hook"}}, 422,
     "webhook.url", "invalid_webhook_url"),
    ("webhook on cloud metadata", {**OK, "webhook": {"url": "http://169.254.169.254/"}}, 422,
     "webhook.url", "invalid_webhook_url"),
    ("webhook on localhost name", {**OK, "webhook": {"url": "http://localhost:8080/"}}, 422,
     "webhook.url", "invalid_webhook_url"),
    ("webhook event not allowed", {**OK, "webhook": {"url": "https://93.184.215.14/",
                                                     "events": ["queued"]}}, 422,
     "webhook.events", None),
    # text-to-video (bounds that need a video model: tests/integration/test_video.py)
    ("text-to-video on an image model", {**OK, "task": "text-to-video"}, 422, "task",
     "unsupported_task"),
    ("mp4 for an image", {**OK, "output_format": "mp4"}, 422, "output_format",
     "unsupported_output_format"),
    ("frames on an image task", {**OK, "num_frames": 4}, 422, "num_frames", "unexpected_input"),
    ("fps on an image task", {**OK, "fps": 8}, 422, "fps", "unexpected_input"),
    ("zero frames", {**OK, "task": "text-to-video", "num_frames": 0}, 422, "num_frames", None),
    ("257 frames", {**OK, "task": "text-to-video", "num_frames": 257}, 422, "num_frames", None),
    ("zero fps", {**OK, "task": "text-to-video", "fps": 0}, 422, "fps", None),
    ("61 fps", {**OK, "task": "text-to-video", "fps": 61}, 422, "fps", None),
    ("fps as a fraction", {**OK, "task": "text-to-video", "fps": 7.5}, 422, "fps", None),
]

# Every number is strict and bounded; every enum closed: each wrong kind of value, each
# field (generated rather than written out, so a new field cannot be forgotten).
_WRONG_KINDS = {"a boolean": True, "a string": "3", "a list": [3], "an object": {"n": 3}}
_NUMBERS = {"width": 64, "height": 64, "num_images": 1, "steps": 4, "guidance_scale": 5,
            "seed": 1, "num_frames": 4, "fps": 8}
for _field in _NUMBERS:
    for _kind, _value in _WRONG_KINDS.items():
        BAD_INPUTS.append((f"{_field} as {_kind}", {**OK, _field: _value}, 422, _field, None))
for _field in ("task", "scheduler", "output_format", "priority"):
    for _kind, _value in {"an unknown name": "nope", "a number": 3, "null": None}.items():
        if _field == "scheduler" and _value is None:
            continue  # null scheduler means the model's default
        BAD_INPUTS.append((f"{_field} as {_kind}", {**OK, _field: _value}, 422, _field, None))
for _field in ("prompt", "negative_prompt", "model"):
    BAD_INPUTS.append((f"{_field} as a number", {**OK, _field: 7}, 422, _field, None))
BAD_INPUTS += [
    ("prompt as null", {"prompt": None}, 422, "prompt", None),
    ("empty model name", {**OK, "model": ""}, 422, "model", None),
    ("metadata not an object", {**OK, "metadata": [1, 2]}, 422, "metadata", None),
    ("webhook not an object", {**OK, "webhook": "https://example.com"}, 422, "webhook", None),
    ("webhook without url", {**OK, "webhook": {"events": ["completed"]}}, 422, "webhook.url",
     None),
    ("webhook with no events", {**OK, "webhook": {"url": "https://93.184.215.14/",
                                                  "events": []}}, 422, "webhook.events", None),
    ("webhook unknown field", {**OK, "webhook": {"url": "https://93.184.215.14/", "x": 1}},
     422, "webhook.x", "unknown_field"),
    ("outpaint unknown side", {**OK, "task": "outpaint", "init_image": INIT,
                               "outpaint": {"middle": 8}}, 422, "outpaint.middle",
     "unknown_field"),
    ("outpaint margin negative", {**OK, "task": "outpaint", "init_image": INIT,
                                  "outpaint": {"left": -8}}, 422, "outpaint.left", None),
    ("outpaint margin too wide", {**OK, "task": "outpaint", "init_image": INIT,
                                  "outpaint": {"left": 2048}}, 422, "outpaint.left", None),
    ("strength above 1", {**IMG2IMG, "init_image": INIT, "strength": 1.5}, 422, "strength",
     None),
    ("init image as a number", {**IMG2IMG, "init_image": 5}, 422, "init_image", None),
    ("data URL that is not base64", {**IMG2IMG, "init_image": "data:image/png,abc"}, 422,
     "init_image", "invalid_image"),
    ("mask on text-to-image", {**OK, "mask_image": INIT}, 422, "mask_image", None),
    ("zero images", {**OK, "num_images": 0}, 422, "num_images", None),
    # 8x8 passes the bounds of the field but leaves the UNet a 1x1 level: the run would fail.
    ("size under the model's minimum", {**OK, "width": 8, "height": 8, "guidance_scale": 1},
     422, "width", "size_too_small"),
    ("steps as a fraction", {**OK, "steps": 2.5}, 422, "steps", None),
    ("negative guidance", {**OK, "guidance_scale": -1}, 422, "guidance_scale", None),
    ("prompt as a list", {**OK, "prompt": ["a", "cat"]}, 422, "prompt", None),
    ("mask on outpaint", {**OK, "task": "outpaint", "init_image": INIT, "mask_image": INIT,
                          "outpaint": {"left": 8}}, 422, "mask_image", "unexpected_input"),
    # Flux's true CFG on a model that has none: the request was written for another model.
    ("true CFG on a CFG model", {**OK, "true_cfg_scale": 3}, 422, "true_cfg_scale",
     "unsupported_guidance"),
    ("true CFG scale under 1", {**OK, "true_cfg_scale": 0.5}, 422, "true_cfg_scale", None),
    ("refiner on a model that is not SDXL", {**OK, "refiner": {"model": "tiny-random"}}, 422,
     "refiner", "unsupported_refiner"),
    ("refiner switch at 1", {**OK, "refiner": {"model": "x", "switch_at": 1}}, 422,
     "refiner.switch_at", None),
    ("upscale without init image", {"task": "upscale", "model": "emoji-upscaler"}, 422,
     "init_image", "missing_input"),
    ("upscale on a model that does not", {**UPSCALE, "model": None}, 422, "task",
     "unsupported_task"),
    ("upscale scale the model does not serve", {**UPSCALE, "scale": 4}, 422, "scale",
     "unsupported_scale"),
    ("upscale scale 3", {**UPSCALE, "scale": 3}, 422, "scale", None),
    ("upscale scale as a string", {**UPSCALE, "scale": "2"}, 422, "scale", None),
    ("upscale noise level over the model max", {**UPSCALE, "noise_level": 999}, 422,
     "noise_level", "noise_level_too_high"),
    ("upscale noise level as a float", {**UPSCALE, "noise_level": 2.5}, 422, "noise_level",
     None),
    ("upscale with width", {**UPSCALE, "width": 128}, 422, "width", "unexpected_input"),
    ("upscale with strength", {**UPSCALE, "strength": 0.5}, 422, "strength",
     "unexpected_input"),
    ("upscale with a mask", {**UPSCALE, "mask_image": INIT}, 422, "mask_image",
     "unexpected_input"),
    ("upscale with outpaint margins", {**UPSCALE, "outpaint": {"left": 8}}, 422, "outpaint",
     "unexpected_input"),
    ("upscale output over the model max", {**UPSCALE, "init_image": png_b64((264, 64))}, 422,
     "init_image", "size_too_large"),
    ("scale on text-to-image", {**OK, "scale": 2}, 422, "scale", "unexpected_input"),
    ("text-to-image on an upscale model", {**OK, "model": "emoji-upscaler"}, 422, "task",
     "unsupported_task"),
    ("upscale with a LoRA", {**UPSCALE, "loras": [{"name": "nope"}]}, 422, "loras",
     "unsupported_for_task"),
    ("upscale with a ControlNet", {**UPSCALE, "control": [{"model": "nope", "image": INIT}]},
     422, "control", "unsupported_for_task"),
    ("init image naming a job badly", {**UPSCALE, "init_image": "job:nope/0"}, 422,
     "init_image", "invalid_image"),
    ("init image naming no job", {**UPSCALE, "init_image": MISSING_JOB}, 404, "init_image",
     "job_not_found"),
]
# Adapters (the service these run against offers no LoRA and no ControlNet).
CONTROL = {"model": "canny", "image": INIT}
BAD_INPUTS += [
    ("unknown LoRA", {**OK, "loras": [{"name": "nope"}]}, 422, "loras.0.name", "unknown_lora"),
    ("LoRA scale over 2", {**OK, "loras": [{"name": "x", "scale": 2.5}]}, 422, "loras.0.scale",
     None),
    ("LoRA scale as a string", {**OK, "loras": [{"name": "x", "scale": "1"}]}, 422,
     "loras.0.scale", None),
    ("LoRA without a name", {**OK, "loras": [{"scale": 1}]}, 422, "loras.0.name", None),
    ("five LoRAs", {**OK, "loras": [{"name": f"l{i}"} for i in range(5)]}, 422, "loras", None),
    ("loras not a list", {**OK, "loras": {"name": "x"}}, 422, "loras", None),
    ("unknown ControlNet", {**OK, "control": [CONTROL]}, 422, "control.0.model",
     "unknown_controlnet"),
    ("ControlNet without an image", {**OK, "control": [{"model": "canny"}]}, 422,
     "control.0.image", None),
    ("ControlNet scale negative", {**OK, "control": [{**CONTROL, "scale": -1}]}, 422,
     "control.0.scale", None),
    ("ControlNet end over 1", {**OK, "control": [{**CONTROL, "end": 1.5}]}, 422,
     "control.0.end", None),
    ("ControlNet unknown field", {**OK, "control": [{**CONTROL, "weight": 1}]}, 422,
     "control.0.weight", "unknown_field"),
    ("four ControlNets", {**OK, "control": [CONTROL] * 4}, 422, "control", None),
]
