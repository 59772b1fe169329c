"""``facesearch embedder serve`` / ``python -m services.embedder``: prepare the chosen flavour's
model repository if needed, then run Triton on it until SIGTERM or Ctrl-C.

Triton is the ``tritonserver`` bundled in the nvidia-pytriton wheel (``triton_server.py``),
which has the python backend only: it serves the flavours whose backend is ``python``
(``flavours.py``: ``onnx-python`` on the CPU, ``torch-cuda-python`` on a CUDA GPU or, with
``torch_device = "cpu"``, the CPU). ``onnxruntime-onnx`` needs a Triton with the onnxruntime
backend (NVIDIA's container images): prepare it here with ``facesearch models prepare`` and
point that server at ``<model_repository>/onnxruntime-onnx``.

Preparing runs in a child process (spawned, only when something is missing or stale), so
that this long-lived process never imports torch and keeps little memory beside Triton.

Exit status: 0 after SIGTERM/SIGINT; 2 for settings, weights or a flavour that cannot be
served here; 1 when Triton fails to start or dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable

from services.embedder.serving import flavours
from services.embedder.serving.provisioning import (
    Manifest,
    ProvisioningError,
    prepare_models,
    repository_root,
    stale_models,
)
from services.embedder.serving.triton_server import TritonError, TritonServer, pytriton_root
from services.embedder.settings import EmbedderSettings
from services.runtime.logs import configure_logging
from services.runtime.settings import SettingsError, load_settings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2


class _Stopped(BaseException):
    """SIGTERM or SIGINT before Triton was ready."""


def bundled_backends() -> set[str]:
    """The backends of the tritonserver bundled here."""
    folder = pytriton_root() / "tritonserver" / "backends"
    return {item.name for item in folder.iterdir() if item.is_dir() and not item.name.startswith("__")}


def check_servable(settings: EmbedderSettings) -> None:
    """Raises ProvisioningError when the bundled tritonserver lacks the flavour's backend."""
    backends = bundled_backends()
    backend = flavours.get(settings.flavour).backend
    if backend not in backends:
        servable = [flavour.name for flavour in flavours.FLAVOUR_TABLE if flavour.backend in backends]
        raise ProvisioningError(
            f"the {settings.flavour} flavour needs Triton's {backend} backend, which the tritonserver bundled "
            f"here ({', '.join(sorted(backends))} backend only) does not have. Run `facesearch models prepare "
            f"--flavour {settings.flavour}` and serve {settings.model_repository}/{settings.flavour} with NVIDIA's "
            "Triton image (tritonserver --model-repository ...), or choose FACESEARCH_EMBEDDER_FLAVOUR="
            + " or ".join(servable)
        )


def ensure_models(settings: EmbedderSettings, force: bool = False) -> Manifest:
    """The manifest once the flavour's models are in place, preparing them in a child
    process when something is missing or stale (or ``force``)."""
    stale = ["forced"] if force else stale_models(settings, [settings.flavour])
    if not stale:
        return Manifest.read(repository_root(settings))
    log.info(
        "preparing the %s model %s in %s (%s%s)",
        settings.flavour,
        settings.model_id,
        repository_root(settings),
        "; ".join(stale[:3]),
        "; ..." if len(stale) > 3 else "",
    )
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=_child_init, initargs=(settings.log_level, settings.log_format)) as pool:
        # Leaving the block terminates the child, also when a signal interrupts the wait.
        return pool.apply(prepare_models, (settings,), {"force": force, "flavours": [settings.flavour]})


def _child_init(level: str, fmt: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    configure_logging("embedder", level, fmt)


def build_server(settings: EmbedderSettings) -> TritonServer:
    return TritonServer(
        repository_root(settings) / settings.flavour,
        settings.triton_work_dir,
        host=settings.host,
        grpc_port=settings.port,
        http_port=settings.http_port,
        metrics_port=settings.metrics_port,
        startup_timeout_s=settings.startup_timeout_s,
        stop_timeout_s=max(2.0, settings.shutdown_grace_s),
    )


def serve(
    settings: EmbedderSettings, force: bool = False, on_ready: Callable[[TritonServer], None] | None = None
) -> int:
    """Prepares the models if needed and runs Triton until SIGTERM/SIGINT (returns 0) or until
    Triton dies (returns 1). Raises ProvisioningError or TritonError when it cannot start."""
    check_servable(settings)
    stop = threading.Event()
    ready = False

    def on_signal(signum: int, frame: object) -> None:  # noqa: ARG001
        if ready:
            stop.set()
        else:
            raise _Stopped()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
    server: TritonServer | None = None
    try:
        try:
            ensure_models(settings, force)
            server = build_server(settings)
            log.info("starting Triton on %s (log: %s)", server.model_repository, server.log_path)
            server.start()
        except _Stopped:
            log.info("stopped before Triton was ready")
            return EXIT_OK
        ready = True
        log.info(
            "embedder ready: model %s version %s (%s) on Triton grpc %s, http %s, metrics %s",
            settings.model_id,
            settings.model_version,
            settings.flavour,
            server.grpc_url,
            server.http_url,
            server.metrics_url if server.metrics_port is not None else "off",
            extra={
                "model": settings.model_id,
                "version": settings.model_version,
                "flavour": settings.flavour,
                "grpc": server.grpc_url,
                "http": server.http_url,
                "metrics": server.metrics_url if server.metrics_port is not None else None,
                "triton_log": str(server.log_path),
            },
        )
        if on_ready is not None:
            on_ready(server)
        while not stop.wait(0.5):
            if not server.running:
                log.error("tritonserver exited with code %s\n%s", server.process.returncode, server.log_tail())
                return EXIT_FAILED
        log.info("stopping Triton")
        server.stop()
        log.info("embedder stopped")
        return EXIT_OK
    finally:
        if server is not None:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(force: bool = False) -> int:
    """Settings from the environment, then ``serve``; errors become a message and an exit status."""
    try:
        settings = load_settings(EmbedderSettings)
    except SettingsError as error:
        print(f"cannot start the embedder: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    configure_logging("embedder", settings.log_level, settings.log_format)
    try:
        return serve(settings, force=force)
    except ProvisioningError as error:
        print(f"cannot start the embedder: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except TritonError as error:
        print(f"cannot start the embedder: {error}", file=sys.stderr)
        return EXIT_FAILED
