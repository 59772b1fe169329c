"""Tests for services.detector.images: decoding every supported photo safely."""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from services.detector.images import (
    SUPPORTED_FORMATS,
    DecodedImage,
    ImageError,
    ImageLimits,
    decode_image,
)
from tests.conftest import DATA

PHOTO = DATA / "photoprism" / "2.jpg"  # 640 x 480 RGB JPEG, no orientation tag
LARGE_PHOTO = DATA / "compreface" / "002_A.jpg"  # 3880 x 5184 RGB JPEG

LIMITS = ImageLimits(max_bytes=100_000_000, max_pixels=100_000_000)

# Distinct, saturated colours so that any mix-up of channels or quadrants shows.
QUADRANT_COLOURS = {
    "top_left": (220, 30, 30),
    "top_right": (30, 200, 40),
    "bottom_left": (40, 50, 210),
    "bottom_right": (230, 220, 40),
}


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def quadrant_image(width: int = 96, height: int = 64) -> np.ndarray:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    half_w, half_h = width // 2, height // 2
    pixels[:half_h, :half_w] = QUADRANT_COLOURS["top_left"]
    pixels[:half_h, half_w:] = QUADRANT_COLOURS["top_right"]
    pixels[half_h:, :half_w] = QUADRANT_COLOURS["bottom_left"]
    pixels[half_h:, half_w:] = QUADRANT_COLOURS["bottom_right"]
    return pixels


def quadrant_interiors(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Mean colour of each quadrant, away from the edges where JPEG rings."""
    height, width = pixels.shape[:2]
    qh, qw = height // 4, width // 4
    centres = {
        "top_left": (qh, qw),
        "top_right": (qh, 3 * qw),
        "bottom_left": (3 * qh, qw),
        "bottom_right": (3 * qh, 3 * qw),
    }
    rh, rw = max(1, qh // 2), max(1, qw // 2)
    return {
        name: pixels[y - rh : y + rh, x - rw : x + rw].reshape(-1, 3).astype(float).mean(axis=0)
        for name, (y, x) in centres.items()
    }


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for an upright scene under this EXIF orientation.

    From the EXIF spec: 3 = stored upside down; 6 = row 0 is the visual right
    side (display needs a 90 degree clockwise turn); 8 = row 0 is the visual
    left side (display needs a 90 degree counter-clockwise turn).
    """
    if orientation == 3:
        return np.ascontiguousarray(np.rot90(upright, 2))
    if orientation == 6:
        return np.ascontiguousarray(np.rot90(upright, 1))  # np.rot90(stored, -1) == upright
    if orientation == 8:
        return np.ascontiguousarray(np.rot90(upright, -1))  # np.rot90(stored, 1) == upright
    raise AssertionError(orientation)


def assert_rgb(decoded: DecodedImage, width: int, height: int) -> None:
    assert isinstance(decoded.pixels, np.ndarray)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == (height, width, 3)
    assert (decoded.width, decoded.height) == (width, height)


@pytest.fixture(scope="module")
def photo_bytes() -> bytes:
    return PHOTO.read_bytes()


@pytest.fixture(scope="module")
def photo_pixels() -> np.ndarray:
    with Image.open(PHOTO) as image:
        return np.asarray(image.convert("RGB")).copy()


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("image_format", "options", "tolerance"),
    [
        ("JPEG", {"quality": 95}, 12),
        ("PNG", {}, 0),
        ("WEBP", {"quality": 90}, 12),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
    ],
)
def test_each_format_decodes_to_rgb_with_right_size_and_colours(image_format, options, tolerance):
    source = quadrant_image(96, 64)
    data = encode(Image.fromarray(source), image_format, **options)

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 96, 64)
    assert decoded.format == image_format
    assert decoded.scale == 1.0
    means = quadrant_interiors(decoded.pixels)
    for name, colour in QUADRANT_COLOURS.items():
        assert np.abs(means[name] - np.array(colour)).max() <= tolerance + 0.5, (name, means[name])
    if tolerance == 0:
        np.testing.assert_array_equal(decoded.pixels, source)


def test_supported_formats_are_the_documented_ones():
    for image_format in ("JPEG", "PNG", "WEBP", "BMP", "TIFF"):
        assert image_format in SUPPORTED_FORMATS
    assert "GIF" not in SUPPORTED_FORMATS


