"""The edge backend: Qdrant's engine embedded in this process (qdrant-edge-py), on disk.

Each collection is one EdgeShard in its own folder. New points are searchable at
once (unindexed segments are scanned exactly); the HNSW index is built by
``optimize()``, which runs on a background thread after ``optimize_after`` new
points and when a collection is opened. Segments smaller
than ``indexing_threshold_kb`` stay unindexed: an exact scan of them is as fast.

Deleting erases. The engine's delete only marks points, so ``erase_after_s`` after a
delete (the deletes meanwhile wait for the same pass) the segments holding deleted
points are rewritten without them and the old ones removed (``optimize()`` with
vacuuming of any segment with a deleted point, then ``flush()``). Shards have no
write-ahead log, which would keep every deleted point's vector and payload until it
rolled over: each update is flushed before it is acknowledged instead. A collection
is vacuumed when it is opened (a delete the process did not live to erase) and when
the store is closed; a shard of an earlier version, with a write-ahead log, is
rewritten into a new shard without one when it is opened.

Layout (``VectorLayout``): the vectors can be quantized to int8 (one byte a dimension, kept
in RAM with ``quantization_always_ram``) with the float32 originals on disk, and the HNSW
graph on disk. A quantized search finds ``oversampling`` times the candidates asked for with
the int8 vectors, then rescores them with the originals, so scores are exact cosines. A
shard keeps the layout it was created with (stored in its ``edge_config.json``): opening it
with other layout settings logs the difference and changes nothing on disk; the settings
apply to collections created from then on.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

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

# A segment with any deleted point is vacuumed (rewritten without it) by optimize().
VACUUM_DELETED_FRACTION = 1e-9
# Where a shard is rewritten, and where the shard it replaces waits to be removed.
REWRITE_SUFFIX, REPLACED_SUFFIX = ".rewrite", ".replaced"
COPY_PAGE = 1000
ERASE_RETRY_S = 10.0  # the least wait before an erasure that failed is tried again


@dataclass(frozen=True)
class VectorLayout:
    """How a shard stores its vectors and HNSW graph."""

    quantization: Literal["none", "int8"] = "none"
    quantization_quantile: float = 0.99
    quantization_always_ram: bool = True
    vectors_on_disk: bool = False
    hnsw_on_disk: bool = False

    @classmethod
    def stored(cls, config: dict[str, Any]) -> VectorLayout:
        """The layout an ``edge_config.json`` describes."""
        on_disk = {
            "vectors_on_disk": bool(config["vectors"][""].get("on_disk")),
            "hnsw_on_disk": bool((config.get("hnsw_config") or {}).get("on_disk")),
        }
        scalar = (config.get("quantization_config") or {}).get("scalar")
        if not scalar:
            return cls(**on_disk)
        return cls(
            quantization="int8",
            quantization_quantile=scalar.get("quantile") or cls.quantization_quantile,
            quantization_always_ram=bool(scalar.get("always_ram")),
            **on_disk,
        )

    def differences(self, other: VectorLayout) -> dict[str, tuple[Any, Any]]:
        """The settings that differ: name -> (this layout's, the other's); the int8 settings
        only when either layout is quantized."""
        mine, theirs = asdict(self), asdict(other)
        unquantized = self.quantization == other.quantization == "none"
        ignored = {"quantization_quantile", "quantization_always_ram"} if unquantized else set()
        return {
            name: (value, theirs[name]) for name, value in mine.items() if name not in ignored and theirs[name] != value
        }


class _Collection:
    def __init__(self, shard: qe.EdgeShard, layout: VectorLayout) -> None:
        self.shard = shard
        self.layout = layout
        self.write_lock = threading.Lock()
        self.optimize_lock = threading.Lock()
        self.unindexed = 0
        self.erase_timer: threading.Timer | None = None  # the erasure due after a delete


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
        erase_after_s: float = 60.0,
        layout: VectorLayout | None = None,
        rescore: bool = True,
        oversampling: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construct = hnsw_ef_construct
        self.hnsw_ef = hnsw_ef
        self.optimize_after = optimize_after
        self.indexing_threshold_kb = indexing_threshold_kb
        self.erase_after_s = erase_after_s
        self.layout = layout or VectorLayout()
        self.rescore = rescore
        self.oversampling = oversampling
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()
        self._optimizers: list[threading.Thread] = []
        self._closing = False
        _finish_rewrites(self.path)
        for folder in sorted(p for p in self.path.iterdir() if p.is_dir()):
            self._open(folder.name, *self._load(folder))

    def _config(self, size: int, layout: VectorLayout) -> qe.EdgeConfig:
        quantization = None
        if layout.quantization == "int8":
            quantization = qe.ScalarQuantizationConfig(
                qe.ScalarType.Int8,
                quantile=layout.quantization_quantile,
                always_ram=layout.quantization_always_ram,
            )
        return qe.EdgeConfig(
            vectors={"": qe.EdgeVectorParams(size=size, distance=qe.Distance.Cosine, on_disk=layout.vectors_on_disk)},
            hnsw_config=qe.HnswIndexConfig(
                m=self.hnsw_m,
                ef_construct=self.hnsw_ef_construct,
                full_scan_threshold=10_000,
                on_disk=layout.hnsw_on_disk,
            ),
            quantization_config=quantization,
            optimizers=qe.EdgeOptimizersConfig(
                # Segments smaller than this are searched exactly; larger ones get an HNSW index.
                indexing_threshold=self.indexing_threshold_kb,
                deleted_threshold=VACUUM_DELETED_FRACTION,
                vacuum_min_vector_number=1,
            ),
            wal_enabled=False,
        )

    def _load(self, folder: Path) -> tuple[qe.EdgeShard, VectorLayout]:
        """Opens a shard with this store's configuration and the layout it was created with;
        one with a write-ahead log is rewritten first."""
        stored = json.loads((folder / "edge_config.json").read_text())
        layout = VectorLayout.stored(stored)
        differences = layout.differences(self.layout)
        if differences:
            log.warning(
                "collection keeps the vector layout it was created with",
                extra={"collection": folder.name, "stored_vs_settings": differences},
            )
        config = self._config(stored["vectors"][""]["size"], layout)
        if stored.get("wal_enabled") is False:
            return qe.EdgeShard.load(str(folder), config), layout
        old = qe.EdgeShard.load(str(folder))
        rewrite = folder.with_name(folder.name + REWRITE_SUFFIX)
        shutil.rmtree(rewrite, ignore_errors=True)
        shard = self._create(rewrite, config)
        offset, copied = None, 0
        while True:
            request = qe.ScrollRequest(offset=offset, limit=COPY_PAGE, with_payload=True, with_vector=True)
            records, offset = old.scroll(request)
            points = [qe.Point(r.id, [float(v) for v in as_vector(r.vector)], dict(r.payload or {})) for r in records]
            if points:
                shard.update(qe.UpdateOperation.upsert_points(points))
                copied += len(points)
            if offset is None:
                break
        shard.flush()
        shard.close()
        old.close()
        replaced = folder.with_name(folder.name + REPLACED_SUFFIX)
        folder.rename(replaced)
        rewrite.rename(folder)
        shutil.rmtree(replaced)
        log.info("rewritten without a write-ahead log", extra={"collection": folder.name, "points": copied})
        return qe.EdgeShard.load(str(folder), config), layout

    def _open(self, name: str, shard: qe.EdgeShard, layout: VectorLayout) -> _Collection:
        collection = _Collection(shard, layout)
        self._collections[name] = collection
        info = shard.info()
        collection.unindexed = max(0, info.points_count - info.indexed_vectors_count)
        # Also vacuums what a delete before a stop or crash left in the segments.
        self._optimize_in_background(name, collection)
        return collection

    @staticmethod
    def _create(folder: Path, config: qe.EdgeConfig) -> qe.EdgeShard:
        shard = qe.EdgeShard.create(str(folder), config)
        for field in KEYWORD_FIELDS:
            params = qe.KeywordIndexParams(is_tenant=True) if field == "tenant" else qe.KeywordIndexParams()
            shard.update(qe.UpdateOperation.create_field_index(field, params))
        for field in INTEGER_FIELDS:
            params = qe.IntegerIndexParams(lookup=True, range=False)
            shard.update(qe.UpdateOperation.create_field_index(field, params))
        shard.flush()
        return shard

    def ensure_collection(self, name: str, size: int) -> None:
        with self._lock:
            if name in self._collections:
                return
            self._open(name, self._create(self.path / name, self._config(size, self.layout)), self.layout)

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
        """Builds the HNSW index of the points added since the last optimisation and rewrites
        the segments that hold deleted points without them; the files of the segments it
        replaced are gone when it returns."""
        collection = self._get(name)
        with collection.optimize_lock:
            pending = collection.unindexed
            changed = collection.shard.optimize()
            with collection.write_lock:
                collection.shard.flush()  # removes the replaced segments
            collection.unindexed = max(0, collection.unindexed - pending)
            if changed:
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

    def _erase_later(self, name: str, collection: _Collection, delay_s: float | None = None) -> None:
        """Schedules the erasure of the collection's deleted points, unless one is due already."""
        with self._lock:
            if collection.erase_timer is None and not self._closing:
                delay_s = self.erase_after_s if delay_s is None else delay_s
                timer = threading.Timer(delay_s, self._erase, args=(name, collection))
                timer.name, timer.daemon = f"erase-{name}", True
                collection.erase_timer = timer
                timer.start()

    def _erase(self, name: str, collection: _Collection) -> None:
        with self._lock:
            collection.erase_timer = None  # a delete from now on is erased by the next pass
        try:
            self.optimize(name)
        except Exception:
            log.exception("erasing deleted points failed; trying again", extra={"collection": name})
            self._erase_later(name, collection, max(self.erase_after_s, ERASE_RETRY_S))

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
                params=self._search_params(collection.layout, limit, exact),
            )
            for vector in vectors
        ]
        results = collection.shard.query_batch(qe.QueryBatchRequest(requests))
        return [
            [ScoredFace(str(p.id), float(p.score), as_vector(p.vector), dict(p.payload or {})) for p in hits]
            for hits in results
        ]

    def _search_params(self, layout: VectorLayout, limit: int, exact: bool) -> qe.SearchParams:
        """HNSW beam width; on a quantized collection, oversampling and rescoring with the
        originals (an exact search skips the int8 vectors altogether)."""
        quantization = None
        if layout.quantization != "none":
            quantization = qe.QuantizationSearchParams(
                ignore=exact, rescore=self.rescore, oversampling=self.oversampling
            )
        return qe.SearchParams(hnsw_ef=max(self.hnsw_ef, limit), exact=exact, quantization=quantization)

    def delete(self, name: str, conditions: Conditions) -> int:
        collection = self._get(name)
        with collection.write_lock:
            matching = self.count(name, conditions)
            if matching:
                collection.shard.update(qe.UpdateOperation.delete_points_by_filter(_filter(conditions)))
                collection.shard.flush()
        if matching:
            self._erase_later(name, collection)
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
        """Erases the deleted points still waiting for it, then flushes and closes every shard."""
        with self._lock:
            self._closing = True
        for name, collection in list(self._collections.items()):
            timer = collection.erase_timer
            if timer is not None:
                timer.cancel()
                timer.join()
                if collection.erase_timer is timer:  # it had not started
                    collection.erase_timer = None
                    self.optimize(name)
        self.wait_for_optimizers()
        for collection in self._collections.values():
            with collection.write_lock:
                collection.shard.flush()
                collection.shard.close()
        self._collections.clear()


def _finish_rewrites(path: Path) -> None:
    """Completes or undoes what a rewrite interrupted by a crash left behind."""
    for replaced in path.glob(f"*{REPLACED_SUFFIX}"):
        folder = replaced.with_name(replaced.name.removesuffix(REPLACED_SUFFIX))
        if folder.exists():
            shutil.rmtree(replaced)
        else:
            replaced.rename(folder)
    for rewrite in path.glob(f"*{REWRITE_SUFFIX}"):
        shutil.rmtree(rewrite)


def _filter(conditions: Conditions) -> qe.Filter | None:
    must: list[Any] = [
        qe.FieldCondition(key, match=qe.MatchValue(values[0]) if len(values) == 1 else qe.MatchAny(list(values)))
        for key, values in conditions.match_any.items()
    ]
    if conditions.ids is not None:
        must.append(qe.HasIdCondition(set(conditions.ids)))
    return qe.Filter(must=must) if must else None
