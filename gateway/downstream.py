"""Calls from the gateway to the detector and search services.

Every call carries a deadline: what is left of the request's (the caller's, at most
``request_timeout_s``), so a downstream call never outlives the request that made it.
Retries are gRPC's own, configured on the channels (services/runtime/channels.py):
a call answered UNAVAILABLE is tried again with a growing backoff, at most
``downstream_retries`` times and never past its deadline. Every call here is safe to
repeat: detection has no side effects, upserts are keyed by deterministic ids, deletes
are idempotent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from pydantic import SecretStr

from facesearch.v1 import detector_pb2, detector_pb2_grpc, search_pb2, search_pb2_grpc
from gateway.errors import GatewayError
from services.runtime.channels import RetryPolicy, aio_channel, service_token_metadata
from services.runtime.deadlines import Deadline

DETECTOR_SERVICE = detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name
SEARCH_SERVICE = search_pb2.DESCRIPTOR.services_by_name["Search"].full_name
Request = TypeVar("Request")
Reply = TypeVar("Reply")

PASSED_THROUGH = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def downstream_error(service: str, what: str, error: grpc.aio.AioRpcError) -> GatewayError:
    code = error.code()
    message = f"{service} {what}: {error.details() or code.name}"
    if code in PASSED_THROUGH:
        return GatewayError(code, message)
    # Anything else is the gateway's or the service's fault, not the caller's.
    return GatewayError(grpc.StatusCode.INTERNAL, message)


class _Client:
    """One channel to one service; ``_call`` runs a call with what is left of the deadline."""

    def __init__(self, name: str, address: str, service: str, retry: RetryPolicy, max_message_mb: int) -> None:
        self.name = name
        self._channel = aio_channel(address, [service], retry, max_message_mb * 1024 * 1024)
        self._metadata: tuple[tuple[str, str], ...] = ()

    def send_service_token(self, token: SecretStr | None) -> None:
        """Every call from now on carries ``token`` (the internal services require it)."""
        self._metadata = service_token_metadata(token)

    async def _call(
        self, what: str, method: Callable[..., Awaitable[Reply]], request: Request, deadline: Deadline
    ) -> Reply:
        timeout = deadline.check(f"{self.name} {what}")
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise downstream_error(self.name, what, error) from None

    async def close(self) -> None:
        await self._channel.close()


class DetectorClient(_Client):
    def __init__(self, address: str, retry: RetryPolicy, max_message_mb: int) -> None:
        super().__init__("detector", address, DETECTOR_SERVICE, retry, max_message_mb)
        self._stub = detector_pb2_grpc.DetectorStub(self._channel)

    async def detect_batch(
        self, request: detector_pb2.DetectBatchRequest, deadline: Deadline
    ) -> detector_pb2.DetectBatchResponse:
        return await self._call("DetectBatch", self._stub.DetectBatch, request, deadline)


class SearchClient(_Client):
    def __init__(self, address: str, retry: RetryPolicy, max_message_mb: int) -> None:
        super().__init__("search", address, SEARCH_SERVICE, retry, max_message_mb)
        self._stub = search_pb2_grpc.SearchStub(self._channel)

    async def upsert(self, request: search_pb2.UpsertRequest, deadline: Deadline) -> search_pb2.UpsertResponse:
        return await self._call("Upsert", self._stub.Upsert, request, deadline)

    async def query(self, request: search_pb2.QueryRequest, deadline: Deadline) -> search_pb2.QueryResponse:
        return await self._call("Query", self._stub.Query, request, deadline)

    async def delete(self, request: search_pb2.DeleteRequest, deadline: Deadline) -> search_pb2.DeleteResponse:
        return await self._call("Delete", self._stub.Delete, request, deadline)

    async def count(self, request: search_pb2.CountRequest, deadline: Deadline) -> int:
        reply = await self._call("Count", self._stub.Count, request, deadline)
        return reply.count

    async def scroll(self, request: search_pb2.ScrollRequest, deadline: Deadline) -> search_pb2.ScrollResponse:
        return await self._call("Scroll", self._stub.Scroll, request, deadline)

    async def get_tenant_model(
        self, request: search_pb2.GetTenantModelRequest, deadline: Deadline
    ) -> search_pb2.TenantModel:
        reply = await self._call("GetTenantModel", self._stub.GetTenantModel, request, deadline)
        return reply.choice

    async def set_tenant_model(
        self, request: search_pb2.SetTenantModelRequest, deadline: Deadline
    ) -> search_pb2.TenantModel:
        reply = await self._call("SetTenantModel", self._stub.SetTenantModel, request, deadline)
        return reply.choice

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
