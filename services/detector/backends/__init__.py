"""Face detector backends, all behind ``FaceDetectorBackend``."""

from __future__ import annotations

from services.detector.backends.base import FaceCandidate, FaceDetectorBackend
from services.detector.settings import DetectorSettings


def create_backend(settings: DetectorSettings) -> FaceDetectorBackend:
    """The backend the settings ask for, loaded and ready."""
    if settings.backend == "yolo":
        from services.detector.backends.yolo import YoloFaceBackend

        backend: FaceDetectorBackend = YoloFaceBackend(settings.yolo_weights, device=settings.device)
    elif settings.backend in ("blazeface", "cascade"):
        from services.detector.backends.blazeface import BlazeFaceBackend

        backend = BlazeFaceBackend(
            tiles=settings.blazeface_tiles,
            min_score=settings.blazeface_min_score,
            upright_score=settings.blazeface_upright_score,
            threads=settings.torch_threads,
        )
        if settings.backend == "cascade":
            from services.detector.backends.cascade import CascadeBackend
            from services.detector.backends.mtcnn import MtcnnBackend

            backend = CascadeBackend(backend, MtcnnBackend(device=settings.device), settings.cascade_large_face)
    else:
        from services.detector.backends.mtcnn import MtcnnBackend

        backend = MtcnnBackend(device=settings.device)
    backend.load()
    return backend


__all__ = ["FaceCandidate", "FaceDetectorBackend", "create_backend"]
