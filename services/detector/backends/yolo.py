"""YOLOv8-face (a YOLO pose model with five face keypoints) through ultralytics.

Used when the user supplies weights; none are bundled, as no YOLO face weights
can be redistributed with the project.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from services.detector.backends.base import FaceCandidate, FaceDetectorBackend

FACE_KEYPOINTS = 5


def _configure_ultralytics_offline() -> None:
    """ultralytics must never reach for the network or install packages from a server."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "facesearch-ultralytics"))


class YoloFaceBackend(FaceDetectorBackend):
    name = "yolo"

    def __init__(self, weights: Path | str | None, device: str = "cpu", image_size: int = 640):
        if weights is None:
            raise ValueError("the yolo detector backend needs a weights file (yolo_weights)")
        self.weights = Path(weights)
        self.device = device
        self.image_size = image_size
        self.model = None

    def load(self) -> None:
        if not self.weights.is_file():
            raise FileNotFoundError(f"YOLO face weights not found: {self.weights}")
        _configure_ultralytics_offline()
        from ultralytics import YOLO

        model = YOLO(str(self.weights), task="pose")
        shape = getattr(model.model, "kpt_shape", None)
        if shape is None or shape[0] != FACE_KEYPOINTS:
            raise ValueError(
                f"{self.weights} is not a YOLO face model: it must predict {FACE_KEYPOINTS} "
                f"keypoints (eyes, nose, mouth corners), it predicts {shape}"
            )
        self.model = model

    def detect(self, images: list[np.ndarray], min_face_size: int, min_confidence: float) -> list[list[FaceCandidate]]:
        if self.model is None:
            raise RuntimeError("YoloFaceBackend.detect called before load()")
        if not images:
            return []
        # ultralytics takes numpy images in BGR order.
        predictions = self.model.predict(
            [np.ascontiguousarray(image[:, :, ::-1]) for image in images],
            conf=min_confidence,
            imgsz=self.image_size,
            device=self.device,
            verbose=False,
        )
        results = []
        for prediction in predictions:
            boxes = prediction.boxes.xyxy.cpu().numpy().astype(np.float64)
            scores = prediction.boxes.conf.cpu().numpy()
            keypoints = prediction.keypoints.xy.cpu().numpy().astype(np.float64)
            faces = []
            for box, score, points in zip(boxes, scores, keypoints):
                if min(box[2] - box[0], box[3] - box[1]) < min_face_size:
                    continue
                faces.append(FaceCandidate(box=box, landmarks=points.reshape(5, 2), confidence=float(score)))
            results.append(faces)
        return results
