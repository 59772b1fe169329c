"""Runs the facesearch services on localhost as child processes (``facesearch up``).

Each service is ``python -m <module>`` with its ports in the environment. The gRPC services
are ready when grpc.health.v1 says SERVING; the embedder is Triton, which does not implement
that protocol, so it is ready when Triton says the server and its model are ready. The
embedder's first start converts the FaceNet weights and writes its model repository
(``facesearch models prepare``) before Triton starts: about half a minute on a small machine.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.auth import LOCAL_KEY_FILE, LOCAL_KEYS_FILE, LOCAL_TENANT, add_key
from gateway.settings import GatewaySettings
from services.detector.settings import DetectorSettings
from services.embedder.settings import EmbedderSettings
from services.runtime.processes import ChildProcess
from services.runtime.readiness import ExitedEarly, NotReady, grpc_serving, triton_ready, wait_until_ready
from services.runtime.settings import SettingsError, load_settings
from services.search.settings import SearchSettings


@dataclass
class ServiceProcess:
    name: str
    module: str
    port: int
    metrics_port: int
    env: dict[str, str] = field(default_factory=dict)
    # Whether the started service answers; default: grpc.health.v1 says SERVING.
    ready: Callable[[], bool] | None = None
    startup_timeout_s: float | None = None  # default: the suite's
    extra: str = ""  # more to print beside its addresses
    child: ChildProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


DEFAULT_METRICS_PORTS = {"gateway": 9100, "detector": 9101, "embedder": 8002, "search": 9102}
EMBEDDER_STARTUP_TIMEOUT_S = 600.0  # the first start converts the weights before Triton starts


def default_suite() -> list[ServiceProcess]:
    """The services that make up the suite, on their configured (or default) local ports."""
    detector = load_settings(DetectorSettings)
    embedder = load_settings(EmbedderSettings)
    search = load_settings(SearchSettings)
    gateway = load_settings(GatewaySettings)
    gateway_env = {
        "FACESEARCH_GATEWAY_DETECTOR_ADDRESS": f"127.0.0.1:{detector.port}",
        "FACESEARCH_GATEWAY_SEARCH_ADDRESS": f"127.0.0.1:{search.port}",
        "FACESEARCH_EMBEDDER_TRITON_URL": f"127.0.0.1:{embedder.port}",
    }
    detector_env = {"FACESEARCH_DETECTOR_EMBEDDING_MODEL": detector_model(detector, embedder)}
    if gateway.thresholds_file is not None:  # where `facesearch calibrate`, run from here, writes
        gateway_env["FACESEARCH_GATEWAY_THRESHOLDS_FILE"] = str(gateway.thresholds_file.resolve())
    key_note = ""
    if gateway.api_keys_file is None and not gateway.api_keys:
        keys_file, key_file = ensure_local_key()
        gateway_env["FACESEARCH_GATEWAY_API_KEYS_FILE"] = str(keys_file)
        key_note = f"  (API key of tenant '{LOCAL_TENANT}' in {key_file})"
    return [
        ServiceProcess(
            "detector",
            "services.detector",
            port=detector.port,
            metrics_port=detector.metrics_port or DEFAULT_METRICS_PORTS["detector"],
            env=detector_env,
        ),
        ServiceProcess(
            "embedder",
            "services.embedder",
            port=embedder.port,
            metrics_port=embedder.metrics_port or DEFAULT_METRICS_PORTS["embedder"],
            env={"FACESEARCH_EMBEDDER_HTTP_PORT": str(embedder.http_port)},
            ready=triton_ready(f"127.0.0.1:{embedder.port}", [(embedder.model_id, embedder.model_version)]),
            startup_timeout_s=max(EMBEDDER_STARTUP_TIMEOUT_S, embedder.startup_timeout_s),
            extra=f"  http http://127.0.0.1:{embedder.http_port}  (Triton, model {embedder.model_id}, "
            f"{embedder.flavour})",
        ),
        ServiceProcess(
            "search",
            "services.search",
            port=search.port,
            metrics_port=search.metrics_port or DEFAULT_METRICS_PORTS["search"],
            extra=f"  ({search.backend} store in {search.path})" if search.backend == "edge" else "",
        ),
        # Last: its readiness means the suite is ready (it connects to the others lazily).
        ServiceProcess(
            "gateway",
            "gateway",
            port=gateway.port,
            metrics_port=gateway.metrics_port or DEFAULT_METRICS_PORTS["gateway"],
            env=gateway_env,
            extra=key_note,
        ),
    ]


def detector_model(detector: DetectorSettings, embedder: EmbedderSettings) -> str:
    """The embedding model whose crops the detector makes: the embedder's, unless the detector
    names one itself, which must then be the embedder's."""
    served = embedder.model.id
    if "embedding_model" in detector.model_fields_set and detector.embedding_model != served:
        raise SettingsError(
            f"the detector makes crops for {detector.embedding_model} but the embedder serves {served} "
            f"(weights {embedder.weights}): set FACESEARCH_DETECTOR_EMBEDDING_MODEL={served} or leave it unset"
        )
    return served


def ensure_local_key() -> tuple[Path, Path]:
    """The local tenant's API key for a machine running the suite for itself: made on the
    first `up` (its hash in the keys file, the key in a private file the commands read)."""
    keys_file, key_file = LOCAL_KEYS_FILE.resolve(), LOCAL_KEY_FILE.resolve()
    if not (keys_file.is_file() and key_file.is_file()):
        key = add_key(keys_file, LOCAL_TENANT)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(key + "\n")
    return keys_file, key_file


class Suite:
    def __init__(self, services: list[ServiceProcess], startup_timeout_s: float = 120.0) -> None:
        self.services = services
        self.startup_timeout_s = startup_timeout_s

    def start(self) -> None:
        for service in self.services:
            prefix = f"FACESEARCH_{service.name.upper()}_"
            env = {
                **os.environ,
                f"{prefix}PORT": str(service.port),
                f"{prefix}METRICS_PORT": str(service.metrics_port),
                **service.env,
            }
            env.setdefault(f"{prefix}LOG_FORMAT", "text")
            service.child = ChildProcess(service.name, [sys.executable, "-m", service.module], env=env).start()
        for service in self.services:
            try:
                wait_until_ready(
                    service.ready or grpc_serving(service.address),
                    service.startup_timeout_s or self.startup_timeout_s,
                    what=f"{service.name} on {service.address}",
                    process=service.child,
                    interval_s=0.2,
                )
            except (NotReady, ExitedEarly) as error:
                self.stop()
                raise RuntimeError(str(error)) from None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to every service (the gateway first), then SIGKILL to those still running
        after ``grace_s``."""
        running = [s.child for s in reversed(self.services) if s.child is not None and s.child.running]
        for child in running:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in running:
            if child.wait(max(0.1, deadline - time.monotonic())) is None:
                child.stop_timeout_s = 0.1
                child.stop()

    def wait(self) -> int:
        """Blocks until a service exits or SIGTERM/SIGINT arrives; returns an exit status."""
        stopping = False

        def request_stop(signum, frame):  # noqa: ARG001
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        while not stopping:
            for service in self.services:
                if service.child is not None and not service.child.running:
                    print(f"{service.name} exited with status {service.child.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
