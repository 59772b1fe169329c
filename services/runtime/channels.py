"""The one policy for calls between services: how a client channel is configured.

Retries are gRPC's own (a ``retryPolicy`` in the channel's service config), never loops
in our code: a call that gets UNAVAILABLE (the service is down, restarting or not
listening yet) is tried again after a growing, jittered backoff, at most
``RetryPolicy.attempts`` times in all, and never past the call's deadline. Only calls
that are safe to repeat go through such channels: every call between our services is
(detection has no side effects, upserts are keyed by deterministic ids, deletes are
idempotent, inference is a pure function).

A channel also reconnects within a second once the service is back (gRPC's default
reconnect backoff grows to 120 s and meanwhile fails every call at once).

Calls to the internal services carry the suite's service token (the ``service_token``
setting) as the metadata ``SERVICE_TOKEN_KEY``; their servers refuse a call without it
(services/runtime/server.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from pydantic import SecretStr

# gRPC refuses a retry policy of more attempts than this (it caps maxAttempts at 5).
MAX_ATTEMPTS = 5
RECONNECT_BACKOFF_MS = {"initial": 100, "max": 1000}
SERVICE_TOKEN_KEY = "facesearch-service-token"


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all (1 = no retry); the n-th retry waits a random time up to
    ``initial_backoff_s * multiplier**(n-1)``, capped at ``max_backoff_s``."""

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    codes: tuple[str, ...] = ("UNAVAILABLE",)

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ValueError(f"attempts must be in [1, {MAX_ATTEMPTS}] (gRPC's limit), got {self.attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s or self.multiplier < 1:
            raise ValueError("backoffs must be positive, max_backoff_s >= initial_backoff_s, multiplier >= 1")

    @classmethod
    def from_retries(cls, retries: int, backoff_s: float, max_backoff_s: float | None = None) -> RetryPolicy:
        """The policy of ``retries`` retries after the first attempt, starting at ``backoff_s``."""
        initial = max(backoff_s, 0.001)
        return cls(retries + 1, initial, max(initial, max_backoff_s or 8 * initial))

    def service_config(self, services: Sequence[str]) -> str:
        """The gRPC service config (JSON) applying this policy to every method of ``services``."""
        method_config: dict = {"name": [{"service": name} for name in services]}
        if self.attempts > 1:
            method_config["retryPolicy"] = {
                "maxAttempts": self.attempts,
                "initialBackoff": f"{self.initial_backoff_s:.3f}s",
                "maxBackoff": f"{self.max_backoff_s:.3f}s",
                "backoffMultiplier": self.multiplier,
                "retryableStatusCodes": list(self.codes),
            }
        return json.dumps({"methodConfig": [method_config]})


def channel_options(
    services: Sequence[str], retry: RetryPolicy, max_message_bytes: int | None = None
) -> list[tuple[str, object]]:
    """The options of a channel to ``services`` (full gRPC service names)."""
    options: list[tuple[str, object]] = [
        ("grpc.enable_retries", 1 if retry.attempts > 1 else 0),
        ("grpc.service_config", retry.service_config(services)),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS["initial"]),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS["initial"]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS["max"]),
    ]
    if max_message_bytes is not None:
        options += [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # gRPC keeps a request for its retries only up to this size (256 KiB by
            # default) and never retries a larger one, such as a batch of photos.
            ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ]
    return options


def aio_channel(
    address: str, services: Sequence[str], retry: RetryPolicy, max_message_bytes: int | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` with the policy above."""
    return grpc.aio.insecure_channel(address, options=channel_options(services, retry, max_message_bytes))


def service_token_metadata(token: str | SecretStr | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``; none for no token."""
    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    return ((SERVICE_TOKEN_KEY, token),) if token else ()


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SendServiceToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str | SecretStr | None) -> None:
        self._metadata = service_token_metadata(token)

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *self._metadata],
            details.credentials,
            details.wait_for_ready,
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_unary = intercept_unary_unary
    intercept_stream_stream = intercept_unary_unary


def sending_service_token(channel: grpc.Channel, token: str | SecretStr | None) -> grpc.Channel:
    """A synchronous channel (of a tool or a test) whose every call carries ``token``."""
    return grpc.intercept_channel(channel, _SendServiceToken(token))
