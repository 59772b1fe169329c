import datetime

from facesearch.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FaceSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACE_SOURCE_UNSPECIFIED: _ClassVar[FaceSource]
    FACE_SOURCE_GALLERY: _ClassVar[FaceSource]
    FACE_SOURCE_ENROLLMENT: _ClassVar[FaceSource]
FACE_SOURCE_UNSPECIFIED: FaceSource
FACE_SOURCE_GALLERY: FaceSource
FACE_SOURCE_ENROLLMENT: FaceSource

class FacePayload(_message.Message):
    __slots__ = ("tenant", "photo_id", "photo_uri", "photo_hash", "face_index", "box", "confidence", "quality", "person_id", "source", "model_id", "indexed_at", "metadata", "person_name", "cluster_id", "not_person_ids", "cluster_run", "person_hidden", "cluster_core")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    PHOTO_URI_FIELD_NUMBER: _ClassVar[int]
    PHOTO_HASH_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INDEXED_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PERSON_NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_PERSON_IDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_RUN_FIELD_NUMBER: _ClassVar[int]
    PERSON_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_CORE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    photo_id: str
    photo_uri: str
    photo_hash: str
    face_index: int
    box: _common_pb2.BoundingBox
    confidence: float
    quality: _common_pb2.FaceQuality
    person_id: str
    source: FaceSource
    model_id: str
    indexed_at: _timestamp_pb2.Timestamp
    metadata: _containers.ScalarMap[str, str]
    person_name: str
    cluster_id: str
    not_person_ids: _containers.RepeatedScalarFieldContainer[str]
    cluster_run: int
    person_hidden: bool
    cluster_core: bool
    def __init__(self, tenant: _Optional[str] = ..., photo_id: _Optional[str] = ..., photo_uri: _Optional[str] = ..., photo_hash: _Optional[str] = ..., face_index: _Optional[int] = ..., box: _Optional[_Union[_common_pb2.BoundingBox, _Mapping]] = ..., confidence: _Optional[float] = ..., quality: _Optional[_Union[_common_pb2.FaceQuality, _Mapping]] = ..., person_id: _Optional[str] = ..., source: _Optional[_Union[FaceSource, str]] = ..., model_id: _Optional[str] = ..., indexed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., person_name: _Optional[str] = ..., cluster_id: _Optional[str] = ..., not_person_ids: _Optional[_Iterable[str]] = ..., cluster_run: _Optional[int] = ..., person_hidden: _Optional[bool] = ..., cluster_core: _Optional[bool] = ...) -> None: ...

