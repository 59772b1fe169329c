"""Tests for services.detector.alignment: the similarity transform and the aligned crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.detector.alignment import (
    CANONICAL_LANDMARKS,
    align_face,
    box_crop,
    box_transform,
    check_alignment,
    face_crop,
    similarity_transform,
    template,
)
from services.embedder.models import BOX_WITH_MARGIN, FIVE_POINT_SIMILARITY


def similarity_matrix(angle_degrees: float, scale: float, tx: float, ty: float) -> np.ndarray:
    angle = np.deg2rad(angle_degrees)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]], dtype=np.float64)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def residual(matrix: np.ndarray, source: np.ndarray, target: np.ndarray) -> float:
    return float(((apply(matrix, source) - target) ** 2).sum())


def least_squares_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Independent reference: a similarity [[a, -b, tx], [b, a, ty]] is linear in
    (a, b, tx, ty), so the best one is an ordinary linear least-squares fit."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target):
        rows.append([x, -y, 1, 0])
        values.append(u)
        rows.append([y, x, 0, 1])
        values.append(v)
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(values), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


# Five face landmarks as a detector reports them, in image pixels.
FACE_POINTS = np.array([[412.3, 300.8], [489.9, 296.1], [452.0, 345.5], [420.7, 390.2], [482.4, 388.9]])


# --------------------------------------------------------------------------- template


def test_template_without_margin_is_the_canonical_template():
    np.testing.assert_allclose(template(112, 0.0), CANONICAL_LANDMARKS * 112, atol=1e-12)


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.25, 0.49])
def test_template_margin_shrinks_about_the_centre(margin):
    size = 160
    points = template(size, margin)

    expected = (CANONICAL_LANDMARKS * size - size / 2) * (1 - 2 * margin) + size / 2
    np.testing.assert_allclose(points, expected, atol=1e-9)
    assert (points > 0).all() and (points < size).all()


@pytest.mark.parametrize("margin", [-0.01, 0.5, 0.7, 1.0])
def test_margin_outside_range_raises(margin):
    with pytest.raises(ValueError, match="margin"):
        template(160, margin)
    with pytest.raises(ValueError, match="margin"):
        align_face(np.zeros((200, 200, 3), np.uint8), FACE_POINTS - 350, size=160, margin=margin)


# --------------------------------------------------------------------------- similarity transform


@pytest.mark.parametrize(
    ("angle", "scale", "tx", "ty"),
    [
        (0.0, 1.0, 0.0, 0.0),
        (12.5, 0.37, -140.2, 33.9),
        (-35.0, 2.6, 17.0, -250.5),
        (90.0, 0.05, 80.0, 80.0),
        (170.0, 1.3, 5.5, 6.5),
        (-135.0, 0.8, -1000.0, 2000.0),
    ],
)
def test_transform_recovers_known_similarity_exactly(angle, scale, tx, ty):
    truth = similarity_matrix(angle, scale, tx, ty)
    target = apply(truth, FACE_POINTS)

    matrix = similarity_transform(FACE_POINTS, target)

    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix, truth, rtol=0, atol=1e-9)
    np.testing.assert_allclose(apply(matrix, FACE_POINTS), target, rtol=0, atol=1e-9)


def test_transform_with_noise_is_the_least_squares_fit():
    rng = np.random.default_rng(3)
    truth = similarity_matrix(-20.0, 1.6, 60.0, -15.0)
    for _ in range(20):
        target = apply(truth, FACE_POINTS) + rng.normal(0, 0.5, size=(5, 2))

        matrix = similarity_transform(FACE_POINTS, target)

        # Same as an independent linear least-squares solution ...
        np.testing.assert_allclose(matrix, least_squares_similarity(FACE_POINTS, target), atol=1e-9)
        # ... so never worse than the true transform, and any nudge makes it worse.
        best = residual(matrix, FACE_POINTS, target)
        assert best <= residual(truth, FACE_POINTS, target) + 1e-9
        for nudge in (
            similarity_matrix(0.2, 1.0, 0, 0),
            similarity_matrix(0.0, 1.002, 0, 0),
            similarity_matrix(0.0, 1.0, 0.05, 0),
            similarity_matrix(0.0, 1.0, 0, -0.05),
        ):
            nudged = nudge[:, :2] @ matrix
            nudged[:, 2] += nudge[:, 2]
            assert residual(nudged, FACE_POINTS, target) > best
        # And close to the truth: the noise is small against the face.
        angle = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
        scale = np.hypot(matrix[0, 0], matrix[1, 0])
        assert angle == pytest.approx(-20.0, abs=1.5)
        assert scale == pytest.approx(1.6, rel=0.02)


def _assert_similarity_structure(matrix: np.ndarray) -> None:
    a, b = matrix[0, 0], matrix[1, 0]
    assert matrix[1, 1] == pytest.approx(a, abs=1e-12)
    assert matrix[0, 1] == pytest.approx(-b, abs=1e-12)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_transform_never_reflects_mirrored_points():
    mirrored = FACE_POINTS * np.array([-1.0, 1.0])  # left and right swapped sides
    target = template(160, 0.1)

    matrix = similarity_transform(mirrored, target)

    _assert_similarity_structure(matrix)
    # A reflection would fit exactly; a proper similarity cannot, so some residual stays.
    assert residual(matrix, mirrored, target) > 1.0
    np.testing.assert_allclose(matrix, least_squares_similarity(mirrored, target), atol=1e-9)


def test_transform_is_always_a_proper_similarity():
    rng = np.random.default_rng(11)
    for _ in range(50):
        source = rng.uniform(-500, 500, size=(5, 2))
        target = rng.uniform(0, 160, size=(5, 2))
        matrix = similarity_transform(source, target)
        _assert_similarity_structure(matrix)
        np.testing.assert_allclose(matrix, least_squares_similarity(source, target), atol=1e-8)


@pytest.mark.parametrize(
    "points",
    [
        np.tile([[250.0, 310.0]], (5, 1)),
        np.zeros((5, 2)),
        np.tile([[1e6, -3.0]], (5, 1)),
    ],
)
def test_degenerate_landmarks_raise(points):
    with pytest.raises(ValueError, match="one point"):
        similarity_transform(points, template(160, 0.1))
    with pytest.raises(ValueError):
        align_face(np.zeros((64, 64, 3), np.uint8), points)


# --------------------------------------------------------------------------- aligned crop


def gaussian_dots(shape: tuple[int, int], points: np.ndarray, sigma: float) -> np.ndarray:
    """A black RGB image with a bright Gaussian dot centred exactly (sub-pixel) on each
    point; pixel centres at integer coordinates, as cv2.warpAffine uses."""
    image = np.zeros(shape, dtype=np.float64)
    radius = int(4 * sigma) + 2
    for x, y in points:
        x0, y0 = int(x) - radius, int(y) - radius
        ys, xs = np.mgrid[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1]
        image[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1] += np.exp(
            -((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)
        )
    grey = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def dot_centroids(crop: np.ndarray, near: np.ndarray, radius: int = 5) -> np.ndarray:
    grey = crop.astype(np.float64).mean(axis=2)
    centroids = []
    for x, y in near:
        xi, yi = round(x), round(y)
        window = grey[yi - radius : yi + radius + 1, xi - radius : xi + radius + 1]
        assert window.max() > 100, "no bright dot near the expected position"
        ys, xs = np.mgrid[yi - radius : yi + radius + 1, xi - radius : xi + radius + 1]
        centroids.append([(window * xs).sum() / window.sum(), (window * ys).sum() / window.sum()])
    return np.array(centroids)


def face_landmarks(size: int, margin: float, image_side: int, spread: float, angle: float):
    """Landmarks of a face whose eyes-to-mouth pattern spans ``spread`` image pixels
    horizontally (before rotation), rotated by ``angle`` and centred in the image."""
    target = template(size, margin)
    factor = spread / (target[:, 0].max() - target[:, 0].min())
    rotation = similarity_matrix(angle, 1.0, 0, 0)[:, :2]
    landmarks = (target - target.mean(axis=0)) @ rotation.T * factor + image_side / 2 + 0.3
    return landmarks, 1 / factor  # the crop's pixels per image pixel


@pytest.mark.parametrize(("size", "margin"), [(160, 0.1), (112, 0.0), (224, 0.25)])
def test_align_face_output_shape_and_type(size, margin):
    image = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    landmarks, _ = face_landmarks(size, margin, 480, 120, 8.0)

    crop = align_face(image, landmarks, size=size, margin=margin)

    assert crop.shape == (size, size, 3)
    assert crop.dtype == np.uint8


def test_align_face_default_size_is_160():
    image = np.zeros((300, 300, 3), np.uint8)
    assert align_face(image, face_landmarks(160, 0.1, 300, 90, 0.0)[0]).shape == (160, 160, 3)


@pytest.mark.parametrize(
    ("image_side", "spread", "angle", "preshrink"),
    [
        (200, 40, 10.0, False),  # about 1:1
        (400, 30, -25.0, False),  # enlarged
        (300, 70, 30.0, False),  # shrunk by less than 2x
        (600, 250, -15.0, True),  # shrunk about 6x
        (3000, 1500, 10.0, True),  # shrunk about 37x
    ],
)
def test_landmarks_land_on_the_template(image_side, spread, angle, preshrink):
    size, margin = 160, 0.1
    landmarks, scale = face_landmarks(size, margin, image_side, spread, angle)
    assert (scale < 0.5) == preshrink
    # Dots about 1.2 crop pixels wide whatever the scale, so they survive the shrink.
    image = gaussian_dots((image_side, image_side), landmarks, sigma=1.2 / scale)

    crop = align_face(image, landmarks, size=size, margin=margin)

    expected = template(size, margin)
    centroids = dot_centroids(crop, expected)
    errors = np.hypot(*(centroids - expected).T)
    assert errors.max() < 1.5
    # Exact geometry, not just close: sub-pixel on both paths, with no shift.
    assert errors.max() < 0.1, errors


def test_landmarks_land_on_the_template_with_drawn_dots():
    size, margin = 160, 0.1
    landmarks, _ = face_landmarks(size, margin, 500, 90, 20.0)
    image = np.full((500, 500, 3), 20, np.uint8)
    for x, y in landmarks:
        cv2.circle(image, (round(x * 16), round(y * 16)), 40, (255, 255, 255), -1, cv2.LINE_AA, shift=4)

    crop = align_face(image, landmarks, size=size, margin=margin)

    expected = template(size, margin)
    background = np.median(crop)
    centroids = dot_centroids(np.clip(crop.astype(float) - background, 0, None), expected)
    assert np.hypot(*(centroids - expected).T).max() < 1.5


def smooth_texture(side: int, feature: int, seed: int = 5) -> np.ndarray:
    """Random, smooth colour texture with blobs of about ``feature`` pixels."""
    cells = side // feature + 2
    coarse = np.random.default_rng(seed).uniform(0, 255, size=(cells, cells, 3))
    return cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("spread", [600, 1500])
def test_large_face_is_preshrunk_like_an_area_resized_image(spread):
    size, margin, side = 160, 0.1, 3000
    landmarks, scale = face_landmarks(size, margin, side, spread, 10.0)
    assert scale < 0.5
    # Blobs of 200 image pixels: 5 to 13 crop pixels, smooth enough to compare.
    image = smooth_texture(side, 200)

    crop = align_face(image, landmarks, size=size, margin=margin)

    # Reference: area-resize the whole photo to the crop's scale, move the
    # landmarks along (pixel centres: x' = (x + 0.5) * f - 0.5), align that.
    small_side = round(side * scale)
    factor = small_side / side
    small = cv2.resize(image, (small_side, small_side), interpolation=cv2.INTER_AREA)
    reference = align_face(small, (landmarks + 0.5) * factor - 0.5, size=size, margin=margin)
    assert scale * side / small_side == pytest.approx(1.0, abs=0.02)  # a plain 1:1 warp
    difference = np.abs(crop.astype(float) - reference.astype(float))
    assert difference.mean() < 1.5
    assert np.percentile(difference, 99) < 8


def test_large_face_crop_is_not_aliased():
    size, margin, side = 160, 0.1, 3000
    landmarks, scale = face_landmarks(size, margin, side, 1500, 10.0)
    assert scale < 0.5
    board = ((np.indices((side, side)).sum(axis=0) % 2) * 255).astype(np.uint8)
    image = np.repeat(board[:, :, None], 3, axis=2)

    crop = align_face(image, landmarks, size=size, margin=margin)

    assert crop.mean() == pytest.approx(127.5, abs=20)
    assert crop.std() < 20
    # Sanity check of the check: a single warp straight from the full image aliases.
    matrix = similarity_transform(landmarks, template(size, margin))
    naive = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert naive.std() > 40


def test_large_face_near_the_image_corner():
    size, margin, side = 160, 0.1, 3000
    landmarks, scale = face_landmarks(size, margin, side, 800, -5.0)
    # Face near the top-left corner: most of the crop lies outside the photo.
    landmarks = landmarks - landmarks.min(axis=0) + 150
    assert scale < 0.5
    image = gaussian_dots((side, side), landmarks, sigma=1.2 / scale)

    crop = align_face(image, landmarks, size=size, margin=margin)

    assert crop.shape == (size, size, 3)
    expected = template(size, margin)
    errors = np.hypot(*(dot_centroids(crop, expected) - expected).T)
    assert errors.max() < 0.1, errors


# --------------------------------------------------------------------------- box crops


def test_box_transform_puts_the_box_inside_the_margin():
    box = np.array([100.0, 50.0, 180.0, 150.0])  # 80 wide, 100 high
    size, margin = 120, 1 / 12
    matrix = box_transform(box, size, margin)
    # Box edges (pixel-edge coordinates) land on the crop's margin lines, in pixel-centre terms.
    corners = np.array([[box[0] - 0.5, box[1] - 0.5], [box[2] - 0.5, box[3] - 0.5]])
    np.testing.assert_allclose(apply(matrix, corners), [[10 - 0.5, 10 - 0.5], [110 - 0.5, 110 - 0.5]], atol=1e-9)
    # No rotation, and the aspect is not kept: x and y scale apart.
    assert matrix[0, 1] == matrix[1, 0] == 0
    assert matrix[0, 0] == pytest.approx(100 / 80) and matrix[1, 1] == pytest.approx(100 / 100)
    with pytest.raises(ValueError, match="empty face box"):
        box_transform(np.array([5.0, 5.0, 5.0, 9.0]), size, margin)
    with pytest.raises(ValueError, match="crop margin"):
        box_transform(box, size, 0.5)


def test_box_crop_holds_the_box_and_its_margin():
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    image[100:200, 150:230] = (200, 30, 60)  # the "face": 80 x 100 pixels
    crop = box_crop(image, np.array([150.0, 100.0, 230.0, 200.0]), 120, 0.1)
    inner, ring = crop[14:106, 14:106], np.concatenate([crop[:10].reshape(-1, 3), crop[-10:].reshape(-1, 3)])
    assert (inner == (200, 30, 60)).all()  # the box fills the crop but its margin
    assert (ring == 0).all()  # the margin shows what is around it
    # A box past the photo's edge: its border pixels repeat there, nothing is left undefined.
    edge = box_crop(image, np.array([-40.0, -40.0, 60.0, 60.0]), 64, 0.1)
    assert edge.shape == (64, 64, 3)


def test_face_crop_follows_the_alignment():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    box = np.array([90.0, 80.0, 210.0, 230.0])
    points = FACE_POINTS - FACE_POINTS.mean(axis=0) + (150, 160)
    as_box = face_crop(image, box, points, 96, 0.1, BOX_WITH_MARGIN)
    np.testing.assert_array_equal(as_box, box_crop(image, box, 96, 0.1))
    as_template = face_crop(image, box, points, 96, 0.1, FIVE_POINT_SIMILARITY)
    np.testing.assert_array_equal(as_template, align_face(image, points, 96, 0.1))
    assert not np.array_equal(as_box, as_template)
    with pytest.raises(ValueError, match="unknown alignment"):
        check_alignment("tilted")
