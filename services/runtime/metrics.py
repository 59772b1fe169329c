"""Prometheus metrics for gRPC servers: requests by method and status code, latency, in-flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """The metrics of one gRPC server, in a registry of its own."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        labels = ["service", "method"]
        self.requests = Counter(
            "facesearch_grpc_requests",
            "gRPC calls handled, by method and status code.",
            [*labels, "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "facesearch_grpc_request_duration_seconds",
            "Time from the start of a gRPC call to its end.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "facesearch_grpc_requests_in_flight",
            "gRPC calls being handled now.",
            labels,
            registry=self.registry,
        )

    def serve_http(self, host: str, port: int) -> tuple[Any, int]:
        """Starts the /metrics HTTP endpoint; returns the server and its bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_port

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.requests.labels(self.service, method, code.name).inc()
        self.latency.labels(self.service, method).observe(seconds)


def _status_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # the aio context may hand back the raw integer
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call of an aio gRPC server."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def _wrap_unary(self, method: str, behaviour: Callable[..., Awaitable[Any]]):
        metrics = self.metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            gauge = metrics.in_flight.labels(metrics.service, method)
            gauge.inc()
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                gauge.dec()
                metrics.observe(method, _status_of(context, error), time.perf_counter() - start)

        return observed

    def _wrap_stream(self, method: str, behaviour: Callable[..., AsyncIterator[Any]]):
        metrics = self.metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            gauge = metrics.in_flight.labels(metrics.service, method)
            gauge.inc()
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                gauge.dec()
                metrics.observe(method, _status_of(context, error), time.perf_counter() - start)

        return observed
