"""``TritonEmbedder``: embeddings from a Triton Inference Server over gRPC.

Each ``embed`` call splits the crops into requests of ``client_batch_size`` crops
and sends them concurrently (at most ``max_in_flight`` at a time per client), so that
Triton's dynamic batcher can combine them with other callers' requests; the answers
are put back together in the crops' order. Every request names the pinned
``model_id`` and ``model_version`` and carries its own deadline of
``request_timeout_s`` seconds (``client_timeout``).

Errors (see ``base``):

- UNAVAILABLE (server down, connection refused or lost, not accepting requests) is
  retried ``retries`` times, after ``retry_backoff_s``, then twice that, and so on;
  then ``EmbedderUnavailable``.
- DEADLINE_EXCEEDED is not retried: ``EmbedderUnavailable(deadline=True)``.
- NOT_FOUND (Triton does not serve that model or version): ``EmbedderUnavailable``
  at once; retrying would not help.
- Any other status (INVALID_ARGUMENT, INTERNAL, ...) is not retried: ``EmbedderError``
  with Triton's message.

So a call never takes longer than about ``(retries + 1) * request_timeout_s`` plus
the backoff delays, and against a closed port only the backoff delays; ``embed``'s
``timeout_s`` bounds it further.

The gRPC channel is made on first use, in the running event loop; use the client
from that loop only.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from services.embedder.client.base import (
    Embedder,
    EmbedderError,
    EmbedderUnavailable,
    gather_all,
    remaining_s,
)
from services.embedder.settings import EmbedderSettings

log = logging.getLogger(__name__)

INPUT_NAME = "crops"
OUTPUT_NAME = "embeddings"

# gRPC statuses as tritonclient reports them (InferenceServerException.status()).
UNAVAILABLE = "StatusCode.UNAVAILABLE"
DEADLINE_EXCEEDED = "StatusCode.DEADLINE_EXCEEDED"
NOT_FOUND = "StatusCode.NOT_FOUND"

MAX_MESSAGE_BYTES = 2**31 - 1
# After failed connection attempts gRPC waits longer and longer before the next one
# (1 s, then x1.6 each time, up to 120 s by default) and meanwhile fails every call at
# once with UNAVAILABLE: retries would keep failing for seconds after Triton is back
# (5 s late, measured after 8 s of refused connections). Reconnect within a second.
RECONNECT_BACKOFF_MS = {"initial": 100, "max": 1000}


class TritonEmbedder(Embedder):
    def __init__(
        self,
        settings: EmbedderSettings,
        *,
        url: str | None = None,
        max_in_flight: int = 8,
        ready_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(settings.model_id, settings.model_version)
        self.url = url or settings.triton_url
        self.batch_size = settings.client_batch_size
        self.request_timeout_s = settings.request_timeout_s
        self.retries = settings.retries
        self.retry_backoff_s = settings.retry_backoff_s
        self.ready_timeout_s = min(ready_timeout_s, settings.request_timeout_s)
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self._client: grpcclient_aio.InferenceServerClient | None = None
        self._in_flight: asyncio.Semaphore | None = None

    def describe(self) -> str:
        return f"Triton at {self.url} ({self.model_id} version {self.model_version})"

    def _connection(self) -> grpcclient_aio.InferenceServerClient:
        if self._closed:
            raise EmbedderUnavailable(f"the client of {self.describe()} was closed")
        if self._client is None:
            keepalive = grpcclient.KeepAliveOptions()
            self._client = grpcclient_aio.InferenceServerClient(
                self.url,
                channel_args=[
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                    ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                    ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                    ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS["initial"]),
                    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS["max"]),
                ],
            )
            self._in_flight = asyncio.Semaphore(self.max_in_flight)
        return self._client

    async def _embed(self, crops: np.ndarray, deadline: float | None) -> np.ndarray:
        client = self._connection()
        starts = range(0, len(crops), self.batch_size)
        parts = await gather_all(
            [self._infer_with_retries(client, crops[start : start + self.batch_size], deadline) for start in starts]
        )
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _infer_with_retries(
        self, client: grpcclient_aio.InferenceServerClient, crops: np.ndarray, deadline: float | None
    ) -> np.ndarray:
        attempt = 0
        while True:
            timeout = self._timeout(deadline)
            try:
                async with self._in_flight:
                    timeout = self._timeout(deadline)  # again: waiting for a slot took some of it
                    return await self._infer(client, crops, timeout)
            except InferenceServerException as error:
                status = error.status()
                if status == DEADLINE_EXCEEDED:
                    raise EmbedderUnavailable(
                        f"{self.describe()} did not answer within the deadline ({timeout:.3g} s): {error.message()}",
                        deadline=True,
                    ) from None
                if status == NOT_FOUND:
                    raise EmbedderUnavailable(
                        f"Triton at {self.url} does not serve {self.model_id} version {self.model_version}: "
                        f"{error.message()}"
                    ) from None
                if status != UNAVAILABLE:
                    raise EmbedderError(f"{self.describe()} failed ({status}): {error.message()}") from None
                delay = self.retry_backoff_s * 2**attempt
                left = remaining_s(deadline)
                if attempt >= self.retries or (left is not None and left <= delay):
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    raise EmbedderUnavailable(
                        f"{self.describe()} is unavailable after {tries}: {error.message()}",
                        deadline=left is not None and left <= delay and attempt < self.retries,
                    ) from None
                attempt += 1
                log.warning(
                    "Triton unavailable, retrying",
                    extra={"url": self.url, "attempt": attempt, "delay_s": delay, "error": error.message()},
                )
                await asyncio.sleep(delay)

    def _timeout(self, deadline: float | None) -> float:
        left = remaining_s(deadline)
        return self.request_timeout_s if left is None else min(self.request_timeout_s, left)

    async def _infer(
        self, client: grpcclient_aio.InferenceServerClient, crops: np.ndarray, timeout: float
    ) -> np.ndarray:
        """One request of ``crops`` with a deadline of ``timeout`` seconds."""
        if timeout <= 0:
            raise EmbedderUnavailable(f"{self.describe()}: the deadline ran out before the request", deadline=True)
        tensor = grpcclient.InferInput(INPUT_NAME, list(crops.shape), "UINT8")
        tensor.set_data_from_numpy(crops)
        result = await client.infer(
            self.model_id,
            [tensor],
            model_version=self.model_version,
            outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)],
            client_timeout=timeout,
        )
        response = result.get_response()
        if response.model_name != self.model_id or response.model_version != self.model_version:
            raise EmbedderError(
                f"{self.describe()} answered from model {response.model_name!r} version {response.model_version!r}"
            )
        vectors = result.as_numpy(OUTPUT_NAME)
        if vectors is None:
            raise EmbedderError(f"{self.describe()} returned no '{OUTPUT_NAME}' output")
        return vectors

    async def ready(self) -> bool:
        """Triton is live and the pinned model version is ready (one quick check, no retries)."""
        if self._closed:
            return False
        client = self._connection()
        try:
            return bool(
                await client.is_server_live(client_timeout=self.ready_timeout_s)
                and await client.is_model_ready(self.model_id, self.model_version, client_timeout=self.ready_timeout_s)
            )
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await super().close()
        client, self._client = self._client, None
        if client is not None:
            await client.close()
