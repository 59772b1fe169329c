"""Decoding user photos safely: limits first, then EXIF orientation and RGB conversion.

Photos from real archives come in every shape: huge JPEGs, 16-bit PNGs, CMYK
TIFFs, palette images with transparency. ``decode_image`` turns any of them into
an RGB array, or raises ``ImageError`` with a message a caller can act on. Size
limits are checked from the file header, before any pixel is decoded, so a
decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF")
# EXIF orientations that swap width and height.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}

# The limits below are ours; Pillow's own bomb check would only warn or fail later.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """A photo that cannot be used; the message tells the caller why."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class DecodedImage:
    """An RGB photo, possibly decoded at reduced size.

    ``pixels`` is H x W x 3 uint8. ``width`` and ``height`` are the size of the
    full photo after its EXIF orientation; ``scale`` maps pixel coordinates of
    ``pixels`` back to it (original = decoded / scale).
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str
    scale: float


def decode_image(data: bytes, limits: ImageLimits, min_side: int | None = None) -> DecodedImage:
    """Decodes an encoded photo into RGB.

    When ``min_side`` is given, a JPEG may be decoded at 1/2, 1/4 or 1/8 size as
    long as its longer side stays at least ``min_side`` pixels: much faster for
    the large photos of modern cameras.
    """
    if not data:
        raise ImageError("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(
            f"cannot decode image: not a recognised image file (supported: {', '.join(SUPPORTED_FORMATS)})"
        ) from None
    except Exception as error:  # noqa: BLE001 - Pillow raises many kinds on malformed headers
        raise ImageError(f"cannot decode image: {error}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise ImageError(f"unsupported image format {image.format}; supported: {', '.join(SUPPORTED_FORMATS)}")
    stored_width, stored_height = image.size
    if stored_width < 1 or stored_height < 1:
        raise ImageError(f"image has no pixels ({stored_width} x {stored_height})")
    if stored_width * stored_height > limits.max_pixels:
        raise ImageError(
            f"image is {stored_width} x {stored_height} = {stored_width * stored_height} pixels, "
            f"over the limit of {limits.max_pixels} pixels"
        )
    orientation = _orientation(image)
    # Pillow's TIFF plugin already reports the oriented size (and rotates the
    # pixels itself on load); every other format reports the stored size.
    if orientation in _TRANSPOSING_ORIENTATIONS and image.format != "TIFF":
        width, height = stored_height, stored_width
    else:
        width, height = stored_width, stored_height
    image_format = image.format
    if min_side is not None and image_format in ("JPEG", "MPO"):
        shrink = max(1, max(stored_width, stored_height) // min_side)
        if shrink > 1:
            image.draft("RGB", (stored_width // shrink, stored_height // shrink))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            image = ImageOps.exif_transpose(image)
        pixels = _to_rgb(image)
    except ImageError:
        raise
    except Exception as error:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageError(f"cannot decode image: {error}") from None
    return DecodedImage(
        pixels=pixels,
        width=width,
        height=height,
        format=image_format,
        scale=pixels.shape[1] / width,
    )


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block means no rotation
        return 1


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to H x W x 3 uint8; transparency is composed over white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()
