"""The store the settings ask for."""

from __future__ import annotations

from services.search.settings import SearchSettings
from services.search.store.base import FaceStore


def create_store(settings: SearchSettings) -> FaceStore:
    common = {
        "hnsw_m": settings.hnsw_m,
        "hnsw_ef_construct": settings.hnsw_ef_construct,
        "hnsw_ef": settings.hnsw_ef,
        "rescore": settings.rescore,
        "oversampling": settings.oversampling,
    }
    layout = {
        "quantization": settings.quantization,
        "quantization_quantile": settings.quantization_quantile,
        "quantization_always_ram": settings.quantization_always_ram,
        "vectors_on_disk": settings.vectors_on_disk,
        "hnsw_on_disk": settings.hnsw_on_disk,
    }
    if settings.backend == "qdrant":
        from services.search.store.qdrant import QdrantCluster, QdrantFaceStore

        cluster = QdrantCluster(
            shard_number=settings.qdrant_shard_number,
            replication_factor=settings.qdrant_replication_factor,
            write_consistency_factor=settings.qdrant_write_consistency_factor,
            sharding=settings.qdrant_sharding,
        )
        return QdrantFaceStore(settings.qdrant_url, settings.qdrant_path, cluster=cluster, **layout, **common)
    from services.search.store.edge import EdgeFaceStore, VectorLayout

    return EdgeFaceStore(
        settings.path,
        optimize_after=settings.optimize_after,
        indexing_threshold_kb=settings.indexing_threshold_kb,
        erase_after_s=settings.erase_after_s,
        layout=VectorLayout(**layout),
        **common,
    )
