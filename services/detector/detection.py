"""Face detection as the service does it: shrink, detect with retries, map back,
align, score quality.

Photos are shrunk so their longer side is at most ``max_side`` before the model
sees them (detection cost grows with pixels; faces stay findable), and the
boxes and landmarks are mapped back to the original photo. The first pass uses
the configured confidence; photos with no face are tried again at each lower
``retry_confidences`` value, so a hard photo still yields its face while easy
ones keep the strict threshold.

A photo stored sideways or upside down without an EXIF orientation has no face at the first
threshold, or faces found the wrong way up (at a lower one, with a low confidence, or lying
sideways by their landmarks). With ``try_rotations``, each photo the first pass finds no face
in, or whose most confident face scores below ``UPRIGHT_CONFIDENCE`` or has landmarks more
than 45 degrees off upright, is also tried turned by a
quarter, a half and three quarters (one pass each, at the first pass's confidence, batched
with the other such photos: three passes more at most, and none for a photo whose upright
faces the first pass finds). A turn's faces replace those of the photo's own orientation when
they are more confident (or when the photo has none); the crops are then cut from the turned,
upright pixels, and the boxes and landmarks mapped back to the photo's own pixels.
The turns are tried by the backend's ``orientation_probe``, a faster backend where it has one
(the cascade's BlazeFace); the backend itself then detects the photo in the turn chosen.

Every photo fails alone: when the backend raises on a batch, each of its photos is
run again by itself, and a photo that still fails comes back as its own ``Detection``
with ``error`` set, beside the others' faces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from services.detector.alignment import face_crop
from services.detector.backends.base import FaceCandidate, FaceDetectorBackend
from services.detector.images import DecodedImage
from services.detector.quality import blur_variance
from services.detector.settings import DetectorSettings
from services.embedder.models import DEFAULT_MODEL

log = logging.getLogger(__name__)

# Quarter turns counter-clockwise (as np.rot90 turns) tried on a photo with no upright face.
QUARTER_TURNS = (1, 2, 3)
# A photo whose most confident face at the first threshold is below this is also tried turned.
# On the shared photos, upright, that face scores at least 0.9915 on every photo (146 of 146);
# upside down, MTCNN still finds a face at the first threshold on 54 photos, each below 0.999
# and 48 of them below 0.99 (median 0.963), and their crops match nothing.
UPRIGHT_CONFIDENCE = 0.99


@dataclass(frozen=True)
class DetectionOptions:
    min_confidence: float
    min_face_size: int
    skip_blurred: bool = False
    whole_image_fallback: bool = False
    include_crops: bool = True
    crop_margin: float = 0.1
    max_faces: int = 0
    # The crop's side and how the face is put onto it (an alignment of services/detector/alignment.py).
    crop_size: int = DEFAULT_MODEL.crop.side
    alignment: str = DEFAULT_MODEL.crop.alignment


@dataclass
class DetectedFace:
    box: np.ndarray  # original photo pixels: x_min, y_min, x_max, y_max
    landmarks: np.ndarray | None  # original photo pixels, 5 x 2; None for the whole-image fallback
    confidence: float
    blur_variance: float
    blurred: bool
    crop: np.ndarray | None  # crop_size x crop_size x 3 uint8
    whole_image_fallback: bool = False
    # Degrees the photo was turned counter-clockwise for this face to be found: 0, 90, 180 or 270.
    # The crop is upright; the box and landmarks stay in the photo's own pixels (the landmarks'
    # names, left eye and so on, keep their meaning in the upright face).
    rotation: int = 0

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclass
class Detection:
    image: DecodedImage
    faces: list[DetectedFace] = field(default_factory=list)
    threshold_used: float = 0.0
    blurred_faces_skipped: int = 0
    # Why detection failed for this photo alone; None when it did not.
    error: str | None = None


class FaceDetector:
    """Runs a backend over decoded photos and turns its output into aligned faces."""

    def __init__(self, backend: FaceDetectorBackend, settings: DetectorSettings) -> None:
        self.backend = backend
        self.settings = settings

    def default_options(self) -> DetectionOptions:
        return DetectionOptions(
            min_confidence=self.settings.min_confidence,
            min_face_size=self.settings.min_face_size,
            crop_margin=self.settings.crop_margin,
            crop_size=self.settings.crop_size,
            alignment=self.settings.alignment,
        )

    def detect(self, images: list[DecodedImage], options: DetectionOptions) -> list[Detection]:
        ladder = [options.min_confidence] + [c for c in self.settings.retry_confidences if c < options.min_confidence]
        inputs = [self._detection_input(image) for image in images]
        found: dict[int, tuple[float, list[tuple[FaceCandidate, float]]]] = {}
        failed: dict[int, str] = {}
        pending = list(range(len(images)))
        unsure: list[int] = []  # no face at the first threshold, or its most confident one not upright
        for threshold in ladder:
            if not pending:
                break
            candidates = self._run_backend([inputs[i] for i in pending], options, threshold)
            still_pending = []
            for index, faces in zip(pending, candidates):
                if isinstance(faces, Exception):
                    failed[index] = f"detection failed: {type(faces).__name__}: {faces}"
                elif faces:
                    found[index] = (threshold, faces)
                else:
                    still_pending.append(index)
            pending = still_pending
            if threshold == ladder[0]:
                unsure = [i for i in range(len(images)) if i in pending or (i in found and not _upright(found[i][1]))]
        turned = self._turned_faces(inputs, unsure, options) if self.settings.try_rotations else {}
        detections = []
        for index, image in enumerate(images):
            if index in failed:
                detections.append(Detection(image=image, error=failed[index]))
                continue
            try:
                if index in turned and (
                    index not in found or _most_confident(turned[index][1]) > _most_confident(found[index][1])
                ):
                    turns, faces = turned[index]
                    detections.append(self._finish_turned(image, turns, faces, options))
                    continue
                threshold, faces = found.get(index, (ladder[-1], []))
                detections.append(self._finish(image, faces, threshold, options))
            except Exception as error:
                log.exception("finishing a detection failed", extra={"width": image.width, "height": image.height})
                detections.append(Detection(image=image, error=f"detection failed: {type(error).__name__}: {error}"))
        return detections

    def _turned_faces(
        self, inputs: list[tuple[np.ndarray, float]], pending: list[int], options: DetectionOptions
    ) -> dict[int, tuple[int, list[tuple[FaceCandidate, float]]]]:
        """For each photo of ``pending`` (no upright face at the first threshold), the quarter turns and
        the faces of the turn whose faces are the most confident, when a turn finds any: one pass
        per turn over all of them, at the first pass's confidence. A turn the backend fails on
        finds nothing (the photo keeps what its own orientation found).

        The turns are tried with the backend's ``orientation_probe``; when that is a faster
        backend than the detector's own, the detector's own then detects each photo in the turn
        chosen, and its faces stand (the probe's, should it find none)."""
        probe = self.backend.orientation_probe
        best: dict[int, tuple[int, list[tuple[FaceCandidate, float]]]] = {}
        for turns in QUARTER_TURNS if pending else ():
            batch = [_turned_input(inputs[i], turns) for i in pending]
            for index, faces in zip(pending, self._run_backend(batch, options, options.min_confidence, probe)):
                if isinstance(faces, Exception) or not faces:
                    continue
                if index not in best or _most_confident(faces) > _most_confident(best[index][1]):
                    best[index] = (turns, faces)
        if probe is not self.backend and best:
            chosen = list(best)
            batch = [_turned_input(inputs[i], best[i][0]) for i in chosen]
            for index, faces in zip(chosen, self._run_backend(batch, options, options.min_confidence)):
                if not isinstance(faces, Exception) and faces:
                    best[index] = (best[index][0], faces)
        return best

    def _finish_turned(
        self,
        image: DecodedImage,
        turns: int,
        candidates: list[tuple[FaceCandidate, float]],
        options: DetectionOptions,
    ) -> Detection:
        """``_finish`` on the photo turned by ``turns`` quarter turns, where ``candidates`` were
        found: upright crops, then boxes and landmarks mapped back to the photo's own pixels."""
        width, height = (image.height, image.width) if turns % 2 else (image.width, image.height)
        upright = DecodedImage(
            pixels=np.ascontiguousarray(np.rot90(image.pixels, turns)),
            width=width,
            height=height,
            format=image.format,
            scale=image.scale,
        )
        detection = self._finish(upright, candidates, options.min_confidence, options)
        detection.image = image
        for face in detection.faces:
            corners = _turned_back(face.box.reshape(2, 2), turns, image.width, image.height)
            face.box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
            if face.landmarks is not None:
                face.landmarks = _turned_back(face.landmarks, turns, image.width, image.height)
            face.rotation = 90 * turns
        log.info(
            "faces found in the photo turned",
            extra={"rotation": 90 * turns, "faces": len(detection.faces), "width": image.width, "height": image.height},
        )
        return detection

    def _detection_input(self, image: DecodedImage) -> tuple[np.ndarray, float]:
        """The shrunk image the model sees, and its scale relative to the original photo."""
        pixels = image.pixels
        height, width = pixels.shape[:2]
        shrink = min(1.0, self.settings.max_side / max(height, width))
        if shrink < 1.0:
            size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        return pixels, pixels.shape[1] / image.width

    def _run_backend(
        self,
        inputs: list[tuple[np.ndarray, float]],
        options: DetectionOptions,
        threshold: float,
        backend: FaceDetectorBackend | None = None,
    ) -> list[list[tuple[FaceCandidate, float]] | Exception]:
        """Candidates of ``backend`` (the detector's own unless given) per input, with their
        scale, filtered by face size; the exception instead for an input it fails on even alone."""
        scales = [scale for _, scale in inputs]
        search_size = max(self.settings.min_detection_face_size, round(options.min_face_size * min(scales)))
        outputs = self._backend_outputs(
            backend or self.backend, [pixels for pixels, _ in inputs], search_size, threshold
        )
        return [
            candidates
            if isinstance(candidates, Exception)
            else [
                (c, scale)
                for c in candidates
                if c.confidence >= threshold
                and min(c.box[2] - c.box[0], c.box[3] - c.box[1]) / scale >= options.min_face_size
            ]
            for scale, candidates in zip(scales, outputs)
        ]

    def _backend_outputs(
        self, backend: FaceDetectorBackend, images: list[np.ndarray], search_size: int, threshold: float
    ) -> list[list[FaceCandidate] | Exception]:
        """The backend on all images at once; when that raises, on each image alone."""
        try:
            return list(backend.detect(images, search_size, threshold))
        except Exception as error:
            if len(images) == 1:
                log.exception("the detector backend failed on a photo")
                return [error]
            log.warning("the detector backend failed on a batch; running its photos one by one", exc_info=True)
        return [self._alone(backend, image, search_size, threshold) for image in images]

    def _alone(
        self, backend: FaceDetectorBackend, image: np.ndarray, search_size: int, threshold: float
    ) -> list[FaceCandidate] | Exception:
        try:
            [candidates] = backend.detect([image], search_size, threshold)
        except Exception as error:
            log.exception("the detector backend failed on a photo", extra={"shape": list(image.shape)})
            return error
        return candidates

    def _finish(
        self,
        image: DecodedImage,
        candidates: list[tuple[FaceCandidate, float]],
        threshold: float,
        options: DetectionOptions,
    ) -> Detection:
        detection = Detection(image=image, threshold_used=threshold)
        faces = []
        for candidate, scale in candidates:
            box = candidate.box / scale
            landmarks = candidate.landmarks / scale
            try:
                crop = face_crop(
                    image.pixels,
                    box * image.scale,
                    landmarks * image.scale,
                    options.crop_size,
                    options.crop_margin,
                    options.alignment,
                )
            except ValueError:  # an empty box, or all landmarks at one point: nothing to crop
                continue
            face_side = min(box[2] - box[0], box[3] - box[1]) * image.scale  # in the decoded pixels
            variance = blur_variance(crop, face_side / (1 - 2 * options.crop_margin))
            blurred = variance < self.settings.blur_threshold
            if blurred and options.skip_blurred:
                detection.blurred_faces_skipped += 1
                continue
            faces.append(
                DetectedFace(
                    box=box,
                    landmarks=landmarks,
                    confidence=candidate.confidence,
                    blur_variance=variance,
                    blurred=blurred,
                    crop=crop if options.include_crops else None,
                )
            )
        faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        if options.max_faces:
            faces = faces[: options.max_faces]
        if not faces and options.whole_image_fallback:
            faces = [self._whole_image(image, options)]
        detection.faces = faces
        return detection

    def _whole_image(self, image: DecodedImage, options: DetectionOptions) -> DetectedFace:
        """The central square of the photo as one face, for callers that want a vector anyway."""
        pixels = image.pixels
        height, width = pixels.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = pixels[top : top + side, left : left + side]
        size = options.crop_size
        crop = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
        variance = blur_variance(crop)
        box = np.array([left, top, left + side, top + side], dtype=np.float64) / image.scale
        return DetectedFace(
            box=box,
            landmarks=None,
            confidence=0.0,
            blur_variance=variance,
            blurred=variance < self.settings.blur_threshold,
            crop=crop if options.include_crops else None,
            whole_image_fallback=True,
        )


def _turned_input(detection_input: tuple[np.ndarray, float], turns: int) -> tuple[np.ndarray, float]:
    """A detection input (pixels, scale) turned ``turns`` quarter turns counter-clockwise."""
    pixels, scale = detection_input
    return np.ascontiguousarray(np.rot90(pixels, turns)), scale


def _most_confident(candidates: list[tuple[FaceCandidate, float]]) -> float:
    return max(candidate.confidence for candidate, _ in candidates)


def _upright(candidates: list[tuple[FaceCandidate, float]]) -> bool:
    """Whether the most confident face looks upright: at least ``UPRIGHT_CONFIDENCE``, and its
    landmarks with the mouth below the eyes, within 45 degrees of straight down (a face lying
    sideways has them side by side)."""
    best, _ = max(candidates, key=lambda pair: pair[0].confidence)
    eyes_to_mouth = best.landmarks[3:].mean(axis=0) - best.landmarks[:2].mean(axis=0)
    return best.confidence >= UPRIGHT_CONFIDENCE and bool(eyes_to_mouth[1] > abs(eyes_to_mouth[0]))


def _turned_back(points: np.ndarray, turns: int, width: float, height: float) -> np.ndarray:
    """Points (N x 2, x and y) of a photo turned ``turns`` quarter turns counter-clockwise
    (np.rot90), in the coordinates of the photo itself, ``width`` x ``height`` before the turn."""
    x, y = points[:, 0], points[:, 1]
    if turns % 4 == 1:
        return np.stack([width - y, x], axis=1)
    if turns % 4 == 2:
        return np.stack([width - x, height - y], axis=1)
    if turns % 4 == 3:
        return np.stack([y, height - x], axis=1)
    return np.array(points, dtype=np.float64)