def test_real_photo_decodes_like_pillow(photo_bytes, photo_pixels):
    decoded = decode_image(photo_bytes, LIMITS)

    assert_rgb(decoded, 640, 480)
    assert decoded.format == "JPEG"
    assert decoded.scale == 1.0
    np.testing.assert_array_equal(decoded.pixels, photo_pixels)


@pytest.mark.parametrize(
    ("image_format", "options", "max_mean_error"),
    [
        ("PNG", {}, 0.0),
        ("BMP", {}, 0.0),
        ("TIFF", {}, 0.0),
        ("TIFF", {"compression": "tiff_lzw"}, 0.0),
        ("WEBP", {"lossless": True}, 0.0),
        ("WEBP", {"quality": 90}, 4.0),
        ("JPEG", {"quality": 95}, 4.0),
    ],
)
def test_real_photo_round_trips_through_every_format(photo_pixels, image_format, options, max_mean_error):
    data = encode(Image.fromarray(photo_pixels), image_format, **options)

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 640, 480)
    assert decoded.format == image_format
    error = np.abs(decoded.pixels.astype(float) - photo_pixels.astype(float)).mean()
    assert error <= max_mean_error


# --------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize(
    ("image_format", "options", "max_mean_error"),
    [
        ("PNG", {}, 0.0),
        ("TIFF", {}, 0.0),
        ("WEBP", {"lossless": True}, 0.0),
        ("JPEG", {"quality": 95}, 4.0),
    ],
)
def test_exif_orientation_gives_the_upright_photo(photo_pixels, image_format, options, max_mean_error, orientation):
    upright = photo_pixels  # 480 rows x 640 columns
    stored = stored_for_orientation(upright, orientation)
    data = encode(Image.fromarray(stored), image_format, exif=exif_with_orientation(orientation), **options)

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 640, 480)
    assert decoded.scale == 1.0
    error = np.abs(decoded.pixels.astype(float) - upright.astype(float)).mean()
    assert error <= max_mean_error
    if max_mean_error > 0:
        # Lossy, but clearly the upright photo and not the stored or a wrongly turned one.
        for wrong in (np.rot90(upright, 2), np.fliplr(upright), np.flipud(upright)):
            wrong_error = np.abs(decoded.pixels.astype(float) - wrong.astype(float)).mean()
            assert wrong_error > 5 * error


def test_orientation_one_keeps_stored_pixels(photo_pixels):
    data = encode(Image.fromarray(photo_pixels), "PNG", exif=exif_with_orientation(1))

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 640, 480)
    np.testing.assert_array_equal(decoded.pixels, photo_pixels)


# --------------------------------------------------------------------------- modes


def _grey(decoded: DecodedImage) -> np.ndarray:
    """The single grey channel of a decoded grey image (all three channels equal)."""
    pixels = decoded.pixels
    np.testing.assert_array_equal(pixels[:, :, 0], pixels[:, :, 1])
    np.testing.assert_array_equal(pixels[:, :, 0], pixels[:, :, 2])
    return pixels[:, :, 0]


@pytest.mark.parametrize("image_format", ["PNG", "BMP", "TIFF", "JPEG"])
def test_mode_l_greyscale(image_format):
    ramp = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (16, 1))
    data = encode(Image.fromarray(ramp, "L"), image_format)

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 64, 16)
    grey = _grey(decoded).astype(int)
    tolerance = 3 if image_format == "JPEG" else 0
    assert np.abs(grey - ramp.astype(int)).max() <= tolerance


@pytest.mark.parametrize("image_format", ["PNG", "BMP", "TIFF"])
def test_mode_1_bilevel(image_format):
    board = (np.indices((24, 40)).sum(axis=0) // 4 % 2).astype(bool)
    data = encode(Image.fromarray(board).convert("1"), image_format)

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 40, 24)
    np.testing.assert_array_equal(_grey(decoded), np.where(board, 255, 0))


