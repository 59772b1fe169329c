"""Runs the facesearch services on localhost as child processes (``facesearch up``).

Each service is ``python -m <module>`` with its ports in the environment. The gRPC services
are ready when grpc.health.v1 says SERVING; the embedder is Triton, which does not implement
that protocol, so it is ready when Triton says the server and its model are ready. The
embedder's first start converts the FaceNet weights and writes its model repository
(``facesearch models prepare``) before Triton starts: about half a minute on a small machine.

The web pages (``web``, an HTTP client of the gateway) start last, on 127.0.0.1:8080, when
there is a key to call the gateway with (the local tenant's, or ``FACESEARCH_WEB_API_KEY`` /
``FACESEARCH_API_KEY``) and ``FACESEARCH_WEB_ENABLED`` is not false; they are ready when
``/healthz`` answers.

``Suite`` supervises them. It starts nothing when one of their ports is taken already, and a
service is ready only when the process listening on its port is the one it started. A service
that exits while the suite runs is started again after a backoff (1 s, doubling up to 30 s,
back to 1 s once it has run for a minute), and the others keep serving meanwhile. Stopping
(SIGTERM or Ctrl-C) stops the web pages, then the gateway, letting it finish its calls in
flight while the back ends still answer them, then the back ends. Every child dies with the
launcher, even a launcher killed with SIGKILL (``services.runtime.processes``).

The services share a service token (``FACESEARCH_SERVICE_TOKEN``: the one in the
environment, else a random one made at each start and left in ``var/service_token`` for the
tools that call a service directly): the detector and search serve only the calls that carry
it, which the gateway's do.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.auth import LOCAL_KEY_FILE, LOCAL_KEYS_FILE, LOCAL_TENANT, add_key
from gateway.settings import GatewaySettings
from services.detector.settings import DetectorSettings
from services.embedder.settings import EmbedderSettings
from services.runtime.processes import ChildProcess
from services.runtime.readiness import (
    ExitedEarly,
    NotReady,
    grpc_serving,
    listeners,
    port_in_use,
    process_tree,
    triton_ready,
    wait_until_ready,
)
from services.runtime.settings import SERVICE_TOKEN_VARIABLE, SettingsError, load_settings
from services.search.settings import SearchSettings
from web.settings import API_KEY_VARIABLE, WebSettings


@dataclass
class ServiceProcess:
    name: str
    module: str
    port: int
    metrics_port: int
    env: dict[str, str] = field(default_factory=dict)
    # Whether the started service answers; default: grpc.health.v1 says SERVING.
    readiness: Callable[[], bool] | None = None
    startup_timeout_s: float | None = None  # default: the suite's
    extra: str = ""  # more to print beside its addresses
    front: bool = False  # a front end: stopped before the services listed before it
    other_ports: dict[str, int] = field(default_factory=dict)  # more ports it listens on, by use
    child: ChildProcess | None = None
    restarts: int = 0  # restarts since it last ran for a while
    restart_at: float | None = None  # when it is to be started again, once it has exited
    started_at: float = 0.0
    ready: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ports(self) -> dict[str, int]:
        """Every port it listens on, by use."""
        return {"gRPC": self.port, "metrics": self.metrics_port, **self.other_ports}

    def check(self) -> Callable[[], bool]:
        return self.readiness or grpc_serving(self.address)


def http_ok(url: str) -> Callable[[], bool]:
    """Whether ``url`` answers with success (urllib raises for an error status)."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return True
        except (OSError, ValueError):
            return False

    return check


