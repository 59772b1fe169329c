"""Search settings (environment: FACESEARCH_SEARCH_<FIELD>; file: [search])."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.embedder.models import MODELS
from services.runtime.page_tokens import PageTokenKey
from services.runtime.settings import ServiceSettings


class SearchSettings(ServiceSettings):
    section = "search"

    port: int = Field(50052, ge=0, le=65535)
    backend: Literal["edge", "qdrant"] = Field(
        "edge", description="edge (Qdrant's engine in-process, on disk) or qdrant (qdrant-client)."
    )
    path: Path = Field(Path("var/search"), description="Where the edge backend keeps its shards.")
    qdrant_url: str | None = Field(None, description="Qdrant server URL for the qdrant backend.")
    qdrant_path: str = Field(
        ":memory:", description="qdrant-client local mode when no URL is set: a folder or :memory:."
    )
    models: dict[str, int] = Field(
        {model.id: model.dimension for model in MODELS},
        description="Embedding models accepted, with their vector size.",
    )
    max_batch_points: int = Field(1024, ge=1, description="Most faces in one Upsert.")
    max_query_vectors: int = Field(64, ge=1, description="Most vectors in one Query.")
    max_top_k: int = Field(1000, ge=1, description="Largest top_k of a Query.")
    max_page_size: int = Field(1000, ge=1, description="Largest Scroll page.")
    page_token_key: PageTokenKey = Field(
        None,
        description="Key signing Scroll page tokens; unset: a random one per process. "
        "Replicas behind one address need the same key.",
    )
    hnsw_m: int = Field(16, ge=4, description="HNSW graph degree.")
    hnsw_ef_construct: int = Field(128, ge=8, description="HNSW build-time beam width.")
    hnsw_ef: int = Field(
        256,
        ge=8,
        description="HNSW search-time beam width. Recall at a given width falls as a collection grows: "
        "measured with int8 vectors, recall@10 at 1M faces was 0.97 at 128 and 0.999 at 256; at 2M, "
        "0.89 at 128, 0.96 at 256, 0.98 at 512.",
    )
    optimize_after: int = Field(5000, ge=1, description="Edge: build the HNSW index after this many new points.")

    indexing_threshold_kb: int = Field(
        20_000, ge=1, description="Edge: segments larger than this (KiB of vectors) get an HNSW index."
    )
    erase_after_s: float = Field(
        60.0,
        ge=0,
        description="Edge: seconds after a delete when the segments holding deleted faces are rewritten "
        "without them (the deletes meanwhile are erased together).",
    )

    quantization: Literal["none", "int8"] = Field(
        "int8",
        description="Vectors of new collections: int8 (scalar quantization, 1 byte a dimension, searched "
        "first, then rescored with the float32 originals) or none (float32 only).",
    )
    quantization_quantile: float = Field(
        0.99, gt=0.5, le=1.0, description="int8: the share of values the quantization range covers."
    )
    quantization_always_ram: bool = Field(
        True, description="int8: keep the quantized vectors in RAM even when the originals are on disk."
    )
    vectors_on_disk: bool = Field(
        True, description="Keep the float32 vectors in memory-mapped files, read through the page cache."
    )
    hnsw_on_disk: bool = Field(False, description="Keep the HNSW graph in memory-mapped files.")
    rescore: bool = Field(
        True,
        description="Quantized search: rescore the candidates with the originals, so scores are exact cosines "
        "(off: approximate int8 scores).",
    )
    oversampling: float = Field(
        2.0, ge=1.0, description="Quantized search: candidates found with int8 per result asked for."
    )
    qdrant_sharding: Literal["auto", "tenant"] = Field(
        "auto",
        description="Qdrant server: auto (points spread over qdrant_shard_number shards by id; tenants kept "
        "apart by the is_tenant payload index) or tenant (custom sharding: a shard key per tenant, created on "
        "its first write, named on every call).",
    )
    qdrant_shard_number: int = Field(
        1, ge=1, description="Qdrant server: shards per collection (auto) or per tenant's shard key (tenant)."
    )
    qdrant_replication_factor: int = Field(1, ge=1, description="Qdrant server: copies of each shard.")
    qdrant_write_consistency_factor: int = Field(
        1, ge=1, description="Qdrant server: copies that must confirm a write before it is acknowledged."
    )

    @field_validator("models")
    @classmethod
    def _valid_models(cls, models: dict[str, int]) -> dict[str, int]:
        for model_id, size in models.items():
            if not model_id or size < 1:
                raise ValueError(f"model {model_id!r}: size must be positive")
        return models

    @model_validator(mode="after")
    def _writes_can_be_confirmed(self) -> SearchSettings:
        if self.qdrant_write_consistency_factor > self.qdrant_replication_factor:
            raise ValueError("qdrant_write_consistency_factor cannot exceed qdrant_replication_factor")
        return self
