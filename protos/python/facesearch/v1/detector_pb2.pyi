from facesearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectOptions(_message.Message):
    __slots__ = ("min_confidence", "min_face_size", "skip_blurred", "whole_image_fallback", "omit_crops", "crop_margin", "max_faces", "crop_model")
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_FACE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SKIP_BLURRED_FIELD_NUMBER: _ClassVar[int]
    WHOLE_IMAGE_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    OMIT_CROPS_FIELD_NUMBER: _ClassVar[int]
    CROP_MARGIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FACES_FIELD_NUMBER: _ClassVar[int]
    CROP_MODEL_FIELD_NUMBER: _ClassVar[int]
    min_confidence: float
    min_face_size: int
    skip_blurred: bool
    whole_image_fallback: bool
    omit_crops: bool
    crop_margin: float
    max_faces: int
    crop_model: str
    def __init__(self, min_confidence: _Optional[float] = ..., min_face_size: _Optional[int] = ..., skip_blurred: _Optional[bool] = ..., whole_image_fallback: _Optional[bool] = ..., omit_crops: _Optional[bool] = ..., crop_margin: _Optional[float] = ..., max_faces: _Optional[int] = ..., crop_model: _Optional[str] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("image", "options")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    options: DetectOptions
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., options: _Optional[_Union[DetectOptions, _Mapping]] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("faces", "image_width", "image_height", "image_format", "threshold_used", "detector", "blurred_faces_skipped")
    FACES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_USED_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    BLURRED_FACES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[_common_pb2.Face]
    image_width: int
    image_height: int
    image_format: str
    threshold_used: float
    detector: str
    blurred_faces_skipped: int
    def __init__(self, faces: _Optional[_Iterable[_Union[_common_pb2.Face, _Mapping]]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., image_format: _Optional[str] = ..., threshold_used: _Optional[float] = ..., detector: _Optional[str] = ..., blurred_faces_skipped: _Optional[int] = ...) -> None: ...

class DetectBatchRequest(_message.Message):
    __slots__ = ("images", "options")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    options: DetectOptions
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., options: _Optional[_Union[DetectOptions, _Mapping]] = ...) -> None: ...

class DetectBatchItem(_message.Message):
    __slots__ = ("detection", "error")
    DETECTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    detection: DetectResponse
    error: _common_pb2.ItemError
    def __init__(self, detection: _Optional[_Union[DetectResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ItemError, _Mapping]] = ...) -> None: ...

class DetectBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DetectBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[DetectBatchItem, _Mapping]]] = ...) -> None: ...
