"""The gRPC server every facesearch service runs on.

It adds grpc.health.v1 health checking, server reflection, Prometheus metrics on
an HTTP port, message size limits, and a graceful shutdown: on SIGTERM or SIGINT
the health status turns NOT_SERVING, new calls are refused, in-flight calls get
``shutdown_grace_s`` to finish, then the process exits.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.runtime.decoding import DecodeErrorInterceptor
from services.runtime.metrics import MetricsInterceptor, ServerMetrics
from services.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and how to add it to a server."""

    name: str  # full service name, e.g. "facesearch.v1.Detector"
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]


class GrpcServer:
    """One aio gRPC server with health, reflection and metrics."""

    def __init__(self, service: str, settings: ServiceSettings, bindings: list[ServiceBinding]):
        self.service = service
        self.settings = settings
        self.bindings = bindings
        self.metrics = ServerMetrics(service)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._on_stop: list[Callable[[], Any]] = []

    def on_stop(self, callback: Callable[[], Any]) -> None:
        """Runs ``callback`` after the server has stopped (to close stores, flush files,
        close clients); a callback that returns an awaitable is awaited."""
        self._on_stop.append(callback)

    async def start(self) -> int:
        limit = self.settings.max_message_mb * 1024 * 1024
        server = grpc.aio.server(
            interceptors=[MetricsInterceptor(self.metrics), DecodeErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [b.name for b in self.bindings]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"{self.service}: cannot bind {address}")
        await server.start()
        self._server = server
        if self.settings.metrics_port is not None:
            self._metrics_http, self.metrics_port = self.metrics.serve_http(
                self.settings.host, self.settings.metrics_port
            )
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={"address": f"{self.settings.host}:{self.port}", "metrics_port": self.metrics_port},
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Refuses new calls, lets in-flight ones finish within the grace period, then stops."""
        if self._server is None:
            return
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down", extra={"grace_s": grace})
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        for callback in self._on_stop:
            outcome = callback()
            if inspect.isawaitable(outcome):
                await outcome
        log.info("stopped")

    async def serve_until_signalled(self) -> None:
        """Runs until SIGTERM or SIGINT, then shuts down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if self._server is None:
            await self.start()
        await stop.wait()
        await self.stop()
