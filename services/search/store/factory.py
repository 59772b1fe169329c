"""The store the settings ask for."""

from __future__ import annotations

from services.search.settings import SearchSettings
from services.search.store.base import FaceStore


def create_store(settings: SearchSettings) -> FaceStore:
    hnsw = {"hnsw_m": settings.hnsw_m, "hnsw_ef_construct": settings.hnsw_ef_construct, "hnsw_ef": settings.hnsw_ef}
    if settings.backend == "qdrant":
        from services.search.store.qdrant import QdrantFaceStore

        return QdrantFaceStore(settings.qdrant_url, settings.qdrant_path, **hnsw)
    from services.search.store.edge import EdgeFaceStore

    return EdgeFaceStore(
        settings.path,
        optimize_after=settings.optimize_after,
        indexing_threshold_kb=settings.indexing_threshold_kb,
        erase_after_s=settings.erase_after_s,
        **hnsw,
    )
