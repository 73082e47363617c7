"""Decode and size client-supplied images without trusting them.

Images arrive as base64 (optionally a ``data:`` URL). The header is read first and the
pixel count refused before any pixel is decoded, so a small file claiming huge
dimensions (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from api.errors import InvalidInput, TooLarge

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 4 * 1024 * 1024
ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP"}

# Pillow's own guard, tightened to our limit: it warns above it and raises at twice
# it. The explicit check below is the real gate; this catches any other decode path.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def decode_image(data: str, field: str, mode: str = "RGB") -> Image.Image:
    """A fully loaded image in ``mode`` from base64 text; 422/413 naming ``field`` otherwise."""
    return decode_image_bytes(_decode_base64(data, field), field, mode)


def decode_image_bytes(raw: bytes, field: str, mode: str = "RGB") -> Image.Image:
    """``decode_image`` of the file's bytes themselves (an image the service stored)."""
    if len(raw) > MAX_IMAGE_BYTES:
        raise TooLarge("image_too_large", f"{field} is larger than 10 MB", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))  # lazy: reads only the header
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _too_many_pixels(field, width, height)
            if image.format not in ACCEPTED_FORMATS:
                accepted = ", ".join(sorted(ACCEPTED_FORMATS))
                raise InvalidInput(
                    "unsupported_image_format",
                    f"{field} is {image.format or 'an unknown format'}; use one of {accepted}",
                    field,
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(
            "image_too_large", f"{field} has more than {MAX_IMAGE_PIXELS} pixels", field
        ) from None
    except UnidentifiedImageError:
        raise InvalidInput(
            "unsupported_image_format", f"{field} is not a PNG, JPEG or WebP image", field
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt pixel data
        raise InvalidInput("invalid_image", f"{field} could not be decoded: {exc}", field) from None
    return image.convert(mode)


def _decode_base64(data: str, field: str) -> bytes:
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if not header.endswith(";base64"):
            raise InvalidInput("invalid_image", f"{field} data URL must be base64", field)
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("invalid_image", f"{field} is not valid base64", field) from None


def _too_many_pixels(field: str, width: int, height: int) -> TooLarge:
    return TooLarge(
        "image_too_large",
        f"{field} is {width}x{height}; at most {MAX_IMAGE_PIXELS} pixels are accepted",
        field,
    )


def to_png(image: Image.Image) -> bytes:
    """An input image as it is stored for the worker: zlib level 1, since it is read
    once and the encode is on the submit's path (level 6 is three times slower)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
