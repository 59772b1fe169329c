"""Face crops as each embedding model takes them: the detection box widened by a margin
and resized onto the square, or a similarity transform that puts the five landmarks where
the model's landmark template has them.

Each embedding model names its alignment (``CropGeometry.alignment`` in
``services.embedder.models``); ``TEMPLATES`` holds the landmark template of each one that
has one, and ``face_crop`` makes the crop of any."""

from __future__ import annotations

import cv2
import numpy as np

from services.embedder.models import BOX_WITH_MARGIN, DLIB_CHIP, FIVE_POINT_SIMILARITY

# Where the eyes, nose tip and mouth corners of a frontal face lie in a tightly
# framed square crop, as fractions of its side (left eye, right eye, nose,
# mouth left, mouth right; left and right as seen in the image). The widely
# used five-point face template.
CANONICAL_LANDMARKS = np.array(
    [
        [0.34191, 0.46157],
        [0.65653, 0.45983],
        [0.50022, 0.64050],
        [0.37097, 0.82469],
        [0.63152, 0.82325],
    ],
    dtype=np.float64,
)


def _dlib_chip_landmarks() -> np.ndarray:
    """The five points of ``CANONICAL_LANDMARKS`` in dlib's face chip, without padding.

    dlib's get_face_chip_details(shape, size, padding) maps its mean face, 68 landmarks
    (iBUG numbering) averaged over its training faces in a unit square, onto the chip by a
    similarity transform, point p going to (padding + p) / (1 + 2 * padding) * size. Its face
    descriptor network was trained on such chips (size 150, padding 0.25). dlib publishes that
    mean face for landmarks 17-67; the points a five-point detector gives are, in it: each
    eye's centre, the mean of its six contour points (36-41 and 42-47), the nose tip (30),
    the mouth corners (48, 54). Those five points in the unit square are this template; the
    padding is then ``template``'s margin: (padding + p) / (1 + 2 * padding) is
    (p - 0.5) * (1 - 2 * margin) + 0.5 with margin = padding / (1 + 2 * padding), 1/6 for
    dlib's 0.25.
    """
    # dlib's mean face (x, y) of the landmarks used, by landmark number.
    mean_face = {
        30: (0.490127, 0.515625),
        36: (0.121737, 0.216423),
        37: (0.187122, 0.178758),
        38: (0.265825, 0.179852),
        39: (0.334606, 0.231733),
        40: (0.260918, 0.245099),
        41: (0.182743, 0.244077),
        42: (0.645647, 0.231733),
        43: (0.714428, 0.179852),
        44: (0.793132, 0.178758),
        45: (0.858516, 0.216423),
        46: (0.797510, 0.244077),
        47: (0.719335, 0.245099),
        48: (0.254149, 0.780233),
        54: (0.726104, 0.780233),
    }

    def centre(numbers: range) -> np.ndarray:
        return np.mean([mean_face[n] for n in numbers], axis=0)

    # Landmarks 36-41 are the eye on the image's left (the subject's right).
    points = [centre(range(36, 42)), centre(range(42, 48)), mean_face[30], mean_face[48], mean_face[54]]
    return np.array(points, dtype=np.float64)


DLIB_CHIP_LANDMARKS = _dlib_chip_landmarks()

# The tight landmark template of each alignment (the models' CropGeometry.alignment).
TEMPLATES: dict[str, np.ndarray] = {
    FIVE_POINT_SIMILARITY: CANONICAL_LANDMARKS,
    DLIB_CHIP: DLIB_CHIP_LANDMARKS,
}


ALIGNMENTS = (BOX_WITH_MARGIN, *TEMPLATES)


