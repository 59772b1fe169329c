"""Search settings (environment: FACESEARCH_SEARCH_<FIELD>; file: [search])."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

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
    hnsw_ef: int = Field(128, ge=8, description="HNSW search-time beam width.")
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

    @field_validator("models")
    @classmethod
    def _valid_models(cls, models: dict[str, int]) -> dict[str, int]:
        for model_id, size in models.items():
            if not model_id or size < 1:
                raise ValueError(f"model {model_id!r}: size must be positive")
        return models
