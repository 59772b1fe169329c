"""The qdrant backend: qdrant-client against a Qdrant server (``url``), or its
local mode (a folder or ``:memory:``) for small set-ups and tests. Both speak
the same client calls, so the local mode exercises the server path.

The search service calls a store from several threads. Creating a collection is a check
then a create, so it is done under a lock (two first upserts of a model at once would
otherwise both create it, and the second would drop what the first stored); and the local
mode, which is plain Python without locks of its own, takes every call under that lock.

Deleting erases in the local mode on disk: each collection is an SQLite file, whose
connection is set to ``secure_delete`` (SQLite overwrites a deleted row with zeros as it
deletes it, instead of leaving it in a free page). A Qdrant server keeps deleted points in
its segments until its own optimizers vacuum them and in its write-ahead log until that
rolls over: that is the server's configuration, not this client's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from services.search.store.base import (
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    Conditions,
    FaceStore,
    ScoredFace,
    StoredFace,
    as_vector,
)


class QdrantFaceStore(FaceStore):
    def __init__(
        self,
        url: str | None = None,
        path: str = ":memory:",
        *,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 128,
        hnsw_ef: int = 128,
        timeout_s: int = 30,
    ) -> None:
        self._lock = threading.RLock()
        self._local = not url
        if url:
            self.client = QdrantClient(url=url, timeout=timeout_s)
        elif path == ":memory:":
            self.client = QdrantClient(location=":memory:")
        else:
            self.client = QdrantClient(path=path)
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construct = hnsw_ef_construct
        self.hnsw_ef = hnsw_ef
        for name in self.collections():
            self._erase_on_delete(name)

    def _erase_on_delete(self, name: str) -> None:
        """Local mode on disk: SQLite zeroes what the collection's file deletes from now on,
        and a vacuum rewrites the file without what was deleted before."""
        collections = getattr(getattr(self.client, "_client", None), "collections", {})
        persistence = getattr(collections.get(name), "storage", None)
        if persistence is not None:
            persistence.storage.execute("PRAGMA secure_delete = ON")
            persistence.storage.execute("VACUUM")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Holds the lock for a call of the local mode (a server serialises its own)."""
        if self._local:
            with self._lock:
                yield
        else:
            yield

    def ensure_collection(self, name: str, size: int) -> None:
        with self._lock:
            if not self.client.collection_exists(name):
                self._create_collection(name, size)
                self._erase_on_delete(name)

    def _create_collection(self, name: str, size: int) -> None:
        self.client.create_collection(
            name,
            vectors_config=models.VectorParams(size=size, distance=models.Distance.COSINE),
            hnsw_config=models.HnswConfigDiff(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct, payload_m=16),
        )
        for field in KEYWORD_FIELDS:
            schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=field == "tenant")
            self.client.create_payload_index(name, field_name=field, field_schema=schema)
        for field in INTEGER_FIELDS:
            schema = models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True, range=False)
            self.client.create_payload_index(name, field_name=field, field_schema=schema)

    def collections(self) -> list[str]:
        with self._exclusive():
            return sorted(c.name for c in self.client.get_collections().collections)

    def upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        points = [
            models.PointStruct(id=point_id, vector=[float(v) for v in vector], payload=payload)
            for point_id, vector, payload in zip(ids, vectors, payloads, strict=True)
        ]
        with self._exclusive():
            self.client.upsert(name, points=points, wait=True)

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
        requests = [
            models.QueryRequest(
                query=[float(v) for v in vector],
                filter=_filter(conditions),
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
                with_vector=with_vectors,
                params=models.SearchParams(hnsw_ef=max(self.hnsw_ef, limit), exact=exact),
            )
            for vector in vectors
        ]
        with self._exclusive():
            responses = self.client.query_batch_points(name, requests=requests)
        return [
            [ScoredFace(str(p.id), float(p.score), as_vector(p.vector), dict(p.payload or {})) for p in response.points]
            for response in responses
        ]

    def delete(self, name: str, conditions: Conditions) -> int:
        with self._exclusive():
            matching = self.count(name, conditions)
            if matching:
                selector = models.FilterSelector(filter=_filter(conditions))
                self.client.delete(name, points_selector=selector, wait=True)
        return matching

    def count(self, name: str, conditions: Conditions) -> int:
        with self._exclusive():
            return int(self.client.count(name, count_filter=_filter(conditions), exact=True).count)

    def scroll(
        self, name: str, conditions: Conditions, limit: int, offset: str | None, with_vectors: bool = False
    ) -> tuple[list[StoredFace], str | None]:
        with self._exclusive():
            records, next_offset = self.client.scroll(
                name,
                scroll_filter=_filter(conditions),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
        faces = [StoredFace(str(r.id), as_vector(r.vector), dict(r.payload or {})) for r in records]
        return faces, None if next_offset is None else str(next_offset)

    def close(self) -> None:
        with self._lock:
            self.client.close()


def _filter(conditions: Conditions) -> models.Filter | None:
    must: list[Any] = [
        models.FieldCondition(
            key=key,
            match=models.MatchValue(value=values[0]) if len(values) == 1 else models.MatchAny(any=list(values)),
        )
        for key, values in conditions.match_any.items()
    ]
    if conditions.ids is not None:
        must.append(models.HasIdCondition(has_id=list(conditions.ids)))
    return models.Filter(must=must) if must else None
