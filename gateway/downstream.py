"""Calls from the gateway to the detector and search services.

Every call carries a deadline: what is left of the caller's (or the gateway's
default), so a downstream call never outlives the request that made it. Calls that
are safe to repeat (all of these: detection has no side effects, upserts are keyed by
deterministic ids, deletes are idempotent) are retried with exponential backoff when
the service answers UNAVAILABLE, while the deadline allows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from facesearch.v1 import detector_pb2, detector_pb2_grpc, search_pb2, search_pb2_grpc
from gateway.errors import GatewayError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Reconnect within a second once a service is back (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Deadline:
    """A point in time (time.monotonic) by which a request must be answered."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    @classmethod
    def of(cls, context: grpc.aio.ServicerContext | None, default_s: float) -> Deadline:
        remaining = context.time_remaining() if context is not None else None
        return cls(default_s if remaining is None else min(remaining, default_s))

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self, what: str) -> float:
        left = self.remaining()
        if left <= 0:
            raise GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before {what}")
        return left


class Retrying:
    """Runs one downstream call with the request's deadline and retries on UNAVAILABLE."""

    def __init__(self, service: str, retries: int, backoff_s: float) -> None:
        self.service = service
        self.retries = retries
        self.backoff_s = backoff_s

    async def __call__(self, what: str, call: Callable[[float], Awaitable[T]], deadline: Deadline) -> T:
        attempt = 0
        while True:
            timeout = deadline.check(f"{self.service} {what}")
            try:
                return await call(timeout)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    delay = self.backoff_s * 2**attempt
                    if deadline.remaining() > delay:
                        attempt += 1
                        log.warning("retrying", extra={"service": self.service, "call": what, "attempt": attempt})
                        await asyncio.sleep(delay)
                        continue
                raise downstream_error(self.service, what, error) from None


PASSED_THROUGH = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def downstream_error(service: str, what: str, error: grpc.aio.AioRpcError) -> GatewayError:
    code = error.code()
    message = f"{service} {what}: {error.details() or code.name}"
    if code in PASSED_THROUGH:
        return GatewayError(code, message)
    # Anything else is the gateway's or the service's fault, not the caller's.
    return GatewayError(grpc.StatusCode.INTERNAL, message)


def _channel(address: str, max_message_mb: int) -> grpc.aio.Channel:
    limit = max_message_mb * 1024 * 1024
    return grpc.aio.insecure_channel(
        address,
        options=[*CHANNEL_OPTIONS, ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)],
    )


class DetectorClient:
    def __init__(self, address: str, retrying: Retrying, max_message_mb: int) -> None:
        self.address = address
        self._channel = _channel(address, max_message_mb)
        self._stub = detector_pb2_grpc.DetectorStub(self._channel)
        self._retrying = retrying

    async def detect_batch(
        self, request: detector_pb2.DetectBatchRequest, deadline: Deadline
    ) -> detector_pb2.DetectBatchResponse:
        return await self._retrying(
            "DetectBatch", lambda timeout: self._stub.DetectBatch(request, timeout=timeout), deadline
        )

    async def close(self) -> None:
        await self._channel.close()


class SearchClient:
    def __init__(self, address: str, retrying: Retrying, max_message_mb: int) -> None:
        self.address = address
        self._channel = _channel(address, max_message_mb)
        self._stub = search_pb2_grpc.SearchStub(self._channel)
        self._retrying = retrying

    async def upsert(self, request: search_pb2.UpsertRequest, deadline: Deadline) -> search_pb2.UpsertResponse:
        return await self._retrying("Upsert", lambda t: self._stub.Upsert(request, timeout=t), deadline)

    async def query(self, request: search_pb2.QueryRequest, deadline: Deadline) -> search_pb2.QueryResponse:
        return await self._retrying("Query", lambda t: self._stub.Query(request, timeout=t), deadline)

    async def delete(self, request: search_pb2.DeleteRequest, deadline: Deadline) -> search_pb2.DeleteResponse:
        return await self._retrying("Delete", lambda t: self._stub.Delete(request, timeout=t), deadline)

    async def count(self, request: search_pb2.CountRequest, deadline: Deadline) -> int:
        reply = await self._retrying("Count", lambda t: self._stub.Count(request, timeout=t), deadline)
        return reply.count

    async def scroll(self, request: search_pb2.ScrollRequest, deadline: Deadline) -> search_pb2.ScrollResponse:
        return await self._retrying("Scroll", lambda t: self._stub.Scroll(request, timeout=t), deadline)

    async def scroll_all(
        self, request: search_pb2.ScrollRequest, deadline: Deadline, limit: int
    ) -> list[search_pb2.FaceRecord]:
        """Every face matching the request's filter, page by page, up to ``limit`` faces."""
        faces: list[search_pb2.FaceRecord] = []
        page = search_pb2.ScrollRequest()
        page.CopyFrom(request)
        while True:
            reply = await self.scroll(page, deadline)
            faces.extend(reply.faces)
            if not reply.next_page_token or len(faces) >= limit:
                return faces[:limit]
            page.page_token = reply.next_page_token

    async def close(self) -> None:
        await self._channel.close()
