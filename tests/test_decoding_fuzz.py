"""Fuzzing photo decoding: any bytes, and valid photos of every format and mode with bytes
flipped or cut off, either decode to a well-formed RGB array or raise ImageError, quickly.

A bounded run by default (a few seconds); FACESEARCH_FUZZ_EXAMPLES sets how many inputs each
target tries (CI runs more for a bounded time)."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.detector.images import DecodeBudget, DecodedImage, ImageError, ImageLimits, decode_image

EXAMPLES = int(os.environ.get("FACESEARCH_FUZZ_EXAMPLES", "150"))
LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=4_000_000)
DECODE_BOUND_S = 2.0  # no input may take longer to decode or refuse
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=DECODE_BOUND_S),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

FORMATS = {
    "JPEG": ["L", "RGB", "CMYK"],
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "WEBP": ["RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16"],
}
MAGIC = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM", b"II*\x00", b"MM\x00*"]


def check(data: bytes, min_side: int | None, budget: DecodeBudget | None = None) -> None:
    start = time.monotonic()
    try:
        decoded = decode_image(data, LIMITS, min_side=min_side, budget=budget)
    except ImageError as error:
        assert str(error)
        return
    finally:
        assert time.monotonic() - start < DECODE_BOUND_S
    assert isinstance(decoded, DecodedImage)
    pixels = decoded.pixels
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.flags.c_contiguous
    assert decoded.width * decoded.height <= LIMITS.max_pixels
    assert 0 < decoded.scale <= 1
    assert 1 <= pixels.shape[1] <= decoded.width and 1 <= pixels.shape[0] <= decoded.height
    if min_side is not None and max(decoded.width, decoded.height) >= min_side:
        assert max(pixels.shape[:2]) >= min_side  # never shrunk below what was asked


@st.composite
def photos(draw) -> bytes:
    """A valid photo of some format and mode, then maybe damaged."""
    image_format = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[image_format]))
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    options = {}
    if draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))  # 0 and 9 are not valid orientations
        options["exif"] = exif
    buffer = io.BytesIO()
    try:
        image.save(buffer, image_format, **options)
    except (OSError, ValueError, KeyError):
        assume(False)  # a mode this format cannot store
    data = bytearray(buffer.getvalue())
    for position, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=8)):
        data[position] = value
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(data=photos(), min_side=st.sampled_from([None, 1, 16, 64, 200]))
def test_damaged_photos_decode_or_raise_image_error(data, min_side):
    check(data, min_side)


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=2048), st.tuples(st.sampled_from(MAGIC), st.binary(max_size=2048)).map(b"".join)),
    min_side=st.sampled_from([None, 64]),
)
def test_any_bytes_decode_or_raise_image_error(data, min_side):
    check(data, min_side)


def test_the_budget_is_free_again_after_every_fuzzed_decode():
    budget = DecodeBudget(1_000_000)

    @FUZZ
    @given(data=photos())
    def decode(data):
        check(data, 16, budget)
        assert budget.in_flight == 0

    decode()
