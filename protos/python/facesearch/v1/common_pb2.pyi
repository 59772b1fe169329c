from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("content", "uri")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    uri: str
    def __init__(self, content: _Optional[bytes] = ..., uri: _Optional[str] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Landmarks(_message.Message):
    __slots__ = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    LEFT_EYE_FIELD_NUMBER: _ClassVar[int]
    RIGHT_EYE_FIELD_NUMBER: _ClassVar[int]
    NOSE_FIELD_NUMBER: _ClassVar[int]
    MOUTH_LEFT_FIELD_NUMBER: _ClassVar[int]
    MOUTH_RIGHT_FIELD_NUMBER: _ClassVar[int]
    left_eye: Point
    right_eye: Point
    nose: Point
    mouth_left: Point
    mouth_right: Point
    def __init__(self, left_eye: _Optional[_Union[Point, _Mapping]] = ..., right_eye: _Optional[_Union[Point, _Mapping]] = ..., nose: _Optional[_Union[Point, _Mapping]] = ..., mouth_left: _Optional[_Union[Point, _Mapping]] = ..., mouth_right: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class FaceQuality(_message.Message):
    __slots__ = ("blur_variance", "blurred", "face_size")
    BLUR_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    BLURRED_FIELD_NUMBER: _ClassVar[int]
    FACE_SIZE_FIELD_NUMBER: _ClassVar[int]
    blur_variance: float
    blurred: bool
    face_size: float
    def __init__(self, blur_variance: _Optional[float] = ..., blurred: _Optional[bool] = ..., face_size: _Optional[float] = ...) -> None: ...

class AlignedCrop(_message.Message):
    __slots__ = ("rgb", "width", "height")
    RGB_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    rgb: bytes
    width: int
    height: int
    def __init__(self, rgb: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("index", "box", "landmarks", "confidence", "quality", "crop", "whole_image_fallback")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    WHOLE_IMAGE_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    index: int
    box: BoundingBox
    landmarks: Landmarks
    confidence: float
    quality: FaceQuality
    crop: AlignedCrop
    whole_image_fallback: bool
    def __init__(self, index: _Optional[int] = ..., box: _Optional[_Union[BoundingBox, _Mapping]] = ..., landmarks: _Optional[_Union[Landmarks, _Mapping]] = ..., confidence: _Optional[float] = ..., quality: _Optional[_Union[FaceQuality, _Mapping]] = ..., crop: _Optional[_Union[AlignedCrop, _Mapping]] = ..., whole_image_fallback: _Optional[bool] = ...) -> None: ...

class EmbeddingModel(_message.Message):
    __slots__ = ("id", "version", "dimension")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: str
    dimension: int
    def __init__(self, id: _Optional[str] = ..., version: _Optional[str] = ..., dimension: _Optional[int] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "model")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    model: EmbeddingModel
    def __init__(self, values: _Optional[_Iterable[float]] = ..., model: _Optional[_Union[EmbeddingModel, _Mapping]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