DEFAULT_METRICS_PORTS = {"gateway": 9100, "detector": 9101, "embedder": 8002, "search": 9102}
EMBEDDER_STARTUP_TIMEOUT_S = 600.0  # the first start converts the weights before Triton starts
LOCAL_SERVICE_TOKEN_FILE = Path("var/service_token")


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
    token = {SERVICE_TOKEN_VARIABLE: suite_service_token()}
    services = [
        ServiceProcess(
            "detector",
            "services.detector",
            port=detector.port,
            metrics_port=detector.metrics_port or DEFAULT_METRICS_PORTS["detector"],
            env={**detector_env, **token},
        ),
        ServiceProcess(
            "embedder",
            "services.embedder",
            port=embedder.port,
            metrics_port=embedder.metrics_port or DEFAULT_METRICS_PORTS["embedder"],
            env={"FACESEARCH_EMBEDDER_HTTP_PORT": str(embedder.http_port)},
            other_ports={"HTTP": embedder.http_port},
            readiness=triton_ready(f"127.0.0.1:{embedder.port}", [(embedder.model_id, embedder.model_version)]),
            startup_timeout_s=max(EMBEDDER_STARTUP_TIMEOUT_S, embedder.startup_timeout_s),
            extra=f"  http http://127.0.0.1:{embedder.http_port}  (Triton, model {embedder.model_id}, "
            f"{embedder.flavour})",
        ),
        ServiceProcess(
            "search",
            "services.search",
            port=search.port,
            metrics_port=search.metrics_port or DEFAULT_METRICS_PORTS["search"],
            env=dict(token),
            extra=f"  ({search.backend} store in {search.path})" if search.backend == "edge" else "",
        ),
        # After the back ends: its readiness means the suite is ready (it connects to them lazily).
        ServiceProcess(
            "gateway",
            "gateway",
            port=gateway.port,
            metrics_port=gateway.metrics_port or DEFAULT_METRICS_PORTS["gateway"],
            env={**gateway_env, **token},
            extra=key_note,
            front=True,
        ),
    ]
    pages = web_pages(gateway, has_local_key=bool(key_note))
    return services + ([pages] if pages else [])


def web_pages(gateway: GatewaySettings, *, has_local_key: bool) -> ServiceProcess | None:
    """The web pages, a client of the gateway; None when they are switched off or have no key
    to call it with (the operator's keys file holds only hashes)."""
    web = load_settings(WebSettings)
    if not web.enabled:
        return None
    if not (has_local_key or web.api_key.get_secret_value() or os.environ.get(API_KEY_VARIABLE)):
        return None
    env = {"FACESEARCH_WEB_GATEWAY_ADDRESS": f"127.0.0.1:{gateway.port}"}
    if has_local_key:
        env["FACESEARCH_WEB_API_KEY_FILE"] = str(LOCAL_KEY_FILE.resolve())
    return ServiceProcess(
        "web",
        "web",
        port=web.port,
        metrics_port=web.port,  # /metrics on the pages' own port
        env=env,
        readiness=http_ok(f"http://127.0.0.1:{web.port}/healthz"),
        extra=f"  pages http://127.0.0.1:{web.port}/"
        + ("" if web.roots else "  (no FACESEARCH_WEB_ARCHIVE_ROOTS: photos not shown)"),
        front=True,
    )


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
        _write_private(key_file, add_key(keys_file, LOCAL_TENANT))
    return keys_file, key_file


def suite_service_token() -> str:
    """The suite's service token: ``FACESEARCH_SERVICE_TOKEN`` when set, else a new random one,
    left in a private file (``LOCAL_SERVICE_TOKEN_FILE``) for the tools that call a service
    directly (``facesearch detect``)."""
    token = os.environ.get(SERVICE_TOKEN_VARIABLE)
    if not token:
        token = secrets.token_urlsafe(32)
        _write_private(LOCAL_SERVICE_TOKEN_FILE.resolve(), token)
    return token