def _palette_image() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    palette_colours = np.array([[10, 20, 30], [200, 40, 60], [30, 180, 90], [250, 250, 5]], dtype=np.uint8)
    indices = (np.arange(30)[None, :] // 8 + np.arange(20)[:, None] // 10) % 4
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette(palette_colours.flatten().tolist())
    return image, indices, palette_colours


@pytest.mark.parametrize("image_format", ["PNG", "BMP", "TIFF"])
def test_mode_p_palette(image_format):
    image, indices, palette_colours = _palette_image()
    data = encode(image, image_format)

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 30, 20)
    np.testing.assert_array_equal(decoded.pixels, palette_colours[indices])


def test_mode_p_with_transparency_becomes_white():
    image, indices, palette_colours = _palette_image()
    data = encode(image, "PNG", transparency=1)
    assert Image.open(io.BytesIO(data)).info.get("transparency") is not None

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 30, 20)
    expected = palette_colours[indices].copy()
    expected[indices == 1] = 255
    np.testing.assert_array_equal(decoded.pixels, expected)


def _rgba_pixels() -> np.ndarray:
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[:, :, :3] = (200, 30, 60)
    rgba[:, :4, 3] = 0  # transparent
    rgba[:, 4:8, 3] = 255  # opaque
    rgba[:, 8:, 3] = 128  # half
    return rgba


@pytest.mark.parametrize(
    ("image_format", "options"),
    [("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True, "exact": True})],
)
def test_rgba_transparent_pixels_become_white(image_format, options):
    data = encode(Image.fromarray(_rgba_pixels(), "RGBA"), image_format, **options)

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 12, 10)
    pixels = decoded.pixels.astype(int)
    assert (pixels[:, :4] == 255).all()
    assert (pixels[:, 4:8] == (200, 30, 60)).all()
    # Half transparent: halfway between the colour and white.
    half = np.array([200, 30, 60]) * 128 / 255 + 255 * 127 / 255
    assert np.abs(pixels[:, 8:] - half).max() <= 1


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_mode_la_transparent_pixels_become_white(image_format):
    la = np.zeros((8, 10, 2), dtype=np.uint8)
    la[:, :, 0] = 40
    la[:, :5, 1] = 0
    la[:, 5:, 1] = 255
    data = encode(Image.fromarray(la, "LA"), image_format)

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 10, 8)
    grey = _grey(decoded)
    assert (grey[:, :5] == 255).all()
    assert (grey[:, 5:] == 40).all()


@pytest.mark.parametrize(
    ("image_format", "options", "tolerance"),
    [("JPEG", {"quality": 100}, 6), ("TIFF", {}, 0)],
)
def test_cmyk_is_converted_to_rgb(image_format, options, tolerance):
    # Blocks of pure inks: none (white), cyan, magenta, yellow, black.
    inks = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255)]
    expected = [(255, 255, 255), (0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0)]
    cmyk = np.zeros((16, 16 * len(inks), 4), dtype=np.uint8)
    for i, ink in enumerate(inks):
        cmyk[:, 16 * i : 16 * (i + 1)] = ink
    data = encode(Image.fromarray(cmyk, "CMYK"), image_format, **options)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 16 * len(inks), 16)
    for i, colour in enumerate(expected):
        block = decoded.pixels[4:12, 16 * i + 4 : 16 * i + 12].reshape(-1, 3).astype(float)
        assert np.abs(block.mean(axis=0) - colour).max() <= tolerance, (inks[i], block.mean(axis=0))


def _sixteen_bit_columns() -> tuple[np.ndarray, np.ndarray]:
    values = np.array([0, 2560, 32768, 65535], dtype=np.uint16)
    expected = np.array([0, 10, 128, 255], dtype=np.uint8)
    columns = np.repeat(values, 4)[None, :].repeat(6, axis=0)
    return columns, np.repeat(expected, 4)[None, :].repeat(6, axis=0)


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_sixteen_bit_grey_is_scaled_not_clipped(image_format):
    values, expected = _sixteen_bit_columns()
    data = encode(Image.fromarray(values), image_format)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 16, 6)
    np.testing.assert_array_equal(_grey(decoded), expected)


def test_sixteen_bit_grey_png_dark_photo_stays_dark():
    # A dark 16-bit photo: every value is tiny on the 16-bit scale, so it must
    # decode to near black, not be mistaken for 8-bit values.
    values = np.full((5, 7), 200, dtype=np.uint16)
    values[:, 3:] = 1000
    data = encode(Image.fromarray(values), "PNG")

    decoded = decode_image(data, LIMITS)

    grey = _grey(decoded)
    assert (grey[:, :3] == 1).all()  # 200 / 257 = 0.78
    assert (grey[:, 3:] == 4).all()  # 1000 / 257 = 3.9


