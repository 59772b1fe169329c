"""The Detector gRPC API: request validation, proto conversion, nothing else."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

import grpc
import numpy as np

from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc
from services.detector.admission import Overloaded, PhotosInHand
from services.detector.alignment import check_alignment
from services.detector.detection import Detection, DetectionOptions, FaceDetector
from services.detector.images import DecodeBudget, DecodeBusy, DecodedImage, ImageError, ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from services.embedder import models
from services.embedder.models import EmbeddingModel

log = logging.getLogger(__name__)


class InvalidRequest(ValueError):
    """A request that breaks the API contract; answered with INVALID_ARGUMENT."""


class DetectorService(detector_pb2_grpc.DetectorServicer):
    def __init__(self, detector: FaceDetector, settings: DetectorSettings, executor: Executor) -> None:
        self.detector = detector
        self.settings = settings
        self.executor = executor
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.budget = DecodeBudget(settings.decode_budget_pixels, settings.decode_wait_s)
        self.in_hand = PhotosInHand(settings.max_pending_images, settings.max_pending_mb * 1024 * 1024)

    async def Detect(
        self, request: detector_pb2.DetectRequest, context: grpc.aio.ServicerContext
    ) -> detector_pb2.DetectResponse:
        with self.in_hand.holding([len(request.image.content)]) as [refused]:
            try:
                options = self._options(request.options)
                if not request.HasField("image"):
                    raise InvalidRequest("image is required")
                if refused is not None:
                    raise refused
                image = await self._run(self._decode, request.image.content)
            except (InvalidRequest, ImageError) as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            except (DecodeBusy, Overloaded) as error:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
            [detection] = await self._run(self.detector.detect, [image], options)
        if detection.error is not None:
            await context.abort(grpc.StatusCode.INTERNAL, detection.error)
        return self._response(detection)

    async def DetectBatch(
        self, request: detector_pb2.DetectBatchRequest, context: grpc.aio.ServicerContext
    ) -> detector_pb2.DetectBatchResponse:
        try:
            options = self._options(request.options)
            if not request.images:
                raise InvalidRequest("images is empty: send at least one image")
            if len(request.images) > self.settings.max_batch_images:
                raise InvalidRequest(
                    f"{len(request.images)} images in one batch, over the limit of {self.settings.max_batch_images}"
                )
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        with self.in_hand.holding([len(image.content) for image in request.images]) as refusals:
            decoded = await asyncio.gather(
                *(
                    self._run(self._decode_or_error, image.content) if refused is None else _refused(refused)
                    for image, refused in zip(request.images, refusals)
                )
            )
            good = [item for item in decoded if isinstance(item, DecodedImage)]
            detections = iter(await self._run(self.detector.detect, good, options) if good else [])
        items = []
        for item in decoded:
            detection = item if isinstance(item, Exception) else next(detections)
            if isinstance(detection, Exception):
                items.append(detector_pb2.DetectBatchItem(error=_item_error(detection)))
            elif detection.error is not None:
                error = common_pb2.ItemError(code=grpc.StatusCode.INTERNAL.value[0], message=detection.error)
                items.append(detector_pb2.DetectBatchItem(error=error))
            else:
                items.append(detector_pb2.DetectBatchItem(detection=self._response(detection)))
        return detector_pb2.DetectBatchResponse(items=items)

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def _decode(self, content: bytes) -> DecodedImage:
        return decode_image(content, self.limits, min_side=self.settings.max_side, budget=self.budget)

    def _decode_or_error(self, content: bytes) -> DecodedImage | Exception:
        try:
            return self._decode(content)
        except (ImageError, DecodeBusy, MemoryError) as error:
            return error
        except Exception as error:  # one photo's failure must not fail its batch
            log.exception("decoding a photo failed")
            return error

    def _options(self, message: detector_pb2.DetectOptions) -> DetectionOptions:
        defaults = self.detector.default_options()
        if not 0 <= message.min_confidence <= 1:
            raise InvalidRequest(f"options.min_confidence must be in (0, 1], got {message.min_confidence}")
        if message.min_face_size < 0:
            raise InvalidRequest(f"options.min_face_size must not be negative, got {message.min_face_size}")
        if not 0 <= message.crop_margin < 0.5:
            raise InvalidRequest(f"options.crop_margin must be in [0, 0.5), got {message.crop_margin}")
        if message.max_faces < 0:
            raise InvalidRequest(f"options.max_faces must not be negative, got {message.max_faces}")
        crop_size, alignment, crop_margin = defaults.crop_size, defaults.alignment, defaults.crop_margin
        if message.crop_model and message.crop_model != self.settings.embedding_model:
            model = _crop_model(message.crop_model)
            crop_size, alignment, crop_margin = model.crop.side, model.crop.alignment, model.crop.margin
        return DetectionOptions(
            min_confidence=message.min_confidence or defaults.min_confidence,
            min_face_size=message.min_face_size or defaults.min_face_size,
            skip_blurred=message.skip_blurred,
            whole_image_fallback=message.whole_image_fallback,
            include_crops=not message.omit_crops,
            crop_margin=message.crop_margin or crop_margin,
            max_faces=message.max_faces,
            crop_size=crop_size,
            alignment=alignment,
        )

    def _response(self, detection: Detection) -> detector_pb2.DetectResponse:
        faces = []
        for index, face in enumerate(detection.faces):
            proto = common_pb2.Face(
                index=index,
                box=_box(face.box),
                confidence=face.confidence,
                quality=common_pb2.FaceQuality(
                    blur_variance=face.blur_variance, blurred=face.blurred, face_size=face.size
                ),
                whole_image_fallback=face.whole_image_fallback,
            )
            if face.landmarks is not None:
                proto.landmarks.CopyFrom(_landmarks(face.landmarks))
            if face.crop is not None:
                height, width = face.crop.shape[:2]
                proto.crop.CopyFrom(common_pb2.AlignedCrop(rgb=face.crop.tobytes(), width=width, height=height))
            faces.append(proto)
        return detector_pb2.DetectResponse(
            faces=faces,
            image_width=detection.image.width,
            image_height=detection.image.height,
            image_format=detection.image.format,
            threshold_used=detection.threshold_used,
            detector=self.detector.backend.name,
            blurred_faces_skipped=detection.blurred_faces_skipped,
        )


async def _refused(error: Overloaded) -> Overloaded:
    return error


def _item_error(error: Exception) -> common_pb2.ItemError:
    """A photo's own failure as its batch item: bad input, no room to decode it, or a fault."""
    if isinstance(error, ImageError):
        code = grpc.StatusCode.INVALID_ARGUMENT
    elif isinstance(error, (DecodeBusy, Overloaded, MemoryError)):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        code = grpc.StatusCode.INTERNAL
    return common_pb2.ItemError(code=code.value[0], message=str(error) or type(error).__name__)


def _box(box: np.ndarray) -> common_pb2.BoundingBox:
    x_min, y_min, x_max, y_max = (float(v) for v in box)
    return common_pb2.BoundingBox(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max)


def _landmarks(points: np.ndarray) -> common_pb2.Landmarks:
    left_eye, right_eye, nose, mouth_left, mouth_right = (common_pb2.Point(x=float(x), y=float(y)) for x, y in points)
    return common_pb2.Landmarks(
        left_eye=left_eye, right_eye=right_eye, nose=nose, mouth_left=mouth_left, mouth_right=mouth_right
    )


def _crop_model(model_id: str) -> EmbeddingModel:
    """The registered embedding model whose crops a call asks for."""
    try:
        model = models.by_id(model_id)
        check_alignment(model.crop.alignment)
    except ValueError as error:
        raise InvalidRequest(f"options.crop_model: {error}") from None
    return model
