"""Requests that are not valid protobuf for their method get INVALID_ARGUMENT.

gRPC answers a request it cannot parse with UNKNOWN and logs an error, which tells a
client nothing. This interceptor lets the parse fail softly: the request is passed on
as an ``Undecodable`` marker and the call ends with INVALID_ARGUMENT naming the
message type. Streamed requests are checked as they are read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class Undecodable:
    error: str


def _soft(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return Undecodable(str(error))

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext, request: Undecodable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not valid protobuf: {request.error}")


def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async def check() -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            yield request

    return check()


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        deserializer, serializer = _soft(handler.request_deserializer), handler.response_serializer
        if handler.unary_unary:
            behaviour = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, Undecodable):
                    await _refuse(context, request)
                return await behaviour(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)
        if handler.unary_stream:
            stream_behaviour = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, Undecodable):
                    await _refuse(context, request)
                async for reply in stream_behaviour(request, context):
                    yield reply

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)
        if handler.stream_unary:
            client_stream = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await client_stream(_checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
        both_streams = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for reply in both_streams(_checked(requests, context), context):
                yield reply

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)
