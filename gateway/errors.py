"""The one error type the gateway's logic raises: a gRPC status and a message for a person."""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.NOT_FOUND, message)
