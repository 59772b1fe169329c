"""Builds and runs the search service's gRPC server."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from facesearch.v1 import search_pb2, search_pb2_grpc
from services.runtime.logs import configure_logging
from services.runtime.page_tokens import key_bytes
from services.runtime.server import GrpcServer, ServiceBinding
from services.search.faces import FaceIndex
from services.search.service import SearchService
from services.search.settings import SearchSettings
from services.search.store.factory import create_store

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["Search"].full_name
log = logging.getLogger(__name__)


def build_server(settings: SearchSettings) -> GrpcServer:
    """Opens the store and wires it into a server (not started yet)."""
    store = create_store(settings)
    index = FaceIndex(
        store,
        settings.models,
        max_batch=settings.max_batch_points,
        max_query_vectors=settings.max_query_vectors,
        max_top_k=settings.max_top_k,
        max_page_size=settings.max_page_size,
        page_token_key=key_bytes(settings.page_token_key),
    )
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="search")
    binding = ServiceBinding(SERVICE_NAME, SearchService(index, executor), search_pb2_grpc.add_SearchServicer_to_server)
    server = GrpcServer("search", settings, [binding])
    server.on_stop(store.close)
    return server


def run(settings: SearchSettings) -> None:
    configure_logging("search", settings.log_level, settings.log_format)
    server = build_server(settings)
    log.info("search store open", extra={"backend": settings.backend})
    asyncio.run(server.serve_until_signalled())