def check_alignment(alignment: str) -> str:
    """``alignment`` when a crop can be made by it; ValueError naming the known ones if not."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {alignment!r} (one of {', '.join(map(repr, ALIGNMENTS))})")
    return alignment


def landmark_template(alignment: str) -> np.ndarray:
    """The tight template (fractions of the side) of the alignment named ``alignment``."""
    try:
        return TEMPLATES[alignment]
    except KeyError:
        raise ValueError(f"unknown alignment {alignment!r} (one of {', '.join(map(repr, TEMPLATES))})") from None


def template(size: int, margin: float, alignment: str = FIVE_POINT_SIMILARITY) -> np.ndarray:
    """Target landmark positions in a size x size crop with ``margin`` extra context.

    ``margin`` is the fraction of the crop side added around the tight template
    on each side: 0 is the tight crop, 0.1 shrinks the face to 80% of the crop.
    """
    if not 0 <= margin < 0.5:
        raise ValueError(f"crop margin must be in [0, 0.5), got {margin}")
    centre = np.array([0.5, 0.5])
    return ((landmark_template(alignment) - centre) * (1 - 2 * margin) + centre) * size


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + translation that best maps source
    points onto target points in the least-squares sense (Umeyama's method)."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = (source_centred**2).sum() / len(source)
    if source_variance <= 1e-12:
        raise ValueError("landmarks are all at one point")
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[1, 1] = -1
    rotation = u @ reflection @ vt
    scale = (singular * np.diag(reflection)).sum() / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def face_crop(
    image: np.ndarray,
    box: np.ndarray,
    landmarks: np.ndarray,
    size: int,
    margin: float,
    alignment: str,
) -> np.ndarray:
    """The size x size x 3 crop of the face with this box (x_min, y_min, x_max, y_max) and these
    landmarks (5 x 2), both in pixel coordinates of ``image``, as ``alignment`` makes it."""
    if alignment == BOX_WITH_MARGIN:
        return box_crop(image, box, size, margin)
    return align_face(image, landmarks, size, margin, alignment)


def box_transform(box: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The 2x3 axis-aligned transform taking ``box`` (x_min, y_min, x_max, y_max), widened on
    each side so that it fills all but ``margin`` of the crop side there, onto the
    size x size crop. The box's aspect is not kept: its width and height each fill the crop."""
    if not 0 <= margin < 0.5:
        raise ValueError(f"crop margin must be in [0, 0.5), got {margin}")
    x_min, y_min, x_max, y_max = (float(v) for v in box)
    width, height = x_max - x_min, y_max - y_min
    if width <= 0 or height <= 0:
        raise ValueError(f"empty face box {[x_min, y_min, x_max, y_max]}")
    inner = size * (1 - 2 * margin)  # the crop pixels the box itself covers
    sx, sy = inner / width, inner / height
    offset = size * margin
    # Pixel centres: box corner x_min maps to crop coordinate offset - 0.5 + 0.5 (edge to edge).
    return np.array(
        [[sx, 0.0, offset - x_min * sx - 0.5 + 0.5 * sx], [0.0, sy, offset - y_min * sy - 0.5 + 0.5 * sy]],
        dtype=np.float64,
    )


def box_crop(image: np.ndarray, box: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The size x size x 3 crop of the face box widened by ``margin`` of the side each way
    (``box_transform``); beyond the photo's edge its border pixels are repeated."""
    return _warp(image, box_transform(box, size, margin), size)


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int = 160,
    margin: float = 0.1,
    alignment: str = FIVE_POINT_SIMILARITY,
) -> np.ndarray:
    """Returns the size x size x 3 aligned crop of the face with these landmarks
    (pixel coordinates of ``image``), onto the template of ``alignment``."""
    matrix = similarity_transform(landmarks, template(size, margin, alignment))
    return _warp(image, matrix, size)


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``image`` through the 2x3 ``matrix`` onto a size x size crop, without aliasing."""
    # The least scale of the two axes (the same for a similarity; a box's may differ).
    scale = float(min(np.hypot(matrix[0, 0], matrix[1, 0]), np.hypot(matrix[0, 1], matrix[1, 1])))
    if scale < 0.5:
        # Shrinking by more than 2x in one warp aliases; pre-shrink the face's
        # neighbourhood with area averaging first.
        image, matrix = _preshrink(image, matrix, size, scale)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _preshrink(image: np.ndarray, matrix: np.ndarray, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    source_corners = corners @ inverse.T
    height, width = image.shape[:2]
    x0, y0 = np.floor(source_corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(source_corners.max(axis=0)).astype(int) + 2
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width), min(y1, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image, matrix
    factor = 2 * scale  # leaves a 2x downscale to the warp
    region = image[y0:y1, x0:x1]
    new_size = (max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor)))
    shrunk = cv2.resize(region, new_size, interpolation=cv2.INTER_AREA)
    fx, fy = new_size[0] / (x1 - x0), new_size[1] / (y1 - y0)
    # cv2.resize aligns pixel areas, not pixel centres: the centre of shrunk
    # pixel i lies at (i + 0.5) / f - 0.5 in the region, so
    # image = shrunk / f + origin + (0.5 / f - 0.5).
    to_image = np.array(
        [[1 / fx, 0, x0 + 0.5 / fx - 0.5], [0, 1 / fy, y0 + 0.5 / fy - 0.5], [0, 0, 1]],
        dtype=np.float64,
    )
    return shrunk, matrix @ to_image
