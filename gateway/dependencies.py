"""What every gateway operation works with: the analyser (detector + embedder), the
search service, the embedding model in use and its match threshold."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facesearch.v1 import common_pb2, facesearch_pb2, search_pb2
from gateway.analysis import AnalysedPhoto, FaceAnalyser, FoundFace, PhotoInput
from gateway.downstream import SearchClient
from gateway.errors import invalid
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from services.runtime.deadlines import Deadline

QUERY_VECTORS_PER_CALL = 64  # the search service's default limit
# Namespace of enrolment face ids: one reference per (tenant, person, photo bytes).
ENROLLMENT_ID_NAMESPACE = uuid.UUID("0c7d5c1e-8e0a-4f57-9a55-5d1a2f3b9e41")


@dataclass
class Dependencies:
    settings: GatewaySettings
    analyser: FaceAnalyser
    search: SearchClient
    model: common_pb2.EmbeddingModel  # the embedding model in use: id, version, vector size
    metrics: GatewayMetrics

    def __post_init__(self) -> None:
        # The detector and search serve only calls that carry the suite's service token.
        for client in (self.search, getattr(self.analyser, "detector", None)):
            if client is not None:
                client.send_service_token(self.settings.service_token)

    @property
    def model_id(self) -> str:
        return self.model.id

    @property
    def model_version(self) -> str:
        return self.model.version

    def threshold(self, override: float | None = None) -> float:
        if override is not None:
            if not (math.isfinite(override) and -1.0 <= override <= 1.0):
                raise invalid(f"similarity_threshold must be a cosine similarity in [-1, 1], got {override}")
            return override
        return self.settings.threshold(self.model_id)

    def match_settings(self, threshold: float) -> facesearch_pb2.MatchSettings:
        return facesearch_pb2.MatchSettings(model=self.model, similarity_threshold=threshold)

    async def query(
        self,
        tenant: str,
        vectors: Sequence[np.ndarray],
        top_k: int,
        threshold: float,
        source: int,
        deadline: Deadline,
    ) -> list[list[search_pb2.ScoredFace]]:
        """The stored faces of ``source`` nearest each vector, at or above ``threshold``, best first."""
        results: list[list[search_pb2.ScoredFace]] = []
        for start in range(0, len(vectors), QUERY_VECTORS_PER_CALL):
            chunk = vectors[start : start + QUERY_VECTORS_PER_CALL]
            request = search_pb2.QueryRequest(
                tenant=tenant,
                model=self.model,
                top_k=top_k,
                score_threshold=threshold,
                vectors=[search_pb2.QueryVector(values=np.asarray(v, dtype=np.float32).tolist()) for v in chunk],
                filter=search_pb2.FaceFilter(source=source),
            )
            reply = await self.search.query(request, deadline)
            results += [list(result.hits) for result in reply.results]
        return results


def photo_input(message: facesearch_pb2.Photo) -> PhotoInput:
    return PhotoInput(content=message.content, id=message.id, uri=message.uri, metadata=dict(message.metadata))


def optional_threshold(message, field: str = "similarity_threshold") -> float | None:
    return getattr(message, field) if message.HasField(field) else None


def enrollment_face_id(tenant: str, person_id: str, photo_hash: str) -> str:
    return str(uuid.uuid5(ENROLLMENT_ID_NAMESPACE, f"{tenant}\n{person_id}\n{photo_hash}"))


def face_record(
    photo: AnalysedPhoto,
    found: FoundFace,
    *,
    face_index: int,
    source: int,
    person_id: str = "",
    person_name: str = "",
    record_id: str = "",
) -> search_pb2.FaceRecord:
    """What the search service stores about one face (the tenant is added from the call)."""
    face = found.face
    return search_pb2.FaceRecord(
        id=record_id,
        vector=found.vector.tolist(),
        payload=search_pb2.FacePayload(
            photo_id=photo.photo.id,
            photo_uri=photo.photo.uri,
            photo_hash=photo.photo.content_hash,
            face_index=face_index,
            box=face.box,
            confidence=face.confidence,
            quality=face.quality,
            person_id=person_id,
            person_name=person_name,
            source=source,
            metadata=photo.photo.metadata,
        ),
    )


def distance(similarity: float) -> float:
    """Euclidean distance of two unit vectors with this cosine similarity."""
    return math.sqrt(max(0.0, 2.0 - 2.0 * similarity))