def local_service_token() -> str | None:
    """The token a tool here sends to a service it calls directly: ``FACESEARCH_SERVICE_TOKEN``,
    else the one the last `up` run from this folder made."""
    token = os.environ.get(SERVICE_TOKEN_VARIABLE)
    if token:
        return token
    try:
        return LOCAL_SERVICE_TOKEN_FILE.read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_private(path: Path, secret: str) -> None:
    """Writes ``secret`` to a file only its owner may read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")


class Suite:
    """The services as supervised children; the last one (the gateway) is the front, stopped first."""

    def __init__(
        self,
        services: list[ServiceProcess],
        startup_timeout_s: float = 120.0,
        restart_backoff_s: float = 1.0,
        max_restart_backoff_s: float = 30.0,
        stable_after_s: float = 60.0,
        stop_grace_s: float = 15.0,
    ) -> None:
        self.services = services
        self.startup_timeout_s = startup_timeout_s
        self.restart_backoff_s = restart_backoff_s
        self.max_restart_backoff_s = max_restart_backoff_s
        self.stable_after_s = stable_after_s
        self.stop_grace_s = stop_grace_s

    def start(self) -> None:
        """Starts every service and waits until each is ready; RuntimeError when one cannot
        start (nothing is left running then)."""
        taken = [
            f"{port} ({service.name} {use})"
            for service in self.services
            for use, port in service.ports.items()
            if port and port_in_use(port)
        ]
        if taken:
            raise RuntimeError(
                f"port{'s' if len(taken) > 1 else ''} {', '.join(taken)} already in use by another process "
                "(a facesearch up still running?): stop it, or set other ports (FACESEARCH_<SERVICE>_PORT, "
                "..._METRICS_PORT)"
            )
        for service in self.services:
            self._spawn(service)
        for service in self.services:
            try:
                self._wait_ready(service, service.startup_timeout_s or self.startup_timeout_s)
            except (NotReady, ExitedEarly, RuntimeError) as error:
                self.stop()
                raise RuntimeError(str(error)) from None

    def _spawn(self, service: ServiceProcess) -> None:
        prefix = f"FACESEARCH_{service.name.upper()}_"
        env = {
            **os.environ,
            f"{prefix}PORT": str(service.port),
            f"{prefix}METRICS_PORT": str(service.metrics_port),
            **service.env,
        }
        env.setdefault(f"{prefix}LOG_FORMAT", "text")
        service.child = ChildProcess(service.name, [sys.executable, "-m", service.module], env=env).start()
        service.started_at = time.monotonic()
        service.ready = False

    def _wait_ready(self, service: ServiceProcess, timeout_s: float) -> None:
        wait_until_ready(
            service.check(),
            timeout_s,
            what=f"{service.name} on {service.address}",
            process=service.child,
            interval_s=0.2,
        )
        self._check_owner(service)
        service.ready = True

    @staticmethod
    def _check_owner(service: ServiceProcess) -> None:
        """RuntimeError when the process listening on the service's port is not the child
        started for it (nor one of its own children, as Triton is the embedder's)."""
        owners = listeners(service.port)
        if owners is None or service.child is None or service.child.pid is None:
            return  # cannot tell here
        if not owners & process_tree(service.child.pid):
            raise RuntimeError(
                f"{service.name}: {service.address} is answered by another process (pid "
                f"{', '.join(map(str, sorted(owners)))}), not the {service.name} facesearch up started"
            )

    def stop(self, grace_s: float | None = None) -> None:
        """Stops the gateway first, waiting up to ``grace_s`` for it to finish its calls in
        flight while the back ends still serve them, then the back ends; SIGKILL to any still
        running ``grace_s`` after its SIGTERM."""
        grace_s = self.stop_grace_s if grace_s is None else grace_s
        for service in self.services:
            service.restart_at = None
        for tier in self._stop_tiers():
            running = [s.child for s in tier if s.child is not None and s.child.running]
            for child in running:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for child in running:
                if child.wait(max(0.1, deadline - time.monotonic())) is None:
                    child.stop_timeout_s = 0.1
                    child.stop()

    def _stop_tiers(self) -> list[list[ServiceProcess]]:
        """The front ends one by one, the last first, then all the rest together; without front
        ends marked, the last service is the front."""
        tiers, rest = [], list(self.services)
        while rest and rest[-1].front:
            tiers.append([rest.pop()])
        if not tiers and rest:
            tiers.append([rest.pop()])
        return [*tiers, rest]

    def wait(self) -> int:
        """Supervises the services until SIGTERM/SIGINT arrives (returns 0): one that exits is
        started again after a backoff, the others keep serving."""
        stopping = False

        def request_stop(signum, frame):  # noqa: ARG001
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        while not stopping:
            for service in self.services:
                if stopping:
                    break
                self.supervise(service)
            time.sleep(0.2)
        return 0

    def supervise(self, service: ServiceProcess) -> None:
        """One look at ``service``: restart it when it has exited and its backoff has passed,
        report it ready again once it answers."""
        now = time.monotonic()
        child = service.child
        if service.restart_at is not None:
            if now >= service.restart_at:
                service.restart_at = None
                self._spawn(service)
                _say(f"{service.name} restarted (pid {service.child.pid})")
            return
        if child is None:
            return
        if child.running:
            if not service.ready and service.check()():
                try:
                    self._check_owner(service)
                except RuntimeError as error:
                    _say(str(error))
                    child.stop()
                    return
                service.ready = True
                _say(f"{service.name} ready again after {now - service.started_at:.1f} s")
            if service.ready and now - service.started_at > self.stable_after_s:
                service.restarts = 0
            return
        delay = min(self.max_restart_backoff_s, self.restart_backoff_s * 2**service.restarts)
        service.restarts += 1
        service.restart_at = now + delay
        _say(
            f"{service.name} exited with status {child.returncode}; restarting it in {delay:g} s "
            f"(restart {service.restarts}); the other services keep serving"
        )


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} facesearch up: {message}", file=sys.stderr, flush=True)
