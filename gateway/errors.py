"""The one error type the gateway's logic raises: a gRPC status and a message for a person.

Messages quote what the caller sent only through ``shown``, cut to ``SHOWN_CHARACTERS``: a
status message travels in a header, and one too long for it (a 10,000-character id) would
turn the status into a transport error."""

from __future__ import annotations

import grpc

SHOWN_CHARACTERS = 64


class GatewayError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.NOT_FOUND, message)


def shown(value: str) -> str:
    """``value`` quoted for a message: at most SHOWN_CHARACTERS of its quoted form (then its length)."""
    quoted = repr(value)
    if len(quoted) <= SHOWN_CHARACTERS:
        return quoted
    return f"{quoted[:SHOWN_CHARACTERS]}... ({len(value)} characters)"
