"""BlazeFace first, MTCNN where it may have missed faces: on the photos where BlazeFace
finds nothing, and, with ``large_face`` set, on those where every face it finds is large
(at least that share of the photo's shorter side), which is where small faces beside
them could have been missed. MTCNN's faces then replace BlazeFace's for that photo."""

from __future__ import annotations

import numpy as np

from services.detector.backends.base import FaceCandidate, FaceDetectorBackend
from services.detector.backends.blazeface import BlazeFaceBackend
from services.detector.backends.mtcnn import MtcnnBackend


class CascadeBackend(FaceDetectorBackend):
    name = "cascade"

    def __init__(self, fast: BlazeFaceBackend, thorough: MtcnnBackend, large_face: float = 0.0) -> None:
        if not 0 <= large_face <= 1:
            raise ValueError("large_face must be in [0, 1]")
        self.fast = fast
        self.thorough = thorough
        self.large_face = large_face
        self.thorough_photos = 0  # photos MTCNN was run on, for measurements

    def load(self) -> None:
        self.fast.load()
        self.thorough.load()

    @property
    def orientation_probe(self) -> FaceDetectorBackend:
        """BlazeFace alone: a photo's turns are told apart by its large faces, and MTCNN then
        runs (where BlazeFace finds nothing or only large faces) on the turn chosen only."""
        return self.fast

    def needs_thorough(self, image: np.ndarray, faces: list[FaceCandidate]) -> bool:
        if not faces:
            return True
        if self.large_face <= 0:
            return False
        smallest = min(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in faces)
        return smallest >= self.large_face * min(image.shape[:2])

    def detect(self, images: list[np.ndarray], min_face_size: int, min_confidence: float) -> list[list[FaceCandidate]]:
        results = self.fast.detect(images, min_face_size, min_confidence)
        again = [i for i, (image, faces) in enumerate(zip(images, results)) if self.needs_thorough(image, faces)]
        if again:
            self.thorough_photos += len(again)
            thorough = self.thorough.detect([images[i] for i in again], min_face_size, min_confidence)
            for index, faces in zip(again, thorough, strict=True):
                results[index] = faces
        return results
