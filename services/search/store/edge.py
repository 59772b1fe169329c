"""The edge backend: Qdrant's engine embedded in this process (qdrant-edge-py), on disk.

Each collection is one EdgeShard in its own folder. New points are searchable at
once (unindexed segments are scanned exactly); the HNSW index is built by
``optimize()``, which runs on a background thread after ``optimize_after`` new
points and when a collection is opened with unindexed points. Segments smaller
than ``indexing_threshold_kb`` stay unindexed: an exact scan of them is as fast.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from services.search.store.base import (
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    Conditions,
    FaceStore,
    ScoredFace,
    StoredFace,
    as_vector,
)

log = logging.getLogger(__name__)


class _Collection:
    def __init__(self, shard: qe.EdgeShard) -> None:
        self.shard = shard
        self.write_lock = threading.Lock()
        self.optimize_lock = threading.Lock()
        self.unindexed = 0


class EdgeFaceStore(FaceStore):
    def __init__(
        self,
        path: str | Path,
        *,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 128,
        hnsw_ef: int = 128,
        optimize_after: int = 5000,
        indexing_threshold_kb: int = 20_000,
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construct = hnsw_ef_construct
        self.hnsw_ef = hnsw_ef
        self.optimize_after = optimize_after
        self.indexing_threshold_kb = indexing_threshold_kb
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()
        self._optimizers: list[threading.Thread] = []
        for folder in sorted(p for p in self.path.iterdir() if p.is_dir()):
            self._open(folder.name, qe.EdgeShard.load(str(folder)))

    def _open(self, name: str, shard: qe.EdgeShard) -> _Collection:
        collection = _Collection(shard)
        self._collections[name] = collection
        info = shard.info()
        collection.unindexed = max(0, info.points_count - info.indexed_vectors_count)
        if collection.unindexed >= self.optimize_after:
            self._optimize_in_background(name, collection)
        return collection

    def ensure_collection(self, name: str, size: int) -> None:
        with self._lock:
            if name in self._collections:
                return
            config = qe.EdgeConfig(
                vectors={"": qe.EdgeVectorParams(size=size, distance=qe.Distance.Cosine)},
                hnsw_config=qe.HnswIndexConfig(
                    m=self.hnsw_m, ef_construct=self.hnsw_ef_construct, full_scan_threshold=10_000
                ),
                # Segments smaller than this are searched exactly; larger ones get an HNSW index.
                optimizers=qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb),
            )
            shard = qe.EdgeShard.create(str(self.path / name), config)
            for field in KEYWORD_FIELDS:
                params = qe.KeywordIndexParams(is_tenant=True) if field == "tenant" else qe.KeywordIndexParams()
                shard.update(qe.UpdateOperation.create_field_index(field, params))
            for field in INTEGER_FIELDS:
                params = qe.IntegerIndexParams(lookup=True, range=False)
                shard.update(qe.UpdateOperation.create_field_index(field, params))
            self._open(name, shard)

    def collections(self) -> list[str]:
        return sorted(self._collections)

    def _get(self, name: str) -> _Collection:
        try:
            return self._collections[name]
        except KeyError:
            raise KeyError(f"no collection {name!r}") from None

    def upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        collection = self._get(name)
        points = [
            qe.Point(point_id, [float(v) for v in vector], payload)
            for point_id, vector, payload in zip(ids, vectors, payloads, strict=True)
        ]
        with collection.write_lock:
            collection.shard.update(qe.UpdateOperation.upsert_points(points))
            collection.shard.flush()
            collection.unindexed += len(points)
        if collection.unindexed >= self.optimize_after:
            self._optimize_in_background(name, collection)

    def optimize(self, name: str) -> None:
        """Builds the HNSW index of the points added since the last optimisation."""
        collection = self._get(name)
        with collection.optimize_lock:
            pending = collection.unindexed
            collection.shard.optimize()
            collection.unindexed = max(0, collection.unindexed - pending)
            log.info("optimized", extra={"collection": name, "points": pending})

    def _optimize_in_background(self, name: str, collection: _Collection) -> None:
        if collection.optimize_lock.locked():
            return
        thread = threading.Thread(target=self.optimize, args=(name,), name=f"optimize-{name}", daemon=True)
        self._optimizers = [t for t in self._optimizers if t.is_alive()] + [thread]
        thread.start()

    def wait_for_optimizers(self) -> None:
        for thread in list(self._optimizers):
            thread.join()

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
        collection = self._get(name)
        requests = [
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest([float(v) for v in vector]),
                filter=_filter(conditions),
                score_threshold=score_threshold,
                with_payload=True,
                with_vector=with_vectors,
                params=qe.SearchParams(hnsw_ef=max(self.hnsw_ef, limit), exact=exact),
            )
            for vector in vectors
        ]
        results = collection.shard.query_batch(qe.QueryBatchRequest(requests))
        return [
            [ScoredFace(str(p.id), float(p.score), as_vector(p.vector), dict(p.payload or {})) for p in hits]
            for hits in results
        ]

    def delete(self, name: str, conditions: Conditions) -> int:
        collection = self._get(name)
        with collection.write_lock:
            matching = self.count(name, conditions)
            if matching:
                collection.shard.update(qe.UpdateOperation.delete_points_by_filter(_filter(conditions)))
                collection.shard.flush()
        return matching

    def count(self, name: str, conditions: Conditions) -> int:
        return int(self._get(name).shard.count(qe.CountRequest(exact=True, filter=_filter(conditions))))

    def scroll(
        self, name: str, conditions: Conditions, limit: int, offset: str | None, with_vectors: bool = False
    ) -> tuple[list[StoredFace], str | None]:
        records, next_offset = self._get(name).shard.scroll(
            qe.ScrollRequest(
                offset=offset, limit=limit, filter=_filter(conditions), with_payload=True, with_vector=with_vectors
            )
        )
        faces = [StoredFace(str(r.id), as_vector(r.vector), dict(r.payload or {})) for r in records]
        return faces, None if next_offset is None else str(next_offset)

    def close(self) -> None:
        self.wait_for_optimizers()
        for collection in self._collections.values():
            with collection.write_lock:
                collection.shard.flush()
                collection.shard.close()
        self._collections.clear()


def _filter(conditions: Conditions) -> qe.Filter | None:
    must: list[Any] = [
        qe.FieldCondition(key, match=qe.MatchValue(values[0]) if len(values) == 1 else qe.MatchAny(list(values)))
        for key, values in conditions.match_any.items()
    ]
    if conditions.ids is not None:
        must.append(qe.HasIdCondition(set(conditions.ids)))
    return qe.Filter(must=must) if must else None
