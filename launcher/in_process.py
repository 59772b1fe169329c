"""The whole suite on loopback in one process, for tests and benchmarks: the detector, a real
Triton serving the embedding model, search on the edge store, and the gateway, with fixed
API keys (``KEYS``). Each part can be stopped and started again on the same port, to test
outages. The detector and search serve only calls that carry the suite's service token (a
random one, ``service_token``), as the gateway's do; ``internal_channel()`` sends it too."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc

from gateway.auth import ApiKeys, key_line
from gateway.server import build_server as build_gateway
from gateway.settings import GatewaySettings
from services.detector.server import build_server as build_detector
from services.detector.settings import DetectorSettings
from services.embedder.serving.provisioning import prepare_models
from services.embedder.serving.triton_server import TritonServer
from services.embedder.settings import EmbedderSettings
from services.runtime.background import BackgroundServer
from services.runtime.channels import sending_service_token
from services.runtime.ports import free_ports
from services.search.server import build_server as build_search
from services.search.settings import SearchSettings

# Tenants and their keys (the gateway only knows the hashes).
KEYS = {
    "acme": "fs_test_acme_key",
    "globex": "fs_test_globex_key",
    "cli": "fs_test_cli_key",
    "calibration": "fs_test_calibration_key",  # `facesearch calibrate` needs a tenant without people
    "evaluation": "fs_test_evaluation_key",  # `facesearch eval` needs a tenant that stores nothing
    "people": "fs_test_people_key",
    "web": "fs_test_web_key",  # the web pages' browser tests
}
READ_ONLY_KEY = ("acme", "fs_test_acme_read_only")


def prepare_model_repository(root: Path, **embedder_overrides) -> EmbedderSettings:
    """The onnx-python flavour in ``root`` (the default model, or as the overrides say, e.g. weights="dlib")."""
    settings = EmbedderSettings(model_repository=root, **embedder_overrides)
    prepare_models(settings, flavours=["onnx-python"])
    return settings


class LocalSuite:
    def __init__(
        self,
        root: Path,
        embedder: EmbedderSettings,
        *,
        triton: TritonServer | None = None,
        detector_overrides: dict | None = None,
        **gateway_overrides,
    ) -> None:
        """``embedder``: settings whose model repository holds the onnx-python flavour (its
        model is the one served); ``triton``: a running Triton serving it (else one is started
        here); ``detector_overrides``: detector settings (e.g. the embedding model it aligns for)."""
        self.detector_overrides = dict(detector_overrides or {})
        self.root = root
        self.service_token = secrets.token_urlsafe(32)
        self.detector_port, self.search_port, self.gateway_port = free_ports(3)
        self.model_repository = embedder.model_repository
        self._owns_triton = triton is None
        self.triton = triton or TritonServer(self.model_repository / "onnx-python", root / "triton").start()
        self.embedder = EmbedderSettings(
            model_repository=embedder.model_repository,
            weights=embedder.weights,
            model_id=embedder.model_id,
            model_version=embedder.model_version,
            triton_url=self.triton.grpc_url,
            retries=2,
            retry_backoff_s=0.1,
            request_timeout_s=20,
        )
        self.detector = self.start_detector()
        self.search = self.start_search()
        lines = [key_line(tenant, key) for tenant, key in KEYS.items()]
        lines.append(key_line(READ_ONLY_KEY[0], READ_ONLY_KEY[1], "read"))
        self.gateway_settings = GatewaySettings(
            host="127.0.0.1",
            port=self.gateway_port,
            log_format="text",
            detector_address=f"127.0.0.1:{self.detector_port}",
            search_address=f"127.0.0.1:{self.search_port}",
            downstream_retries=2,
            retry_backoff_s=0.1,
            metrics_port=0,
            service_token=self.service_token,
            **{"thresholds_file": None, **gateway_overrides},
        )
        self.gateway = BackgroundServer(
            build_gateway(self.gateway_settings, self.embedder, ApiKeys.parse(lines, "test keys"))
        )

    @property
    def address(self) -> str:
        return self.gateway.address

    @property
    def search_address(self) -> str:
        return f"127.0.0.1:{self.search_port}"

    def internal_channel(self, address: str, **options) -> grpc.Channel:
        """A channel to the detector or search (``grpc.insecure_channel``'s arguments) whose
        calls carry the service token."""
        return sending_service_token(grpc.insecure_channel(address, **options), self.service_token)

    def start_triton(self) -> TritonServer:
        """Triton again, on the ports it had."""
        return self.triton.restart()

    def start_detector(self) -> BackgroundServer:
        settings = DetectorSettings(
            host="127.0.0.1",
            port=self.detector_port,
            log_format="text",
            service_token=self.service_token,
            **self.detector_overrides,
        )
        self.detector = BackgroundServer(build_detector(settings))
        return self.detector

    def start_search(self) -> BackgroundServer:
        settings = SearchSettings(
            host="127.0.0.1",
            port=self.search_port,
            log_format="text",
            path=self.root / "search",
            service_token=self.service_token,
        )
        self.search = BackgroundServer(build_search(settings))
        return self.search

    def stop(self) -> None:
        """Stops every part it started (a Triton it was given is left running)."""
        for part in (self.gateway, self.search, self.detector):
            part.stop()
        if self._owns_triton:
            self.triton.stop()
