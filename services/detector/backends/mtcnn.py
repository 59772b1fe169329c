"""MTCNN: facenet-pytorch's three networks, whose weights ship inside its wheel, run by the
project's own stages (``mtcnn_stages``)."""

from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

from services.detector.backends.base import FaceCandidate, FaceDetectorBackend
from services.detector.backends.mtcnn_stages import CELL, detect_faces

# Step between the scales of the image pyramid (facenet-pytorch's default).
PYRAMID_FACTOR = 0.709


class MtcnnBackend(FaceDetectorBackend):
    """Three-stage cascade (P-Net, R-Net, O-Net). Images of the same size share
    model calls; padding images to a common size would resample the image
    pyramid differently and change what is found, so other sizes run apart."""

    name = "mtcnn"

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.nets: tuple[PNet, RNet, ONet] | None = None

    def load(self) -> None:
        nets = (PNet(), RNet(), ONet())  # each loads its weights from the wheel
        for net in nets:
            net.to(self.device).eval()
        self.nets = nets

    @staticmethod
    def stage_thresholds(min_confidence: float) -> list[float]:
        """Thresholds of the three stages: the last is the requested confidence;
        the earlier, coarse stages stay more permissive than it."""
        return [min(0.6, min_confidence - 0.3), min(0.7, min_confidence - 0.2), min_confidence]

    def detect(self, images: list[np.ndarray], min_face_size: int, min_confidence: float) -> list[list[FaceCandidate]]:
        if self.nets is None:
            raise RuntimeError("MtcnnBackend.detect called before load()")
        if not images:
            return []
        results: list[list[FaceCandidate]] = [[] for _ in images]
        search_size = max(CELL, min_face_size)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            # The pyramid's largest level maps search_size onto P-Net's 12 px window: an image
            # shorter than search_size has no level at all, and holds no face that large.
            if min(image.shape[:2]) >= search_size:
                by_shape.setdefault(image.shape, []).append(index)
        for (height, width, _), indices in by_shape.items():
            batch = np.stack([images[i] for i in indices])
            with torch.inference_mode():
                found = detect_faces(
                    batch, search_size, self.nets, self.stage_thresholds(min_confidence), PYRAMID_FACTOR, self.device
                )
            for index, (image_boxes, image_points) in zip(indices, found):
                results[index] = _candidates(image_boxes, image_points, width, height)
        return results


def _candidates(boxes, points, width: int, height: int) -> list[FaceCandidate]:
    faces = []
    for box, landmarks in zip(np.asarray(boxes), np.asarray(points)):
        clipped = np.array(
            [max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)],
            dtype=np.float64,
        )
        faces.append(
            FaceCandidate(
                box=clipped,
                landmarks=np.asarray(landmarks, dtype=np.float64).reshape(5, 2),
                confidence=float(box[4]),
            )
        )
    return faces
