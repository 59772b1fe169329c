"""The search logic: tenancy, validation, ids and collections, over any FaceStore.

Every operation is confined to one tenant: the tenant condition is added here,
never taken from the caller's filter. A request is validated whole before
anything is written, so a rejected batch leaves the store untouched.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.runtime.page_tokens import InvalidPageToken, PageTokens, query_fingerprint
from services.search.store.base import Conditions, FaceStore, ScoredFace, StoredFace

# Namespace of the deterministic point ids (uuid5 of tenant, photo hash and face index).
POINT_ID_NAMESPACE = uuid.UUID("6f1d0c52-35d6-4cf4-9a4e-3f4f6a8f4a51")
SOURCES = ("gallery", "enrollment")


class InvalidRequest(ValueError):
    """A request the service rejects as a whole (INVALID_ARGUMENT)."""


def point_id(tenant: str, photo_hash: str, face_index: int) -> str:
    """The same face of the same photo bytes always gets the same id within a tenant."""
    return str(uuid.uuid5(POINT_ID_NAMESPACE, f"{tenant}\n{photo_hash}\n{face_index}"))


def collection_name(model_id: str, size: int) -> str:
    return f"faces-{model_id}-{size}"


@dataclass(frozen=True)
class FaceFilter:
    person_ids: tuple[str, ...] = ()
    photo_ids: tuple[str, ...] = ()
    source: str | None = None
    photo_hashes: tuple[str, ...] = ()
    face_index: int | None = None
    cluster_ids: tuple[str, ...] = ()
    cluster_run: int | None = None  # the clustering run that last looked at the faces (0: none)
    face_ids: tuple[str, ...] = ()
    not_person_ids: tuple[str, ...] = ()  # faces said not to be one of these people


@dataclass
class NewFace:
    vector: np.ndarray
    payload: dict[str, Any]
    id: str = ""


@dataclass(frozen=True)
class Selector:
    """What Delete removes: exactly one of these."""

    ids: tuple[str, ...] = ()
    photo_id: str = ""
    person_id: str = ""
    whole_tenant: bool = False


@dataclass
class Page:
    faces: list[StoredFace] = field(default_factory=list)
    next_token: str = ""


class FaceIndex:
    def __init__(
        self,
        store: FaceStore,
        models: dict[str, int],
        *,
        max_batch: int = 1024,
        max_query_vectors: int = 64,
        max_top_k: int = 1000,
        max_page_size: int = 1000,
        page_token_key: bytes | None = None,
    ) -> None:
        self.store = store
        # Scroll's page tokens; random per process unless a key is given.
        self.page_tokens = PageTokens("Scroll", page_token_key)
        self.models = dict(models)
        self.max_batch = max_batch
        self.max_query_vectors = max_query_vectors
        self.max_top_k = max_top_k
        self.max_page_size = max_page_size

    # --- validation -----------------------------------------------------------------------

    @staticmethod
    def checked_tenant(tenant: str) -> str:
        if not tenant or not tenant.strip():
            raise InvalidRequest("tenant is required")
        return tenant

    def checked_model(self, model_id: str, size: int | None = None) -> tuple[str, int]:
        if not model_id:
            raise InvalidRequest("model id is required")
        if model_id not in self.models:
            raise InvalidRequest(f"unknown model {model_id!r}; known models: {', '.join(sorted(self.models))}")
        expected = self.models[model_id]
        if size and size != expected:
            raise InvalidRequest(f"model {model_id!r} has dimension {expected}, the request says {size}")
        return model_id, expected

    @staticmethod
    def _vectors(rows: list[list[float]] | np.ndarray, size: int, what: str) -> np.ndarray:
        vectors = []
        for index, row in enumerate(rows):
            vector = np.asarray(row, dtype=np.float32)
            if vector.shape != (size,):
                raise InvalidRequest(f"{what} {index} has dimension {vector.size}, expected {size}")
            if not np.all(np.isfinite(vector)):
                raise InvalidRequest(f"{what} {index} contains NaN or infinite values")
            if not np.any(vector):
                raise InvalidRequest(f"{what} {index} is all zeros")
            vectors.append(vector)
        return np.stack(vectors) if vectors else np.zeros((0, size), np.float32)

    def _conditions(self, tenant: str, face_filter: FaceFilter | None = None, **extra: tuple[str, ...]) -> Conditions:
        match: dict[str, tuple[str | int, ...]] = {"tenant": (self.checked_tenant(tenant),)}
        if face_filter is not None:
            if face_filter.person_ids:
                match["person_id"] = tuple(face_filter.person_ids)
            if face_filter.photo_ids:
                match["photo_id"] = tuple(face_filter.photo_ids)
            if face_filter.photo_hashes:
                match["photo_hash"] = tuple(face_filter.photo_hashes)
            if face_filter.face_index is not None:
                if face_filter.face_index < 0:
                    raise InvalidRequest(f"face_index must not be negative, got {face_filter.face_index}")
                match["face_index"] = (face_filter.face_index,)
            if face_filter.cluster_ids:
                match["cluster_id"] = tuple(face_filter.cluster_ids)
            if face_filter.cluster_run is not None:
                match["cluster_run"] = (face_filter.cluster_run,)
            if face_filter.not_person_ids:
                match["not_person_ids"] = tuple(face_filter.not_person_ids)
            if face_filter.source:
                if face_filter.source not in SOURCES:
                    raise InvalidRequest(f"unknown source {face_filter.source!r}")
                match["source"] = (face_filter.source,)
        match.update({key: values for key, values in extra.items() if values})
        if face_filter is not None and face_filter.face_ids:
            try:
                ids = tuple(str(uuid.UUID(face_id)) for face_id in face_filter.face_ids)
            except ValueError:
                raise InvalidRequest("every face id must be a UUID") from None
            return Conditions(match_any=match, ids=ids)
        return Conditions(match_any=match)

    def _existing_collections(self, model_id: str) -> list[str]:
        """The collections a model-optional call covers (all known models when empty)."""
        if model_id:
            names = [collection_name(*self.checked_model(model_id))]
        else:
            names = [collection_name(m, size) for m, size in self.models.items()]
        present = set(self.store.collections())
        return [name for name in names if name in present]

    # --- operations -----------------------------------------------------------------------

    def upsert(self, tenant: str, model_id: str, size: int, faces: list[NewFace]) -> list[str]:
        tenant = self.checked_tenant(tenant)
        model_id, size = self.checked_model(model_id, size)
        if not faces:
            raise InvalidRequest("no faces to upsert")
        if len(faces) > self.max_batch:
            raise InvalidRequest(f"{len(faces)} faces in one upsert, over the limit of {self.max_batch}")
        vectors = self._vectors([f.vector for f in faces], size, "face")
        ids, payloads = [], []
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        for index, face in enumerate(faces):
            payload = dict(face.payload)
            if payload.get("tenant") not in ("", None, tenant):
                raise InvalidRequest(f"face {index}: payload tenant differs from the request's tenant")
            if payload.get("source", "gallery") not in SOURCES:
                raise InvalidRequest(f"face {index}: source must be one of {', '.join(SOURCES)}")
            payload.update(tenant=tenant, model_id=model_id)
            payload.setdefault("source", "gallery")
            payload["indexed_at"] = payload.get("indexed_at") or now
            if face.id:
                try:
                    face_id = str(uuid.UUID(face.id))
                except ValueError:
                    raise InvalidRequest(f"face {index}: id {face.id!r} is not a UUID") from None
            elif payload.get("photo_hash"):
                face_id = point_id(tenant, payload["photo_hash"], int(payload.get("face_index", 0)))
            else:
                raise InvalidRequest(f"face {index}: give an id or the photo hash to derive one")
            ids.append(face_id)
            payloads.append(payload)
        if len(set(ids)) != len(ids):
            raise InvalidRequest("the batch holds the same face id twice")
        name = collection_name(model_id, size)
        self.store.ensure_collection(name, size)
        self.store.upsert(name, ids, vectors, payloads)
        return ids

    def query(
        self,
        tenant: str,
        model_id: str,
        size: int,
        vectors: list[list[float]],
        top_k: int = 10,
        score_threshold: float | None = None,
        face_filter: FaceFilter | None = None,
        with_vectors: bool = False,
    ) -> list[list[ScoredFace]]:
        conditions = self._conditions(tenant, face_filter)
        model_id, size = self.checked_model(model_id, size)
        if not vectors:
            raise InvalidRequest("no query vectors")
        if len(vectors) > self.max_query_vectors:
            raise InvalidRequest(f"{len(vectors)} query vectors, over the limit of {self.max_query_vectors}")
        top_k = top_k or 10
        if not 1 <= top_k <= self.max_top_k:
            raise InvalidRequest(f"top_k must be in [1, {self.max_top_k}], got {top_k}")
        if score_threshold is not None and not (np.isfinite(score_threshold) and -1 <= score_threshold <= 1):
            raise InvalidRequest(f"score_threshold must be in [-1, 1], got {score_threshold}")
        matrix = self._vectors(vectors, size, "query vector")
        name = collection_name(model_id, size)
        if name not in self.store.collections():
            return [[] for _ in vectors]
        return self.store.query(name, matrix, top_k, conditions, score_threshold, with_vectors)

    def delete(self, tenant: str, model_id: str, selector: Selector) -> int:
        chosen = [bool(selector.ids), bool(selector.photo_id), bool(selector.person_id), selector.whole_tenant]
        if sum(chosen) != 1:
            raise InvalidRequest("say what to delete: ids, photo_id, person_id or whole_tenant")
        conditions = self._conditions(
            tenant,
            photo_id=(selector.photo_id,) if selector.photo_id else (),
            person_id=(selector.person_id,) if selector.person_id else (),
        )
        if selector.ids:
            try:
                ids = tuple(str(uuid.UUID(i)) for i in selector.ids)
            except ValueError:
                raise InvalidRequest("face ids must be UUIDs") from None
            conditions = Conditions(conditions.match_any, ids=ids)
        return sum(self.store.delete(name, conditions) for name in self._existing_collections(model_id))

    def count(self, tenant: str, model_id: str, face_filter: FaceFilter | None = None) -> int:
        conditions = self._conditions(tenant, face_filter)
        return sum(self.store.count(name, conditions) for name in self._existing_collections(model_id))

    def scroll(
        self,
        tenant: str,
        model_id: str,
        size: int,
        face_filter: FaceFilter | None = None,
        page_size: int = 100,
        page_token: str = "",
        with_vectors: bool = False,
    ) -> Page:
        conditions = self._conditions(tenant, face_filter)
        model_id, size = self.checked_model(model_id, size)
        page_size = page_size or 100
        if not 1 <= page_size <= self.max_page_size:
            raise InvalidRequest(f"page_size must be in [1, {self.max_page_size}], got {page_size}")
        # A token holds the store's offset of the next page, for this tenant, model and filter.
        query = query_fingerprint(model_id, sorted(conditions.match_any.items()))
        offset = self._read_token(page_token, query) if page_token else None
        name = collection_name(model_id, size)
        if name not in self.store.collections():
            return Page()
        faces, next_offset = self.store.scroll(name, conditions, page_size, offset, with_vectors)
        return Page(faces, self.page_tokens.issue(next_offset, query) if next_offset else "")

    def _read_token(self, token: str, query: str) -> str:
        try:
            offset = self.page_tokens.read(token, query)
        except InvalidPageToken as error:
            raise InvalidRequest(str(error)) from None
        if not isinstance(offset, str):
            raise InvalidRequest("page_token is not one Scroll issued")
        return offset
