"""``create_embedder``: the embedding backend the settings ask for."""

from __future__ import annotations

from services.embedder.client.base import Embedder
from services.embedder.settings import EmbedderSettings


def create_embedder(settings: EmbedderSettings, **options: object) -> Embedder:
    """A ``TritonEmbedder`` for ``backend = "triton"``, an ``InProcessEmbedder`` for
    ``"inprocess"``; ``options`` go to its constructor. Each backend's modules are imported
    only when chosen."""
    if settings.backend == "triton":
        from services.embedder.client.triton import TritonEmbedder

        return TritonEmbedder(settings, **options)
    if settings.backend == "inprocess":
        from services.embedder.client.in_process import InProcessEmbedder

        return InProcessEmbedder(settings, **options)
    raise ValueError(f"unknown embedder backend {settings.backend!r}")
