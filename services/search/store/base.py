"""What a face vector store does, whatever engine is behind it.

A store holds collections of points (id, unit vector, payload dict). It knows
nothing about tenants or the API; the search logic builds the filters (which
always include the tenant) and validates everything before calling it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Payload fields with an index; "tenant" is the tenant key.
KEYWORD_FIELDS = ("tenant", "person_id", "photo_id", "photo_hash", "source", "cluster_id", "not_person_ids")
# Integer payload fields with an index (exact-match lookups only).
INTEGER_FIELDS = ("face_index", "cluster_run")


@dataclass(frozen=True)
class StoredFace:
    id: str
    vector: np.ndarray | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class ScoredFace:
    id: str
    score: float
    vector: np.ndarray | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class Conditions:
    """All of these must hold: each key's value is one of the listed values;
    ``ids`` (when given) restricts to those point ids."""

    match_any: dict[str, tuple[str | int, ...]] = field(default_factory=dict)
    ids: tuple[str, ...] | None = None


class FaceStore(ABC):
    """One engine's collections of face vectors."""

    @abstractmethod
    def ensure_collection(self, name: str, size: int) -> None:
        """Creates the collection (cosine distance, HNSW, keyword indexes) unless it exists."""

    @abstractmethod
    def collections(self) -> list[str]: ...

    @abstractmethod
    def upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None: ...

    @abstractmethod
    def query(
        self,
        name: str,
        vectors: np.ndarray,
        limit: int,
        conditions: Conditions,
        score_threshold: float | None = None,
        with_vectors: bool = False,
        exact: bool = False,
    ) -> list[list[ScoredFace]]:
        """Nearest faces per query vector, best first (score: cosine similarity)."""

    @abstractmethod
    def delete(self, name: str, conditions: Conditions) -> int:
        """Deletes the matching points; returns how many there were."""

    @abstractmethod
    def count(self, name: str, conditions: Conditions) -> int: ...

    @abstractmethod
    def scroll(
        self, name: str, conditions: Conditions, limit: int, offset: str | None, with_vectors: bool = False
    ) -> tuple[list[StoredFace], str | None]:
        """A page of matching points in id order and the id the next page starts at."""

    def close(self) -> None:  # noqa: B027 - optional
        """Flushes and releases the engine."""


def as_vector(raw: Any) -> np.ndarray | None:
    """An engine's returned vector (a list, or named vectors with the default "") as float32."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        raw = raw.get("", next(iter(raw.values()), None))
    return None if raw is None else np.asarray(raw, dtype=np.float32)
