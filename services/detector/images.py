"""Decoding user photos safely: limits first, then EXIF orientation and RGB conversion.

Photos from real archives come in every shape: huge JPEGs, 16-bit PNGs, CMYK
TIFFs, palette images with transparency. ``decode_image`` turns any of them into
an RGB array, or raises ``ImageError`` with a message a caller can act on. Size
limits are checked from the file header, before any pixel is decoded, so a
decompression bomb over them costs nothing.

A photo costs no more than its detection needs: given ``min_side``, a JPEG is
decoded at 1/2, 1/4 or 1/8 size (libjpeg's scaled decoding) and any other format
is reduced by a whole factor in its own pixel mode (1 or 2 bytes a pixel for a
bilevel, grey or palette photo) before its conversion to RGB, so the RGB array
kept for detection and alignment is never much larger than ``min_side``. The
full-size decode of a non-JPEG photo is transient, and a ``DecodeBudget`` bounds
how many pixels all the decodes of a process hold at once.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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


class DecodeBusy(RuntimeError):
    """The process is decoding as many pixels as its budget allows; try again later."""


class DecodeBudget:
    """The pixels all decodes of a process may hold at once.

    A decode reserves the pixels it decodes at (the stored size, or the reduced size of a
    JPEG decoded in draft mode) for as long as it runs. A photo larger than the whole budget
    reserves all of it, so it decodes alone. When the pixels are not free within ``wait_s``
    the decode raises ``DecodeBusy`` instead of queueing.
    """

    def __init__(self, pixels: int, wait_s: float = 0.0) -> None:
        if pixels < 1:
            raise ValueError(f"a decode budget needs at least one pixel, got {pixels}")
        self.pixels = pixels
        self.wait_s = wait_s
        self._in_flight = 0
        self._changed = threading.Condition()

    @property
    def in_flight(self) -> int:
        with self._changed:
            return self._in_flight

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        cost = min(pixels, self.pixels)
        with self._changed:
            if not self._changed.wait_for(lambda: self._in_flight + cost <= self.pixels, timeout=self.wait_s):
                raise DecodeBusy(
                    f"the detector is decoding {self._in_flight} of its {self.pixels} pixels at once; "
                    f"this photo needs {cost}: retry later"
                )
            self._in_flight += cost
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= cost
                self._changed.notify_all()


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


def decode_image(
    data: bytes, limits: ImageLimits, min_side: int | None = None, budget: DecodeBudget | None = None
) -> DecodedImage:
    """Decodes an encoded photo into RGB.

    When ``min_side`` is given, the photo may be decoded at reduced size as long as
    its longer side stays at least ``min_side`` pixels: a JPEG at 1/2, 1/4 or 1/8
    size, any other format reduced by a whole factor. With a ``budget``, the decode
    holds its pixels in it (``DecodeBusy`` when they are not free in time).
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
    shrink = 1 if min_side is None else max(1, max(stored_width, stored_height) // min_side)
    if shrink > 1 and image_format in ("JPEG", "MPO"):
        try:
            image.draft("RGB", (stored_width // shrink, stored_height // shrink))
        except Exception as error:  # noqa: BLE001 - a malformed JPEG header
            raise ImageError(f"cannot decode image: {error}") from None
        shrink = 1  # the draft is the reduction
    decoded_width, decoded_height = image.size  # a JPEG's draft size once draft() has run
    with budget.reserve(decoded_width * decoded_height) if budget is not None else _unbounded():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image.load()
                sixteen_bit = image.mode.startswith("I;16")
                if shrink > 1:
                    image = _reduce(image, shrink)
                image = ImageOps.exif_transpose(image)
            pixels = _to_rgb(image, sixteen_bit)
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of a corrupt EXIF block, then reads on
            return int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block means no rotation
        return 1


@contextmanager
def _unbounded() -> Iterator[None]:
    yield


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """``image`` shrunk by ``factor`` (box averaging). In its own mode where Pillow can; a
    mode it cannot (bilevel, palette, 16-bit, a colour-key transparency) is widened band by
    band, so only a band ever exists at the wider mode's size."""
    wider = _reducible_mode(image)
    if wider == image.mode:
        return image.reduce(factor)
    width, height = image.size
    rows = max(1, _BAND_PIXELS // (width * factor)) * factor
    reduced = Image.new(wider, (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(height, top + rows))).convert(wider)
        reduced.paste(band.reduce(factor), (0, top // factor))
    reduced.info = dict(image.info)  # the EXIF orientation, applied after the reduction
    return reduced


# Pixels of the wider mode a banded reduction holds at once.
_BAND_PIXELS = 4_000_000
# Modes Image.reduce takes.
_REDUCIBLE_MODES = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F", "PA")


def _reducible_mode(image: Image.Image) -> str:
    """The mode ``image`` is reduced in: its own, or the narrowest wider one that keeps its
    values and transparency."""
    mode = image.mode
    if "transparency" in image.info:
        return "RGBA"
    if mode == "1":
        return "L"
    if mode.startswith("I;16"):
        return "I"
    if mode in _REDUCIBLE_MODES and mode != "PA":
        return mode
    return "RGBA" if "A" in mode else "RGB"


def _to_rgb(image: Image.Image, sixteen_bit: bool = False) -> np.ndarray:
    """Any Pillow mode to H x W x 3 uint8; transparency is composed over white.
    ``sixteen_bit``: integer values are on the 16-bit scale (a 16-bit photo widened to I)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if sixteen_bit or mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
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
