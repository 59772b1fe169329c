"""Builds and runs the gateway's gRPC server."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal

from facesearch.v1 import common_pb2, facesearch_pb2, facesearch_pb2_grpc
from gateway.analysis import FaceAnalyser
from gateway.auth import ApiKeys
from gateway.dependencies import Dependencies
from gateway.downstream import DetectorClient, SearchClient
from gateway.metrics import GatewayMetrics
from gateway.operations import Operations
from gateway.progress import IndexingProgress
from gateway.service import FaceSearchService
from gateway.settings import GatewaySettings
from gateway.tenant_models import TenantModels
from services.embedder import models
from services.embedder.client.factory import create_embedder
from services.embedder.settings import EmbedderSettings
from services.runtime.logs import configure_logging
from services.runtime.server import GrpcServer, ServiceBinding
from services.runtime.settings import load_settings

SERVICE_NAME = facesearch_pb2.DESCRIPTOR.services_by_name["FaceSearch"].full_name
log = logging.getLogger(__name__)


class GatewayServer(GrpcServer):
    """The gateway's server; its downstream clients are made on the server's event loop
    (gRPC's asyncio channels belong to one loop) when it starts."""

    def __init__(self, settings: GatewaySettings, embedder_settings: EmbedderSettings, keys: ApiKeys) -> None:
        self.embedder_settings = embedder_settings
        self.keys = keys
        binding = ServiceBinding(SERVICE_NAME, self, self._add_servicer)
        super().__init__("gateway", settings, [binding])

    def analyser(
        self, settings: GatewaySettings, embedder_settings: EmbedderSettings | None = None
    ) -> tuple[FaceAnalyser, common_pb2.EmbeddingModel]:
        """The detector and the embedder as one analyser, with the embedding model it uses
        (the embedder section's, unless other ``embedder_settings`` are given); their clients
        are closed when the server stops."""
        detector = DetectorClient(settings.detector_address, settings.retry_policy(), settings.max_message_mb)
        embedder = create_embedder(embedder_settings or self.embedder_settings)
        self.on_stop(detector.close)
        self.on_stop(embedder.close)
        analyser = FaceAnalyser(
            detector,
            embedder,
            batch_size=settings.detect_batch_size,
            concurrency=settings.index_concurrency,
            max_photo_bytes=int(settings.max_photo_mb * 1024 * 1024),
        )
        model = common_pb2.EmbeddingModel(
            id=embedder.model_id, version=embedder.model_version, dimension=embedder.model.dimension
        )
        return analyser, model

    def other_analysers(self, settings: GatewaySettings) -> list[tuple[FaceAnalyser, common_pb2.EmbeddingModel]]:
        """An analyser for each model of ``embedder_urls``: the embedder section's client
        settings, that model's weights, served by the Triton at that address."""
        analysers = []
        for model_id, url in settings.embedder_urls.items():
            weights = models.by_id(model_id).weights
            other = self.embedder_settings.model_copy(
                update={"triton_url": url, "weights": weights, "model_id": model_id}
            )
            analysers.append(self.analyser(settings, other))
        return analysers

    def _add_servicer(self, _: object, server) -> None:
        settings: GatewaySettings = self.settings.with_calibrated_thresholds()  # type: ignore[attr-defined]
        credentials = settings.server_credentials()
        if credentials is not None:
            # The runtime's server binds its port with add_insecure_port, after the servicers
            # are added: with TLS configured, that binding is a TLS one (and the only one).
            server.add_insecure_port = functools.partial(server.add_secure_port, server_credentials=credentials)
        search = SearchClient(settings.search_address, settings.retry_policy(), settings.max_message_mb)
        self.on_stop(search.close)
        metrics = GatewayMetrics(self.metrics.registry)
        progress = IndexingProgress()
        operations: dict[str, Operations] = {}
        for analyser, model in [self.analyser(settings), *self.other_analysers(settings)]:
            deps = Dependencies(settings, analyser, search, model, metrics)
            threshold = deps.threshold()  # every model must have a threshold: fail at start, not per call
            log.info("model %s: similarity threshold %s", deps.model_id, threshold)
            operations[model.id] = Operations.over(deps, progress)
        default_model_id = next(iter(operations))
        tenant_models = TenantModels(search, default_model_id, settings.model_cache_s)
        self.service = FaceSearchService(operations, tenant_models, self.keys, progress)
        facesearch_pb2_grpc.add_FaceSearchServicer_to_server(self.service, server)

    async def serve_until_signalled(self) -> None:
        """As every service; SIGHUP also reloads the API keys file."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.keys.reload)
        await super().serve_until_signalled()


def build_server(
    settings: GatewaySettings, embedder_settings: EmbedderSettings | None = None, keys: ApiKeys | None = None
) -> GatewayServer:
    if keys is None:
        keys = ApiKeys.load(settings.api_keys_file, settings.api_keys, settings.api_keys_reload_s)
    if not len(keys):
        log.warning("no API keys configured: every call will be refused (see `facesearch keys add`)")
    return GatewayServer(settings, embedder_settings or EmbedderSettings(), keys)


def run(settings: GatewaySettings) -> None:
    configure_logging("gateway", settings.log_level, settings.log_format)
    server = build_server(settings, load_settings(EmbedderSettings))
    asyncio.run(server.serve_until_signalled())
