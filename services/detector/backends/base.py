"""The interface every face detector backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FaceCandidate:
    """A face as a backend reports it, in the pixel coordinates of its input."""

    box: np.ndarray  # x_min, y_min, x_max, y_max
    landmarks: np.ndarray  # 5 x 2: left eye, right eye, nose, mouth left, mouth right
    confidence: float


class FaceDetectorBackend(ABC):
    """Finds faces in RGB images. Implementations load their model in ``load``."""

    name: str

    @abstractmethod
    def load(self) -> None:
        """Loads the model; called once before ``detect``."""

    @abstractmethod
    def detect(self, images: list[np.ndarray], min_face_size: int, min_confidence: float) -> list[list[FaceCandidate]]:
        """Detects faces in each H x W x 3 uint8 RGB image, in as few model calls
        as the backend allows. Returns, per image, the faces whose confidence is
        at least ``min_confidence`` and whose shorter side is at least about
        ``min_face_size`` pixels."""

    @property
    def orientation_probe(self) -> FaceDetectorBackend:
        """The backend that tries a photo turned, to learn whether it is stored sideways or upside
        down: this one, or a faster one that finds the faces this one would (a cascade's first
        stage). The detector then runs this backend on the turn the probe chose."""
        return self
