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

class PhotoStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHOTO_STATUS_UNSPECIFIED: _ClassVar[PhotoStatus]
    PHOTO_STATUS_INDEXED: _ClassVar[PhotoStatus]
    PHOTO_STATUS_DUPLICATE: _ClassVar[PhotoStatus]
    PHOTO_STATUS_NO_FACE: _ClassVar[PhotoStatus]
    PHOTO_STATUS_MULTIPLE_FACES: _ClassVar[PhotoStatus]
    PHOTO_STATUS_INVALID: _ClassVar[PhotoStatus]
    PHOTO_STATUS_FAILED: _ClassVar[PhotoStatus]
    PHOTO_STATUS_ENROLLED: _ClassVar[PhotoStatus]

class PeopleMatch(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PEOPLE_MATCH_UNSPECIFIED: _ClassVar[PeopleMatch]
    PEOPLE_MATCH_ANY: _ClassVar[PeopleMatch]
    PEOPLE_MATCH_ALL: _ClassVar[PeopleMatch]

class ClusteringState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLUSTERING_STATE_UNSPECIFIED: _ClassVar[ClusteringState]
    CLUSTERING_STATE_RUNNING: _ClassVar[ClusteringState]
    CLUSTERING_STATE_DONE: _ClassVar[ClusteringState]
    CLUSTERING_STATE_FAILED: _ClassVar[ClusteringState]
PHOTO_STATUS_UNSPECIFIED: PhotoStatus
PHOTO_STATUS_INDEXED: PhotoStatus
PHOTO_STATUS_DUPLICATE: PhotoStatus
PHOTO_STATUS_NO_FACE: PhotoStatus
PHOTO_STATUS_MULTIPLE_FACES: PhotoStatus
PHOTO_STATUS_INVALID: PhotoStatus
PHOTO_STATUS_FAILED: PhotoStatus
PHOTO_STATUS_ENROLLED: PhotoStatus
PEOPLE_MATCH_UNSPECIFIED: PeopleMatch
PEOPLE_MATCH_ANY: PeopleMatch
PEOPLE_MATCH_ALL: PeopleMatch
CLUSTERING_STATE_UNSPECIFIED: ClusteringState
CLUSTERING_STATE_RUNNING: ClusteringState
CLUSTERING_STATE_DONE: ClusteringState
CLUSTERING_STATE_FAILED: ClusteringState

class Photo(_message.Message):
    __slots__ = ("id", "uri", "content", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    uri: str
    content: bytes
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., uri: _Optional[str] = ..., content: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PhotoResult(_message.Message):
    __slots__ = ("photo_id", "status", "faces_found", "faces_stored", "content_hash", "message")
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FACES_FOUND_FIELD_NUMBER: _ClassVar[int]
    FACES_STORED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    photo_id: str
    status: PhotoStatus
    faces_found: int
    faces_stored: int
    content_hash: str
    message: str
    def __init__(self, photo_id: _Optional[str] = ..., status: _Optional[_Union[PhotoStatus, str]] = ..., faces_found: _Optional[int] = ..., faces_stored: _Optional[int] = ..., content_hash: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class MatchSettings(_message.Message):
    __slots__ = ("model", "similarity_threshold")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.EmbeddingModel
    similarity_threshold: float
    def __init__(self, model: _Optional[_Union[_common_pb2.EmbeddingModel, _Mapping]] = ..., similarity_threshold: _Optional[float] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("person_id", "display_name", "photos")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PHOTOS_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    display_name: str
    photos: _containers.RepeatedCompositeFieldContainer[Photo]
    def __init__(self, person_id: _Optional[str] = ..., display_name: _Optional[str] = ..., photos: _Optional[_Iterable[_Union[Photo, _Mapping]]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("person_id", "results", "reference_faces", "settings")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FACES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    results: _containers.RepeatedCompositeFieldContainer[PhotoResult]
    reference_faces: int
    settings: MatchSettings
    def __init__(self, person_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[PhotoResult, _Mapping]]] = ..., reference_faces: _Optional[int] = ..., settings: _Optional[_Union[MatchSettings, _Mapping]] = ...) -> None: ...

class IndexPhotosRequest(_message.Message):
    __slots__ = ("photo",)
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    photo: Photo
    def __init__(self, photo: _Optional[_Union[Photo, _Mapping]] = ...) -> None: ...

class IndexPhotosResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: PhotoResult
    def __init__(self, result: _Optional[_Union[PhotoResult, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("a", "b", "similarity_threshold")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    a: Photo
    b: Photo
    similarity_threshold: float
    def __init__(self, a: _Optional[_Union[Photo, _Mapping]] = ..., b: _Optional[_Union[Photo, _Mapping]] = ..., similarity_threshold: _Optional[float] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("same_person", "similarity", "distance", "settings", "face_a", "face_b")
    SAME_PERSON_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    FACE_A_FIELD_NUMBER: _ClassVar[int]
    FACE_B_FIELD_NUMBER: _ClassVar[int]
    same_person: bool
    similarity: float
    distance: float
    settings: MatchSettings
    face_a: _common_pb2.Face
    face_b: _common_pb2.Face
    def __init__(self, same_person: _Optional[bool] = ..., similarity: _Optional[float] = ..., distance: _Optional[float] = ..., settings: _Optional[_Union[MatchSettings, _Mapping]] = ..., face_a: _Optional[_Union[_common_pb2.Face, _Mapping]] = ..., face_b: _Optional[_Union[_common_pb2.Face, _Mapping]] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("photo", "top_k", "similarity_threshold")
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    photo: Photo
    top_k: int
    similarity_threshold: float
    def __init__(self, photo: _Optional[_Union[Photo, _Mapping]] = ..., top_k: _Optional[int] = ..., similarity_threshold: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("person_id", "display_name", "similarity")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    display_name: str
    similarity: float
    def __init__(self, person_id: _Optional[str] = ..., display_name: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class IdentifiedFace(_message.Message):
    __slots__ = ("face", "candidates", "unknown")
    FACE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    face: _common_pb2.Face
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    unknown: bool
    def __init__(self, face: _Optional[_Union[_common_pb2.Face, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., unknown: _Optional[bool] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("faces", "settings")
    FACES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[IdentifiedFace]
    settings: MatchSettings
    def __init__(self, faces: _Optional[_Iterable[_Union[IdentifiedFace, _Mapping]]] = ..., settings: _Optional[_Union[MatchSettings, _Mapping]] = ...) -> None: ...

class FindMeRequest(_message.Message):
    __slots__ = ("references", "person_id", "similarity_threshold", "limit", "page_token", "person_ids", "people_match")
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PERSON_IDS_FIELD_NUMBER: _ClassVar[int]
    PEOPLE_MATCH_FIELD_NUMBER: _ClassVar[int]
    references: _containers.RepeatedCompositeFieldContainer[Photo]
    person_id: str
    similarity_threshold: float
    limit: int
    page_token: str
    person_ids: _containers.RepeatedScalarFieldContainer[str]
    people_match: PeopleMatch
    def __init__(self, references: _Optional[_Iterable[_Union[Photo, _Mapping]]] = ..., person_id: _Optional[str] = ..., similarity_threshold: _Optional[float] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., person_ids: _Optional[_Iterable[str]] = ..., people_match: _Optional[_Union[PeopleMatch, str]] = ...) -> None: ...

class PhotoMatch(_message.Message):
    __slots__ = ("photo_id", "photo_uri", "box", "face_index", "similarity", "person_ids")
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    PHOTO_URI_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PERSON_IDS_FIELD_NUMBER: _ClassVar[int]
    photo_id: str
    photo_uri: str
    box: _common_pb2.BoundingBox
    face_index: int
    similarity: float
    person_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, photo_id: _Optional[str] = ..., photo_uri: _Optional[str] = ..., box: _Optional[_Union[_common_pb2.BoundingBox, _Mapping]] = ..., face_index: _Optional[int] = ..., similarity: _Optional[float] = ..., person_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class FindMeResponse(_message.Message):
    __slots__ = ("matches", "next_page_token", "settings")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[PhotoMatch]
    next_page_token: str
    settings: MatchSettings
    def __init__(self, matches: _Optional[_Iterable[_Union[PhotoMatch, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., settings: _Optional[_Union[MatchSettings, _Mapping]] = ...) -> None: ...

class DeletePersonRequest(_message.Message):
    __slots__ = ("person_id",)
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    def __init__(self, person_id: _Optional[str] = ...) -> None: ...

class DeletePersonResponse(_message.Message):
    __slots__ = ("faces_deleted",)
    FACES_DELETED_FIELD_NUMBER: _ClassVar[int]
    faces_deleted: int
    def __init__(self, faces_deleted: _Optional[int] = ...) -> None: ...

class DeletePhotoRequest(_message.Message):
    __slots__ = ("photo_id",)
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    photo_id: str
    def __init__(self, photo_id: _Optional[str] = ...) -> None: ...

class DeletePhotoResponse(_message.Message):
    __slots__ = ("faces_deleted",)
    FACES_DELETED_FIELD_NUMBER: _ClassVar[int]
    faces_deleted: int
    def __init__(self, faces_deleted: _Optional[int] = ...) -> None: ...

class ListPeopleRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "include_hidden")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    include_hidden: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_hidden: _Optional[bool] = ...) -> None: ...

class Person(_message.Message):
    __slots__ = ("person_id", "display_name", "reference_faces", "archive_faces", "hidden", "representative")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FACES_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FACES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIVE_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    display_name: str
    reference_faces: int
    archive_faces: int
    hidden: bool
    representative: FaceRef
    def __init__(self, person_id: _Optional[str] = ..., display_name: _Optional[str] = ..., reference_faces: _Optional[int] = ..., archive_faces: _Optional[int] = ..., hidden: _Optional[bool] = ..., representative: _Optional[_Union[FaceRef, _Mapping]] = ...) -> None: ...

class ListPeopleResponse(_message.Message):
    __slots__ = ("people", "next_page_token")
    PEOPLE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    people: _containers.RepeatedCompositeFieldContainer[Person]
    next_page_token: str
    def __init__(self, people: _Optional[_Iterable[_Union[Person, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ClusterFacesRequest(_message.Message):
    __slots__ = ("min_cluster_size", "page_size", "page_token", "faces_per_cluster", "include_named")
    MIN_CLUSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FACES_PER_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_NAMED_FIELD_NUMBER: _ClassVar[int]
    min_cluster_size: int
    page_size: int
    page_token: str
    faces_per_cluster: int
    include_named: bool
    def __init__(self, min_cluster_size: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., faces_per_cluster: _Optional[int] = ..., include_named: _Optional[bool] = ...) -> None: ...

class FaceRef(_message.Message):
    __slots__ = ("photo_id", "face_index", "box", "face_id", "photo_uri", "reference")
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    PHOTO_URI_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    photo_id: str
    face_index: int
    box: _common_pb2.BoundingBox
    face_id: str
    photo_uri: str
    reference: bool
    def __init__(self, photo_id: _Optional[str] = ..., face_index: _Optional[int] = ..., box: _Optional[_Union[_common_pb2.BoundingBox, _Mapping]] = ..., face_id: _Optional[str] = ..., photo_uri: _Optional[str] = ..., reference: _Optional[bool] = ...) -> None: ...

class FaceCluster(_message.Message):
    __slots__ = ("cluster_id", "faces", "person_id", "face_count", "display_name")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    faces: _containers.RepeatedCompositeFieldContainer[FaceRef]
    person_id: str
    face_count: int
    display_name: str
    def __init__(self, cluster_id: _Optional[str] = ..., faces: _Optional[_Iterable[_Union[FaceRef, _Mapping]]] = ..., person_id: _Optional[str] = ..., face_count: _Optional[int] = ..., display_name: _Optional[str] = ...) -> None: ...

class ClusterFacesResponse(_message.Message):
    __slots__ = ("clusters", "next_page_token", "status")
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    clusters: _containers.RepeatedCompositeFieldContainer[FaceCluster]
    next_page_token: str
    status: ClusteringStatus
    def __init__(self, clusters: _Optional[_Iterable[_Union[FaceCluster, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., status: _Optional[_Union[ClusteringStatus, _Mapping]] = ...) -> None: ...

class StartClusteringRequest(_message.Message):
    __slots__ = ("full",)
    FULL_FIELD_NUMBER: _ClassVar[int]
    full: bool
    def __init__(self, full: _Optional[bool] = ...) -> None: ...

class StartClusteringResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ClusteringStatus
    def __init__(self, status: _Optional[_Union[ClusteringStatus, _Mapping]] = ...) -> None: ...

class GetClusteringStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusteringStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ClusteringStatus
    def __init__(self, status: _Optional[_Union[ClusteringStatus, _Mapping]] = ...) -> None: ...

class ClusteringStatus(_message.Message):
    __slots__ = ("state", "run", "full", "faces_to_do", "faces_done", "clustered_faces", "unclustered_faces", "clusters", "error", "seconds")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    FACES_TO_DO_FIELD_NUMBER: _ClassVar[int]
    FACES_DONE_FIELD_NUMBER: _ClassVar[int]
    CLUSTERED_FACES_FIELD_NUMBER: _ClassVar[int]
    UNCLUSTERED_FACES_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    state: ClusteringState
    run: int
    full: bool
    faces_to_do: int
    faces_done: int
    clustered_faces: int
    unclustered_faces: int
    clusters: int
    error: str
    seconds: float
    def __init__(self, state: _Optional[_Union[ClusteringState, str]] = ..., run: _Optional[int] = ..., full: _Optional[bool] = ..., faces_to_do: _Optional[int] = ..., faces_done: _Optional[int] = ..., clustered_faces: _Optional[int] = ..., unclustered_faces: _Optional[int] = ..., clusters: _Optional[int] = ..., error: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class NameClusterRequest(_message.Message):
    __slots__ = ("cluster_id", "person_id", "display_name")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    person_id: str
    display_name: str
    def __init__(self, cluster_id: _Optional[str] = ..., person_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class NameClusterResponse(_message.Message):
    __slots__ = ("person",)
    PERSON_FIELD_NUMBER: _ClassVar[int]
    person: Person
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ...) -> None: ...

class RenamePersonRequest(_message.Message):
    __slots__ = ("person_id", "display_name")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    display_name: str
    def __init__(self, person_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class RenamePersonResponse(_message.Message):
    __slots__ = ("person",)
    PERSON_FIELD_NUMBER: _ClassVar[int]
    person: Person
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ...) -> None: ...

class MergePeopleRequest(_message.Message):
    __slots__ = ("person_id", "merged_person_ids")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    MERGED_PERSON_IDS_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    merged_person_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, person_id: _Optional[str] = ..., merged_person_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MergePeopleResponse(_message.Message):
    __slots__ = ("person",)
    PERSON_FIELD_NUMBER: _ClassVar[int]
    person: Person
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ...) -> None: ...

class AssignFaceRequest(_message.Message):
    __slots__ = ("face_id", "person_id")
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    face_id: str
    person_id: str
    def __init__(self, face_id: _Optional[str] = ..., person_id: _Optional[str] = ...) -> None: ...

class AssignFaceResponse(_message.Message):
    __slots__ = ("face", "person_id")
    FACE_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    face: FaceRef
    person_id: str
    def __init__(self, face: _Optional[_Union[FaceRef, _Mapping]] = ..., person_id: _Optional[str] = ...) -> None: ...

class RejectFaceRequest(_message.Message):
    __slots__ = ("face_id", "person_id")
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    face_id: str
    person_id: str
    def __init__(self, face_id: _Optional[str] = ..., person_id: _Optional[str] = ...) -> None: ...

class RejectFaceResponse(_message.Message):
    __slots__ = ("face",)
    FACE_FIELD_NUMBER: _ClassVar[int]
    face: FaceRef
    def __init__(self, face: _Optional[_Union[FaceRef, _Mapping]] = ...) -> None: ...

class HidePersonRequest(_message.Message):
    __slots__ = ("person_id", "hidden")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    hidden: bool
    def __init__(self, person_id: _Optional[str] = ..., hidden: _Optional[bool] = ...) -> None: ...

class HidePersonResponse(_message.Message):
    __slots__ = ("person",)
    PERSON_FIELD_NUMBER: _ClassVar[int]
    person: Person
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ...) -> None: ...

class ListPersonFacesRequest(_message.Message):
    __slots__ = ("person_id", "page_size", "page_token")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    page_size: int
    page_token: str
    def __init__(self, person_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPersonFacesResponse(_message.Message):
    __slots__ = ("faces", "next_page_token")
    FACES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[FaceRef]
    next_page_token: str
    def __init__(self, faces: _Optional[_Iterable[_Union[FaceRef, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("photos", "faces", "people", "settings", "indexing")
    PHOTOS_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    PEOPLE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    INDEXING_FIELD_NUMBER: _ClassVar[int]
    photos: int
    faces: int
    people: int
    settings: MatchSettings
    indexing: IndexingProgress
    def __init__(self, photos: _Optional[int] = ..., faces: _Optional[int] = ..., people: _Optional[int] = ..., settings: _Optional[_Union[MatchSettings, _Mapping]] = ..., indexing: _Optional[_Union[IndexingProgress, _Mapping]] = ...) -> None: ...

class IndexingProgress(_message.Message):
    __slots__ = ("streams_open", "run", "total", "photos_per_second", "last_photo_at")
    STREAMS_OPEN_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PHOTOS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LAST_PHOTO_AT_FIELD_NUMBER: _ClassVar[int]
    streams_open: int
    run: IndexingCounts
    total: IndexingCounts
    photos_per_second: float
    last_photo_at: _timestamp_pb2.Timestamp
    def __init__(self, streams_open: _Optional[int] = ..., run: _Optional[_Union[IndexingCounts, _Mapping]] = ..., total: _Optional[_Union[IndexingCounts, _Mapping]] = ..., photos_per_second: _Optional[float] = ..., last_photo_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class IndexingCounts(_message.Message):
    __slots__ = ("streams", "photos_received", "photos_done", "photos_failed", "photos_duplicate", "photos_no_face", "faces_stored")
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    PHOTOS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PHOTOS_DONE_FIELD_NUMBER: _ClassVar[int]
    PHOTOS_FAILED_FIELD_NUMBER: _ClassVar[int]
    PHOTOS_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    PHOTOS_NO_FACE_FIELD_NUMBER: _ClassVar[int]
    FACES_STORED_FIELD_NUMBER: _ClassVar[int]
    streams: int
    photos_received: int
    photos_done: int
    photos_failed: int
    photos_duplicate: int
    photos_no_face: int
    faces_stored: int
    def __init__(self, streams: _Optional[int] = ..., photos_received: _Optional[int] = ..., photos_done: _Optional[int] = ..., photos_failed: _Optional[int] = ..., photos_duplicate: _Optional[int] = ..., photos_no_face: _Optional[int] = ..., faces_stored: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TenantModelCollection(_message.Message):
    __slots__ = ("model", "in_use", "available", "faces")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.EmbeddingModel
    in_use: bool
    available: bool
    faces: int
    def __init__(self, model: _Optional[_Union[_common_pb2.EmbeddingModel, _Mapping]] = ..., in_use: _Optional[bool] = ..., available: _Optional[bool] = ..., faces: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[TenantModelCollection]
    def __init__(self, models: _Optional[_Iterable[_Union[TenantModelCollection, _Mapping]]] = ...) -> None: ...

class ListMigrationPhotosRequest(_message.Message):
    __slots__ = ("to_model_id", "from_model_id", "page_size", "page_token")
    TO_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    to_model_id: str
    from_model_id: str
    page_size: int
    page_token: str
    def __init__(self, to_model_id: _Optional[str] = ..., from_model_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class MigrationPhoto(_message.Message):
    __slots__ = ("photo_id", "photo_uri", "photo_hash", "faces", "references_only")
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    PHOTO_URI_FIELD_NUMBER: _ClassVar[int]
    PHOTO_HASH_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_ONLY_FIELD_NUMBER: _ClassVar[int]
    photo_id: str
    photo_uri: str
    photo_hash: str
    faces: int
    references_only: bool
    def __init__(self, photo_id: _Optional[str] = ..., photo_uri: _Optional[str] = ..., photo_hash: _Optional[str] = ..., faces: _Optional[int] = ..., references_only: _Optional[bool] = ...) -> None: ...

class ListMigrationPhotosResponse(_message.Message):
    __slots__ = ("photos", "next_page_token")
    PHOTOS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    photos: _containers.RepeatedCompositeFieldContainer[MigrationPhoto]
    next_page_token: str
    def __init__(self, photos: _Optional[_Iterable[_Union[MigrationPhoto, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MigratePhotosRequest(_message.Message):
    __slots__ = ("to_model_id", "from_model_id", "photos")
    TO_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PHOTOS_FIELD_NUMBER: _ClassVar[int]
    to_model_id: str
    from_model_id: str
    photos: _containers.RepeatedCompositeFieldContainer[Photo]
    def __init__(self, to_model_id: _Optional[str] = ..., from_model_id: _Optional[str] = ..., photos: _Optional[_Iterable[_Union[Photo, _Mapping]]] = ...) -> None: ...

class MigratedPhoto(_message.Message):
    __slots__ = ("photo_id", "faces_moved", "faces_not_found", "error")
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    FACES_MOVED_FIELD_NUMBER: _ClassVar[int]
    FACES_NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    photo_id: str
    faces_moved: int
    faces_not_found: int
    error: _common_pb2.ItemError
    def __init__(self, photo_id: _Optional[str] = ..., faces_moved: _Optional[int] = ..., faces_not_found: _Optional[int] = ..., error: _Optional[_Union[_common_pb2.ItemError, _Mapping]] = ...) -> None: ...

class MigratePhotosResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[MigratedPhoto]
    def __init__(self, results: _Optional[_Iterable[_Union[MigratedPhoto, _Mapping]]] = ...) -> None: ...

class SwitchModelRequest(_message.Message):
    __slots__ = ("to_model_id", "from_model_id", "allow_missing")
    TO_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    to_model_id: str
    from_model_id: str
    allow_missing: bool
    def __init__(self, to_model_id: _Optional[str] = ..., from_model_id: _Optional[str] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class SwitchModelResponse(_message.Message):
    __slots__ = ("model", "previous_model_id", "faces_updated", "photos_missing")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FACES_UPDATED_FIELD_NUMBER: _ClassVar[int]
    PHOTOS_MISSING_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.EmbeddingModel
    previous_model_id: str
    faces_updated: int
    photos_missing: int
    def __init__(self, model: _Optional[_Union[_common_pb2.EmbeddingModel, _Mapping]] = ..., previous_model_id: _Optional[str] = ..., faces_updated: _Optional[int] = ..., photos_missing: _Optional[int] = ...) -> None: ...

class DropModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DropModelResponse(_message.Message):
    __slots__ = ("faces_deleted",)
    FACES_DELETED_FIELD_NUMBER: _ClassVar[int]
    faces_deleted: int
    def __init__(self, faces_deleted: _Optional[int] = ...) -> None: ...