def test_mode_i_32_bit_tiff_with_16_bit_values():
    values, expected = _sixteen_bit_columns()
    data = encode(Image.fromarray(values.astype(np.int32), "I"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 16, 6)
    np.testing.assert_array_equal(_grey(decoded), expected)


def test_mode_f_float_tiff():
    values = np.array([[0.0, 63.7, 127.6, 255.0]], dtype=np.float32).repeat(3, axis=0)
    data = encode(Image.fromarray(values, "F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"

    decoded = decode_image(data, LIMITS)

    assert_rgb(decoded, 4, 3)
    np.testing.assert_array_equal(_grey(decoded)[0], [0, 64, 128, 255])


# --------------------------------------------------------------------------- reduced decoding


@pytest.fixture(scope="module")
def large_jpeg() -> tuple[bytes, np.ndarray]:
    """A 4000 x 3000 JPEG with smooth, recognisable content, and its full decode."""
    ys, xs = np.mgrid[0:3000, 0:4000].astype(np.float32)
    pixels = np.empty((3000, 4000, 3), dtype=np.uint8)
    pixels[:, :, 0] = (xs / 4000 * 255).astype(np.uint8)
    pixels[:, :, 1] = (ys / 3000 * 255).astype(np.uint8)
    pixels[:, :, 2] = (127 + 100 * np.sin(xs / 300) * np.cos(ys / 250)).astype(np.uint8)
    cv2.circle(pixels, (1000, 800), 300, (255, 255, 255), -1)
    cv2.rectangle(pixels, (2500, 1800), (3500, 2600), (0, 0, 0), -1)
    data = encode(Image.fromarray(pixels), "JPEG", quality=90)
    full = decode_image(data, LIMITS).pixels
    return data, full


@pytest.mark.parametrize("min_side", [400, 600, 1000, 1500, 2000])
def test_min_side_decodes_large_jpeg_at_reduced_size(large_jpeg, min_side):
    data, full = large_jpeg

    decoded = decode_image(data, LIMITS, min_side=min_side)

    height, width = decoded.pixels.shape[:2]
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape[2] == 3
    assert max(width, height) >= min_side
    assert max(width, height) < 4000  # at least halved: min_side <= 2000
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.scale == pytest.approx(width / 4000)
    assert height / 3000 == pytest.approx(decoded.scale, abs=1 / 3000)
    assert decoded.scale in (0.5, 0.25, 0.125)
    # Same picture, just smaller: compare with the full decode shrunk to match.
    reference = cv2.resize(full, (width, height), interpolation=cv2.INTER_AREA)
    assert np.abs(decoded.pixels.astype(float) - reference.astype(float)).mean() < 3


@pytest.mark.parametrize("min_side", [None, 2001, 3999, 4000, 8000])
def test_min_side_never_goes_below_what_was_asked(large_jpeg, min_side):
    data, full = large_jpeg

    decoded = decode_image(data, LIMITS, min_side=min_side)

    assert_rgb(decoded, 4000, 3000)
    assert decoded.scale == 1.0
    np.testing.assert_array_equal(decoded.pixels, full)


def test_min_side_on_real_large_photo():
    data = LARGE_PHOTO.read_bytes()
    full = decode_image(data, LIMITS)
    assert_rgb(full, 3880, 5184)

    decoded = decode_image(data, LIMITS, min_side=1000)

    height, width = decoded.pixels.shape[:2]
    assert 1000 <= max(width, height) < 5184
    assert (decoded.width, decoded.height) == (3880, 5184)
    assert decoded.scale == pytest.approx(width / 3880)
    assert decoded.scale < 1
    reference = cv2.resize(full.pixels, (width, height), interpolation=cv2.INTER_AREA)
    assert np.abs(decoded.pixels.astype(float) - reference.astype(float)).mean() < 4


def test_min_side_with_exif_rotation_keeps_full_oriented_size(large_jpeg):
    _, full = large_jpeg
    stored = stored_for_orientation(full, 6)  # stored 3000 wide x 4000 high
    data = encode(Image.fromarray(stored), "JPEG", quality=90, exif=exif_with_orientation(6))

    decoded = decode_image(data, LIMITS, min_side=1000)

    height, width = decoded.pixels.shape[:2]
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert width > height  # upright, like the scene
    assert 1000 <= width < 4000
    assert decoded.scale == pytest.approx(width / 4000)
    reference = cv2.resize(full, (width, height), interpolation=cv2.INTER_AREA)
    assert np.abs(decoded.pixels.astype(float) - reference.astype(float)).mean() < 4


@pytest.mark.parametrize(
    ("image_format", "options"),
    [("PNG", {"compress_level": 1}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {})],
)
def test_min_side_reduces_other_formats_by_a_whole_factor(image_format, options):
    ys, xs = np.mgrid[0:1500, 0:2000]
    pixels = np.stack([xs % 256, ys % 256, (xs + ys) % 256], axis=2).astype(np.uint8)
    data = encode(Image.fromarray(pixels), image_format, **options)

    decoded = decode_image(data, LIMITS, min_side=300)  # 2000 // 300: reduced 6 times, 334 x 250

    height, width = decoded.pixels.shape[:2]
    assert (width, height) == (334, 250)
    assert (decoded.width, decoded.height) == (2000, 1500)
    assert decoded.scale == pytest.approx(334 / 2000)
    np.testing.assert_array_equal(decoded.pixels, np.asarray(Image.fromarray(pixels).reduce(6)))
    assert_rgb(decode_image(data, LIMITS, min_side=1001), 2000, 1500)  # 2000 // 1001 = 1: full size


def _reduced_reference(data: bytes, factor: int) -> np.ndarray:
    """The full-size decode of ``data``, box-averaged by ``factor``."""
    return np.asarray(Image.fromarray(decode_image(data, LIMITS).pixels).reduce(factor)).astype(float)


@pytest.mark.parametrize("kind", ["bilevel", "palette", "palette-transparency", "16-bit-dark", "colour-key"])
def test_reduced_decoding_of_narrow_modes_matches_the_full_decode(kind):
    # Modes Pillow cannot reduce in place are widened band by band: same picture as the
    # full decode shrunk, transparency over white, a dark 16-bit photo still dark.
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 4, (30, 40)).repeat(10, axis=0).repeat(10, axis=1)  # 400 x 300
    if kind == "bilevel":
        image = Image.fromarray(blocks % 2 == 1).convert("1")
    elif kind.startswith("palette"):
        image = Image.fromarray(blocks.astype(np.uint8), "P")
        image.putpalette([10, 20, 30, 200, 40, 60, 30, 180, 90, 250, 250, 5])
    elif kind == "16-bit-dark":
        image = Image.fromarray((blocks * 300 + 100).astype(np.uint16))
    else:
        image = Image.fromarray(np.stack([blocks * 60] * 3, axis=2).astype(np.uint8))
    options = {"transparency": 1} if kind == "palette-transparency" else {}
    if kind == "colour-key":
        options = {"transparency": (60, 60, 60)}
    data = encode(image, "PNG", **options)

    decoded = decode_image(data, LIMITS, min_side=100)  # reduced 4 times

    assert decoded.pixels.shape == (75, 100, 3)
    reference = _reduced_reference(data, 4)
    assert np.abs(decoded.pixels.astype(float) - reference).max() <= 1
    if kind == "16-bit-dark":
        assert decoded.pixels.max() <= 1000 // 257 + 1
    if kind in ("palette-transparency", "colour-key"):
        assert (decoded.pixels == 255).all(axis=2).any()


def test_reduced_png_is_turned_by_its_exif_orientation(photo_pixels):
    stored = stored_for_orientation(photo_pixels, 6)  # 640 rows x 480 columns
    data = encode(Image.fromarray(stored), "PNG", exif=exif_with_orientation(6))

    decoded = decode_image(data, LIMITS, min_side=200)  # reduced 3 times

    assert (decoded.width, decoded.height) == (640, 480)
    assert decoded.pixels.shape == (160, 214, 3)
    # Reduced as stored (its partial last box on the stored photo's last row), then turned.
    upright = np.rot90(np.asarray(Image.fromarray(stored).reduce(3)), -1)
    np.testing.assert_array_equal(decoded.pixels, upright)


# --------------------------------------------------------------------------- limits and errors


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def black_bilevel_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit black PNG, compressed in a stream so that even a
    30000 x 30000 one never exists uncompressed in memory."""
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then all-zero bits
    compressor = zlib.compressobj(9)
    rows_per_block = max(1, 4_000_000 // len(row))
    parts = []
    for start in range(0, height, rows_per_block):
        parts.append(compressor.compress(row * min(rows_per_block, height - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return black_bilevel_png(30000, 30000)


def test_bomb_builder_makes_valid_pngs():
    decoded = decode_image(black_bilevel_png(37, 23), LIMITS)
    assert_rgb(decoded, 37, 23)
    assert (decoded.pixels == 0).all()


def test_decompression_bomb_is_rejected_from_the_header(bomb):
    assert len(bomb) < 200_000  # tiny file ...
    with Image.open(io.BytesIO(bomb)) as image:
        assert image.size == (30000, 30000)  # ... claiming 900 megapixels
    limits = ImageLimits(max_bytes=10_000_000, max_pixels=50_000_000)

    start = time.perf_counter()
    with pytest.raises(ImageError) as error:
        decode_image(bomb, limits)
    elapsed = time.perf_counter() - start

    assert elapsed < 1.0  # nothing was decoded
    message = str(error.value)
    assert "30000 x 30000" in message
    assert "900000000" in message
    assert "limit" in message and "50000000" in message


def test_max_pixels_boundary():
    data = encode(Image.new("RGB", (20, 10), (1, 2, 3)), "PNG")

    assert decode_image(data, ImageLimits(max_bytes=10_000, max_pixels=200)).pixels.shape == (
        10,
        20,
        3,
    )
    with pytest.raises(ImageError, match="over the limit of 199 pixels"):
        decode_image(data, ImageLimits(max_bytes=10_000, max_pixels=199))


def test_max_bytes_boundary(photo_bytes):
    size = len(photo_bytes)

    decoded = decode_image(photo_bytes, ImageLimits(max_bytes=size, max_pixels=10**8))
    assert_rgb(decoded, 640, 480)

    with pytest.raises(ImageError) as error:
        decode_image(photo_bytes, ImageLimits(max_bytes=size - 1, max_pixels=10**8))
    message = str(error.value)
    assert str(size) in message
    assert f"limit of {size - 1} bytes" in message


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_empty_bytes_are_rejected():
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", LIMITS)


def test_garbage_bytes_are_rejected():
    garbage = np.random.default_rng(7).bytes(4096)

    with pytest.raises(ImageError) as error:
        decode_image(garbage, LIMITS)

    message = str(error.value)
    assert "cannot decode" in message
    assert "not a recognised image" in message
    assert "JPEG" in message and "PNG" in message  # tells the caller what would work


def test_truncated_jpeg_is_rejected(photo_bytes):
    half = photo_bytes[: len(photo_bytes) // 2]

    with pytest.raises(ImageError) as error:
        decode_image(half, LIMITS)

    message = str(error.value)
    assert "cannot decode" in message
    assert "truncated" in message


def test_truncated_png_is_rejected(photo_pixels):
    data = encode(Image.fromarray(photo_pixels), "PNG")

    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(data[: len(data) // 2], LIMITS)


@pytest.mark.parametrize(
    ("image_format", "options"),
    [("GIF", {}), ("ICO", {"sizes": [(32, 32)]})],
)
def test_unsupported_formats_are_named(image_format, options):
    data = encode(Image.fromarray(quadrant_image(32, 32)), image_format, **options)

    with pytest.raises(ImageError) as error:
        decode_image(data, LIMITS)

    message = str(error.value)
    assert "unsupported" in message
    assert image_format in message
    assert "supported: JPEG" in message


def test_colour_key_transparency_becomes_white():
    # An RGB PNG may mark one colour transparent (tRNS) instead of carrying alpha.
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    image.putpixel((0, 0), (200, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=(10, 20, 30))
    pixels = decode_image(buffer.getvalue(), ImageLimits(10**9, 10**9)).pixels
    assert tuple(pixels[4, 4]) == (255, 255, 255)
    assert tuple(pixels[0, 0]) == (200, 0, 0)