class FaceRecord(_message.Message):
    __slots__ = ("id", "vector", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    payload: FacePayload
    def __init__(self, id: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., payload: _Optional[_Union[FacePayload, _Mapping]] = ...) -> None: ...

class FaceFilter(_message.Message):
    __slots__ = ("person_ids", "photo_ids", "source", "photo_hashes", "face_index", "cluster_ids", "cluster_run", "face_ids", "not_person_ids")
    PERSON_IDS_FIELD_NUMBER: _ClassVar[int]
    PHOTO_IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PHOTO_HASHES_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_RUN_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    NOT_PERSON_IDS_FIELD_NUMBER: _ClassVar[int]
    person_ids: _containers.RepeatedScalarFieldContainer[str]
    photo_ids: _containers.RepeatedScalarFieldContainer[str]
    source: FaceSource
    photo_hashes: _containers.RepeatedScalarFieldContainer[str]
    face_index: int
    cluster_ids: _containers.RepeatedScalarFieldContainer[str]
    cluster_run: int
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    not_person_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, person_ids: _Optional[_Iterable[str]] = ..., photo_ids: _Optional[_Iterable[str]] = ..., source: _Optional[_Union[FaceSource, str]] = ..., photo_hashes: _Optional[_Iterable[str]] = ..., face_index: _Optional[int] = ..., cluster_ids: _Optional[_Iterable[str]] = ..., cluster_run: _Optional[int] = ..., face_ids: _Optional[_Iterable[str]] = ..., not_person_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("tenant", "model", "faces")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    model: _common_pb2.EmbeddingModel
    faces: _containers.RepeatedCompositeFieldContainer[FaceRecord]
    def __init__(self, tenant: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.EmbeddingModel, _Mapping]] = ..., faces: _Optional[_Iterable[_Union[FaceRecord, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("tenant", "model", "vectors", "top_k", "score_threshold", "filter", "with_vectors")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    model: _common_pb2.EmbeddingModel
    vectors: _containers.RepeatedCompositeFieldContainer[QueryVector]
    top_k: int
    score_threshold: float
    filter: FaceFilter
    with_vectors: bool
    def __init__(self, tenant: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.EmbeddingModel, _Mapping]] = ..., vectors: _Optional[_Iterable[_Union[QueryVector, _Mapping]]] = ..., top_k: _Optional[int] = ..., score_threshold: _Optional[float] = ..., filter: _Optional[_Union[FaceFilter, _Mapping]] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class ScoredFace(_message.Message):
    __slots__ = ("score", "face")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    score: float
    face: FaceRecord
    def __init__(self, score: _Optional[float] = ..., face: _Optional[_Union[FaceRecord, _Mapping]] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[ScoredFace]
    def __init__(self, hits: _Optional[_Iterable[_Union[ScoredFace, _Mapping]]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryResult]
    def __init__(self, results: _Optional[_Iterable[_Union[QueryResult, _Mapping]]] = ...) -> None: ...

class FaceIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("tenant", "model_id", "ids", "photo_id", "person_id", "whole_tenant")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    WHOLE_TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    model_id: str
    ids: FaceIds
    photo_id: str
    person_id: str
    whole_tenant: bool
    def __init__(self, tenant: _Optional[str] = ..., model_id: _Optional[str] = ..., ids: _Optional[_Union[FaceIds, _Mapping]] = ..., photo_id: _Optional[str] = ..., person_id: _Optional[str] = ..., whole_tenant: _Optional[bool] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("tenant", "model_id", "filter")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    model_id: str
    filter: FaceFilter
    def __init__(self, tenant: _Optional[str] = ..., model_id: _Optional[str] = ..., filter: _Optional[_Union[FaceFilter, _Mapping]] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ScrollRequest(_message.Message):
    __slots__ = ("tenant", "model", "filter", "page_size", "page_token", "with_vectors")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    model: _common_pb2.EmbeddingModel
    filter: FaceFilter
    page_size: int
    page_token: str
    with_vectors: bool
    def __init__(self, tenant: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.EmbeddingModel, _Mapping]] = ..., filter: _Optional[_Union[FaceFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class ScrollResponse(_message.Message):
    __slots__ = ("faces", "next_page_token")
    FACES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[FaceRecord]
    next_page_token: str
    def __init__(self, faces: _Optional[_Iterable[_Union[FaceRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTenantModelRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class SetTenantModelRequest(_message.Message):
    __slots__ = ("tenant", "model", "expected_model_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    model: _common_pb2.EmbeddingModel
    expected_model_id: str
    def __init__(self, tenant: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.EmbeddingModel, _Mapping]] = ..., expected_model_id: _Optional[str] = ...) -> None: ...

class GetTenantModelResponse(_message.Message):
    __slots__ = ("choice",)
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    choice: TenantModel
    def __init__(self, choice: _Optional[_Union[TenantModel, _Mapping]] = ...) -> None: ...

class SetTenantModelResponse(_message.Message):
    __slots__ = ("choice",)
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    choice: TenantModel
    def __init__(self, choice: _Optional[_Union[TenantModel, _Mapping]] = ...) -> None: ...

class TenantModel(_message.Message):
    __slots__ = ("tenant", "model", "previous_model_id", "changed_at")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    model: _common_pb2.EmbeddingModel
    previous_model_id: str
    changed_at: _timestamp_pb2.Timestamp
    def __init__(self, tenant: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.EmbeddingModel, _Mapping]] = ..., previous_model_id: _Optional[str] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
