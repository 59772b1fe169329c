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

Vectors: ``quantization="int8"`` gives a collection scalar-quantized vectors (kept in RAM with
``quantization_always_ram``) beside the float32 originals, searched with ``oversampling`` and
rescored with the originals so that scores stay exact cosines; ``vectors_on_disk`` and
``hnsw_on_disk`` keep the originals and the graph in memory-mapped files. The local mode
accepts these settings and ignores them (it searches exactly).

A cluster (``QdrantCluster``, server only): each collection gets ``shard_number`` shards with
``replication_factor`` copies, and a write is acknowledged once ``write_consistency_factor``
copies have it. Sharding ``auto`` spreads points over the shards by id and keeps tenants apart
with the ``is_tenant`` payload index; sharding ``tenant`` gives each tenant its own shard key
(Qdrant's custom sharding), created on the tenant's first write, and every call names the
tenant's key, so a tenant's faces live on, and are searched on, its own shards only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QdrantCluster:
    """How a Qdrant server cluster holds each collection."""

    sharding: Literal["auto", "tenant"] = "auto"
    shard_number: int = 1  # per collection (auto), per tenant's shard key (tenant)
    replication_factor: int = 1
    write_consistency_factor: int = 1

    def __post_init__(self) -> None:
        if self.sharding not in ("auto", "tenant"):
            raise ValueError(f"sharding must be auto or tenant, not {self.sharding!r}")
        if min(self.shard_number, self.replication_factor, self.write_consistency_factor) < 1:
            raise ValueError("shard_number, replication_factor and write_consistency_factor must be positive")
        if self.write_consistency_factor > self.replication_factor:
            raise ValueError("write_consistency_factor cannot exceed replication_factor")

    @property
    def by_tenant(self) -> bool:
        return self.sharding == "tenant"

    def collection_params(self) -> dict[str, Any]:
        """The create-collection arguments for this cluster layout."""
        params: dict[str, Any] = {
            "shard_number": self.shard_number,
            "replication_factor": self.replication_factor,
            "write_consistency_factor": self.write_consistency_factor,
        }
        if self.by_tenant:
            params["sharding_method"] = models.ShardingMethod.CUSTOM
        return params


class QdrantFaceStore(FaceStore):
    def __init__(
        self,
        url: str | None = None,
        path: str = ":memory:",
        *,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 128,
        hnsw_ef: int = 128,
        quantization: Literal["none", "int8"] = "none",
        quantization_quantile: float = 0.99,
        quantization_always_ram: bool = True,
        vectors_on_disk: bool = False,
        hnsw_on_disk: bool = False,
        rescore: bool = True,
        oversampling: float = 2.0,
        cluster: QdrantCluster | None = None,
        timeout_s: int = 30,
    ) -> None:
        self._lock = threading.RLock()
        self._local = not url
        if self._local and cluster not in (None, QdrantCluster()):
            log.warning("the local mode has no cluster: shard and replica settings are ignored")
        # The local mode has one process and no shards.
        self.cluster = QdrantCluster() if self._local else (cluster or QdrantCluster())
        self._shard_keys: dict[str, set[str]] = {}  # per collection, the tenants' shard keys known to exist
        if url:
            self.client = QdrantClient(url=url, timeout=timeout_s)
        elif path == ":memory:":
            self.client = QdrantClient(location=":memory:")
        else:
            self.client = QdrantClient(path=path)
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construct = hnsw_ef_construct
        self.hnsw_ef = hnsw_ef
        self.quantization = quantization
        self.quantization_quantile = quantization_quantile
        self.quantization_always_ram = quantization_always_ram
        self.vectors_on_disk = vectors_on_disk
        self.hnsw_on_disk = hnsw_on_disk
        self.rescore = rescore
        self.oversampling = oversampling
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
        """Creates the collection and its payload indexes. Against a server, another replica of
        the search service may create it at the same moment: then its creation stands, and the
        indexes (which the server creates once, whoever asks) are asked for again."""
        try:
            self.client.create_collection(
                name,
                vectors_config=models.VectorParams(
                    size=size, distance=models.Distance.COSINE, on_disk=self.vectors_on_disk
                ),
                hnsw_config=models.HnswConfigDiff(
                    m=self.hnsw_m, ef_construct=self.hnsw_ef_construct, payload_m=16, on_disk=self.hnsw_on_disk
                ),
                quantization_config=self._quantization_config(),
                **self.cluster.collection_params(),
            )
        except Exception:
            if self._local or not self.client.collection_exists(name):
                raise
            log.info("collection created meanwhile by another client", extra={"collection": name})
        for field in KEYWORD_FIELDS:
            schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=field == "tenant")
            self.client.create_payload_index(name, field_name=field, field_schema=schema)
        for field in INTEGER_FIELDS:
            schema = models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True, range=False)
            self.client.create_payload_index(name, field_name=field, field_schema=schema)

    def _quantization_config(self) -> models.ScalarQuantization | None:
        if self.quantization == "none":
            return None
        scalar = models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8,
            quantile=self.quantization_quantile,
            always_ram=self.quantization_always_ram,
        )
        return models.ScalarQuantization(scalar=scalar)

    def _search_params(self, limit: int, exact: bool) -> models.SearchParams:
        quantization = None
        if self.quantization != "none":
            quantization = models.QuantizationSearchParams(
                ignore=exact, rescore=self.rescore, oversampling=self.oversampling
            )
        return models.SearchParams(hnsw_ef=max(self.hnsw_ef, limit), exact=exact, quantization=quantization)

    # --- tenant sharding ----------------------------------------------------------------------

    def _known_shard_keys(self, name: str, refresh: bool = False) -> set[str]:
        if refresh or name not in self._shard_keys:
            listed = self.client.list_shard_keys(name).shard_keys or []
            self._shard_keys[name] = {str(description.key) for description in listed}
        return self._shard_keys[name]

    def _ensure_shard_key(self, name: str, tenant: str) -> None:
        """Creates the tenant's shard key unless it exists (another replica may have just made it)."""
        with self._lock:
            if tenant in self._known_shard_keys(name):
                return
            try:
                self.client.create_shard_key(
                    name,
                    shard_key=tenant,
                    shards_number=self.cluster.shard_number,
                    replication_factor=self.cluster.replication_factor,
                )
            except Exception:
                if tenant not in self._known_shard_keys(name, refresh=True):
                    raise
            self._shard_keys[name].add(tenant)

    def _read_shard_keys(self, name: str, conditions: Conditions) -> list[str] | None:
        """With tenant sharding, the shard keys of the tenants the conditions name that have
        any ([] when none has: nothing to read); otherwise None (every shard)."""
        if not self.cluster.by_tenant:
            return None
        tenants = [str(t) for t in conditions.match_any.get("tenant", ())]
        if not tenants:
            raise ValueError("with tenant sharding every call names its tenant")
        known = self._known_shard_keys(name)
        if not set(tenants) <= known:
            with self._lock:
                known = self._known_shard_keys(name, refresh=True)
        return [t for t in tenants if t in known]

    def collections(self) -> list[str]:
        with self._exclusive():
            return sorted(c.name for c in self.client.get_collections().collections)

    def upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        points = [
            models.PointStruct(id=point_id, vector=[float(v) for v in vector], payload=payload)
            for point_id, vector, payload in zip(ids, vectors, payloads, strict=True)
        ]
        if not self.cluster.by_tenant:
            with self._exclusive():
                self.client.upsert(name, points=points, wait=True)
            return
        by_tenant: dict[str, list[models.PointStruct]] = defaultdict(list)
        for point, payload in zip(points, payloads, strict=True):
            if "tenant" not in payload:
                raise ValueError("with tenant sharding every face names its tenant")
            by_tenant[str(payload["tenant"])].append(point)
        for tenant, tenant_points in by_tenant.items():
            self._ensure_shard_key(name, tenant)
            self.client.upsert(name, points=tenant_points, wait=True, shard_key_selector=tenant)

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
        shard_keys = self._read_shard_keys(name, conditions)
        if shard_keys == []:
            return [[] for _ in vectors]
        requests = [
            models.QueryRequest(
                shard_key=shard_keys,
                query=[float(v) for v in vector],
                filter=_filter(conditions),
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
                with_vector=with_vectors,
                params=self._search_params(limit, exact),
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
                shard_keys = self._read_shard_keys(name, conditions)
                self.client.delete(name, points_selector=selector, wait=True, shard_key_selector=shard_keys)
        return matching

    def count(self, name: str, conditions: Conditions) -> int:
        shard_keys = self._read_shard_keys(name, conditions)
        if shard_keys == []:
            return 0
        with self._exclusive():
            result = self.client.count(
                name, count_filter=_filter(conditions), exact=True, shard_key_selector=shard_keys
            )
        return int(result.count)

    def scroll(
        self, name: str, conditions: Conditions, limit: int, offset: str | None, with_vectors: bool = False
    ) -> tuple[list[StoredFace], str | None]:
        shard_keys = self._read_shard_keys(name, conditions)
        if shard_keys == []:
            return [], None
        with self._exclusive():
            records, next_offset = self.client.scroll(
                name,
                shard_key_selector=shard_keys,
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
