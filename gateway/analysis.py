"""Photos in, faces with unit vectors out: the detector and the embedder, in batches.

Photos are sent to the detector ``detect_batch_size`` at a time (batches in flight
together), then the aligned crops of every face of every photo go to the embedder in
one call, which splits them into inference requests that Triton batches again. A
photo the detector cannot read fails on its own; the others go on.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import grpc
import numpy as np

from facesearch.v1 import common_pb2, detector_pb2
from gateway.downstream import DetectorClient
from gateway.errors import GatewayError
from services.embedder.client.base import Embedder, EmbedderError, EmbedderUnavailable
from services.runtime.deadlines import Deadline

MAX_ID_LENGTH = 512


@dataclass
class PhotoInput:
    content: bytes
    id: str = ""
    uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    content_hash: str = ""

    def __post_init__(self) -> None:
        self.content_hash = self.content_hash or hashlib.sha256(self.content).hexdigest()
        self.id = self.id or self.content_hash


@dataclass
class FoundFace:
    face: common_pb2.Face  # crop pixels dropped once embedded
    vector: np.ndarray

    @property
    def area(self) -> float:
        box = self.face.box
        return max(0.0, box.x_max - box.x_min) * max(0.0, box.y_max - box.y_min)


@dataclass
class AnalysedPhoto:
    photo: PhotoInput
    faces: list[FoundFace] = field(default_factory=list)
    # Set when this photo failed on its own: (gRPC status, message).
    error: tuple[grpc.StatusCode, str] | None = None
    blurred_skipped: int = 0


class FaceAnalyser:
    def __init__(
        self, detector: DetectorClient, embedder: Embedder, *, batch_size: int, concurrency: int, max_photo_bytes: int
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.crop_shape = embedder.model.crop.shape
        self.crop_model = embedder.model.id  # the detector makes this model's crops
        self.batch_size = batch_size
        self._slots = asyncio.Semaphore(concurrency)
        self.max_photo_bytes = max_photo_bytes

    async def analyse(
        self, photos: list[PhotoInput], deadline: Deadline, *, skip_blurred: bool = True
    ) -> list[AnalysedPhoto]:
        """Every face of every photo, largest first, each with its unit vector.

        Raises GatewayError when a service is unavailable or the deadline passes; a
        photo that is bad on its own gets its ``error`` set instead."""
        results = [AnalysedPhoto(photo) for photo in photos]
        for result in results:
            result.error = self._check(result.photo)
        todo = [r for r in results if r.error is None]
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        detections = await asyncio.gather(*(self._detect(batch, deadline, skip_blurred) for batch in batches))
        crops: list[np.ndarray] = []
        owners: list[tuple[AnalysedPhoto, common_pb2.Face]] = []
        for batch, reply in zip(batches, detections, strict=True):
            for result, item in zip(batch, reply.items, strict=True):
                if item.HasField("error"):
                    code = _status(item.error.code)
                    result.error = (code, item.error.message)
                    continue
                result.blurred_skipped = item.detection.blurred_faces_skipped
                for face in item.detection.faces:
                    crops.append(_crop_pixels(face.crop, self.crop_shape))
                    face.ClearField("crop")
                    owners.append((result, face))
        if crops:
            vectors = await self._embed(np.stack(crops), deadline)
            for (result, face), vector in zip(owners, vectors, strict=True):
                result.faces.append(FoundFace(face, vector))
        return results

    def _check(self, photo: PhotoInput) -> tuple[grpc.StatusCode, str] | None:
        if len(photo.id) > MAX_ID_LENGTH:
            return grpc.StatusCode.INVALID_ARGUMENT, f"the photo id is longer than {MAX_ID_LENGTH} characters"
        if not photo.content:
            return grpc.StatusCode.INVALID_ARGUMENT, "the photo is empty"
        if len(photo.content) > self.max_photo_bytes:
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the photo is {len(photo.content)} bytes, over the limit of {self.max_photo_bytes}",
            )
        return None

    async def _detect(
        self, batch: list[AnalysedPhoto], deadline: Deadline, skip_blurred: bool
    ) -> detector_pb2.DetectBatchResponse:
        request = detector_pb2.DetectBatchRequest(
            images=[common_pb2.Image(content=r.photo.content, uri=r.photo.uri) for r in batch],
            options=detector_pb2.DetectOptions(skip_blurred=skip_blurred, crop_model=self.crop_model),
        )
        async with self._slots:
            reply = await self.detector.detect_batch(request, deadline)
        if len(reply.items) != len(batch):
            raise GatewayError(grpc.StatusCode.INTERNAL, "the detector answered for a different number of photos")
        return reply

    async def _embed(self, crops: np.ndarray, deadline: Deadline) -> np.ndarray:
        deadline.check("embedding")
        try:
            embeddings = await self.embedder.embed(crops, deadline=deadline)
        except EmbedderUnavailable as error:
            code = grpc.StatusCode.DEADLINE_EXCEEDED if error.deadline else grpc.StatusCode.UNAVAILABLE
            raise GatewayError(code, f"embedder: {error}") from None
        except EmbedderError as error:
            raise GatewayError(grpc.StatusCode.INTERNAL, f"embedder: {error}") from None
        return embeddings.vectors


def _crop_pixels(crop: common_pb2.AlignedCrop, shape: tuple[int, int, int]) -> np.ndarray:
    """The crop's pixels as the embedding model takes them (``shape``: rows, columns, channels)."""
    side = shape[0]
    if (crop.height, crop.width) != shape[:2] or len(crop.rgb) != crop.height * crop.width * shape[2]:
        raise GatewayError(
            grpc.StatusCode.INTERNAL,
            f"the detector returned a {crop.width}x{crop.height} crop; the embedding model needs {side}x{side} "
            "(set the detector's embedding_model to the embedder's model: its alignment and crop size)",
        )
    return np.frombuffer(crop.rgb, dtype=np.uint8).reshape(shape)


def _status(code: int) -> grpc.StatusCode:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


def clearest_face(faces: list[FoundFace], min_size: float) -> FoundFace | None:
    """The face a photo of one person is most likely about: the largest usable one."""
    usable = [f for f in faces if f.face.quality.face_size >= min_size and not f.face.quality.blurred]
    return max(usable, key=lambda f: (f.area, f.face.confidence), default=None)
