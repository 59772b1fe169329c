"""The gRPC server every facesearch service runs on.

It adds grpc.health.v1 health checking, server reflection, Prometheus metrics on
an HTTP port, message size limits, and a graceful shutdown: on SIGTERM or SIGINT
the health status turns NOT_SERVING, new calls are refused, in-flight calls get
``shutdown_grace_s`` to finish, then the process exits.

An internal service (every one but the gateway, whose callers present API keys) with a
``service_token`` set answers only calls that carry it (services/runtime/channels.py):
any other call but a health check gets UNAUTHENTICATED, reflection included.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facesearch.v1 import facesearch_pb2
from services.runtime.channels import SERVICE_TOKEN_KEY
from services.runtime.decoding import DecodeErrorInterceptor
from services.runtime.metrics import MetricsInterceptor, ServerMetrics
from services.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Services that authenticate their callers themselves (the gateway: API keys); a server of one
# of them takes no service token.
PUBLIC_SERVICES = frozenset({facesearch_pb2.DESCRIPTOR.services_by_name["FaceSearch"].full_name})


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and how to add it to a server."""

    name: str  # full service name, e.g. "facesearch.v1.Detector"
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]


class ServiceTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but a health check that does not carry the service token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(f"/{HEALTH_SERVICE}/"):
            return handler
        presented = dict(handler_call_details.invocation_metadata or ()).get(SERVICE_TOKEN_KEY)
        if presented is None:
            return _refusal(handler, "the call carries no service token (facesearch-service-token)")
        if isinstance(presented, str):
            presented = presented.encode()
        if not hmac.compare_digest(presented, self._token):
            return _refusal(handler, "wrong service token")
        return handler


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED (the request unread)."""

    async def refuse(_: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(_: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse_stream)


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

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(self.metrics)]
        if not any(binding.name in PUBLIC_SERVICES for binding in self.bindings):
            token = self.settings.service_token
            if token is not None:
                interceptors.append(ServiceTokenInterceptor(token.get_secret_value()))
            else:
                log.warning("no service token set (FACESEARCH_SERVICE_TOKEN): every caller that reaches it is served")
        return [*interceptors, DecodeErrorInterceptor()]

    async def start(self) -> int:
        limit = self.settings.max_message_mb * 1024 * 1024
        server = grpc.aio.server(
            interceptors=self._interceptors(),
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
