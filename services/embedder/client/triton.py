"""``TritonEmbedder``: embeddings from a Triton Inference Server over gRPC.

Each ``embed`` call splits the crops into requests of ``client_batch_size`` crops
and sends them concurrently (at most ``max_in_flight`` at a time per client), so that
Triton's dynamic batcher can combine them with other callers' requests; the answers
are put back together in the crops' order. Every request names the pinned
``model_id`` and ``model_version``, uses the tensor names and dtypes of the model
contract (``services.embedder.models``), and carries its own deadline: ``request_timeout_s``
seconds, or what is left of the call's ``deadline`` when that is sooner.

Retries are gRPC's own, configured on the channel (``services.runtime.channels``): a request
answered UNAVAILABLE (server down, connection refused or lost, not accepting requests) is
tried again up to ``retries`` times after ``retry_backoff_s`` (give or take 20%, gRPC's
jitter), then twice that, and so on up to 8 times it, always within the request's deadline. The readiness calls that
``ready`` makes are not retried: it answers at once. After the retries:

- UNAVAILABLE: ``EmbedderUnavailable``.
- DEADLINE_EXCEEDED (not retried): ``EmbedderUnavailable(deadline=True)``.
- NOT_FOUND (Triton does not serve that model or version; not retried, retrying would not
  help): ``EmbedderUnavailable`` at once.
- Any other status (INVALID_ARGUMENT, INTERNAL, ...; not retried): ``EmbedderError``
  with Triton's message.

So a request never takes longer than ``request_timeout_s`` (its retries included), and
against a closed port only the backoff delays; ``embed``'s ``deadline`` bounds it further.

With the ``shared_memory`` setting at ``system`` or ``cuda`` the crops go to Triton through
shared memory instead of inside the requests (``services.embedder.client.shared_memory``): a
pool of ``max_in_flight`` regions, registered on the first ``embed`` and unregistered and
destroyed by ``close``; each request borrows one. That needs Triton on the same host; a
registration Triton refuses raises ``EmbedderError`` naming the setting, and ``cuda`` without a
CUDA device raises it when the client is made.

The gRPC channel is made on first use, in the running event loop; use the client
from that loop only.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from services.embedder.client.base import Embedder, EmbedderError, EmbedderUnavailable, gather_all
from services.embedder.client.shared_memory import Region, RegionPool, memory_of
from services.embedder.settings import EmbedderSettings
from services.runtime.channels import RetryPolicy, channel_options
from services.runtime.deadlines import Deadline

# Triton's gRPC service, and its methods that ``ready`` calls (answered at once, never retried).
SERVICE = "inference.GRPCInferenceService"
READINESS_METHODS = ("ServerLive", "ServerReady", "ModelReady")

# gRPC statuses as tritonclient reports them: InferenceServerException.status() is
# str(grpc.RpcError.code()), e.g. "StatusCode.UNAVAILABLE".
UNAVAILABLE = str(grpc.StatusCode.UNAVAILABLE)
DEADLINE_EXCEEDED = str(grpc.StatusCode.DEADLINE_EXCEEDED)
NOT_FOUND = str(grpc.StatusCode.NOT_FOUND)

MAX_MESSAGE_BYTES = 2**31 - 1


def channel_args(settings: EmbedderSettings) -> list[tuple[str, object]]:
    """The options of the channel to Triton: the suite's channel policy (gRPC retries of
    UNAVAILABLE, quick reconnection), tritonclient's keepalive defaults, and no retries of
    the readiness calls."""
    retry = RetryPolicy.from_retries(settings.retries, settings.retry_backoff_s)
    options = channel_options([SERVICE], retry, MAX_MESSAGE_BYTES)
    keepalive = grpcclient.KeepAliveOptions()
    options += [
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
    ]
    return [
        _unretried(option, READINESS_METHODS) if option[0] == "grpc.service_config" else option for option in options
    ]


def _unretried(option: tuple[str, object], methods: tuple[str, ...]) -> tuple[str, object]:
    """The service config ``option`` plus a method config without retries for ``methods``
    (a method's own entry takes precedence over its service's)."""
    config = json.loads(str(option[1]))
    config["methodConfig"].append({"name": [{"service": SERVICE, "method": method} for method in methods]})
    return option[0], json.dumps(config)


class TritonEmbedder(Embedder):
    def __init__(
        self,
        settings: EmbedderSettings,
        *,
        url: str | None = None,
        max_in_flight: int = 8,
        ready_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(settings.model_id, settings.model_version, settings.model)
        self.url = url or settings.triton_url
        self.batch_size = settings.client_batch_size
        self.request_timeout_s = settings.request_timeout_s
        self.retries = settings.retries
        self.ready_timeout_s = min(ready_timeout_s, settings.request_timeout_s)
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self._channel_args = channel_args(settings)
        self._input_type = np_to_triton_dtype(np.dtype(self.model.input.dtype))
        self._client: grpcclient_aio.InferenceServerClient | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self.shared_memory = settings.shared_memory
        memory = memory_of(settings.shared_memory)  # raises EmbedderError for cuda without a device
        region_bytes = self.batch_size * int(np.prod(self.model.input.dims)) * np.dtype(self.model.input.dtype).itemsize
        self.regions = None if memory is None else RegionPool(memory, max_in_flight, region_bytes)
        self._regions_opened = False
        self._regions_lock: asyncio.Lock | None = None

    def describe(self) -> str:
        return f"Triton at {self.url} ({self.model_id} version {self.model_version})"

    def _connection(self) -> grpcclient_aio.InferenceServerClient:
        if self._closed:
            raise EmbedderUnavailable(f"the client of {self.describe()} was closed")
        if self._client is None:
            self._client = grpcclient_aio.InferenceServerClient(self.url, channel_args=self._channel_args)
            self._in_flight = asyncio.Semaphore(self.max_in_flight)
            self._regions_lock = asyncio.Lock()
        return self._client

    async def _open_regions(self, client: grpcclient_aio.InferenceServerClient) -> RegionPool | None:
        """The shared-memory pool, created and registered with Triton on first use; None without."""
        if self.regions is None:
            return None
        async with self._regions_lock:
            if not self._regions_opened:
                await self.regions.open(client, self.request_timeout_s, self.describe())
                self._regions_opened = True
        return self.regions

    async def _embed(self, crops: np.ndarray, deadline: Deadline | None) -> np.ndarray:
        client = self._connection()
        regions = await self._open_regions(client)
        starts = range(0, len(crops), self.batch_size)
        parts = await gather_all(
            [self._request(client, crops[start : start + self.batch_size], deadline, regions) for start in starts]
        )
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _request(
        self,
        client: grpcclient_aio.InferenceServerClient,
        crops: np.ndarray,
        deadline: Deadline | None,
        regions: RegionPool | None,
    ) -> np.ndarray:
        """One request of ``crops`` once a slot (and a region, with shared memory) is free, its
        errors mapped (see the module docstring)."""
        async with self._in_flight:
            timeout = self.request_timeout_s if deadline is None else deadline.timeout(self.request_timeout_s)
            if timeout <= 0:
                raise EmbedderUnavailable(f"{self.describe()}: the deadline ran out before the request", deadline=True)
            try:
                if regions is None:
                    return await self._infer(client, crops, timeout)
                return await self._infer_in_region(client, crops, timeout, regions)
            except InferenceServerException as error:
                raise self._failure(error, timeout) from None

    async def _infer_in_region(
        self, client: grpcclient_aio.InferenceServerClient, crops: np.ndarray, timeout: float, regions: RegionPool
    ) -> np.ndarray:
        """``_infer`` through a region borrowed from the pool; when Triton no longer knows the
        region (it restarted), the regions are registered again and the request sent once more,
        within the same ``timeout``."""
        async with regions.take() as region:
            began, generation = time.monotonic(), regions.generation
            try:
                return await self._infer(client, crops, timeout, region)
            except InferenceServerException as error:
                if not regions.lost(region, error):
                    raise
            await regions.register_again(client, generation, timeout, self.describe())
            left = timeout - (time.monotonic() - began)
            if left <= 0:
                raise EmbedderUnavailable(f"{self.describe()} did not answer within the deadline", deadline=True)
            return await self._infer(client, crops, left, region)

    def _failure(self, error: InferenceServerException, timeout: float) -> EmbedderError:
        status = error.status()
        if status == DEADLINE_EXCEEDED:
            return EmbedderUnavailable(
                f"{self.describe()} did not answer within the deadline ({timeout:.3g} s): {error.message()}",
                deadline=True,
            )
        if status == NOT_FOUND:
            return EmbedderUnavailable(
                f"Triton at {self.url} does not serve {self.model_id} version {self.model_version}: {error.message()}"
            )
        if status == UNAVAILABLE:
            retried = f"retried up to {self.retries} time{'s' if self.retries != 1 else ''}"
            return EmbedderUnavailable(f"{self.describe()} is unavailable ({retried}): {error.message()}")
        return EmbedderError(f"{self.describe()} failed ({status}): {error.message()}")

    async def _infer(
        self,
        client: grpcclient_aio.InferenceServerClient,
        crops: np.ndarray,
        timeout: float,
        region: Region | None = None,
    ) -> np.ndarray:
        """One inference call of ``crops`` (inside the request, or written into ``region``) with a
        deadline of ``timeout`` seconds (gRPC's retries within it)."""
        tensor = grpcclient.InferInput(self.model.input.name, list(crops.shape), self._input_type)
        if region is None:
            tensor.set_data_from_numpy(crops)
        else:
            tensor.set_shared_memory(region.name, self.regions.write(region, crops))
        output = self.model.output.name
        result = await client.infer(
            self.model_id,
            [tensor],
            model_version=self.model_version,
            outputs=[grpcclient.InferRequestedOutput(output)],
            client_timeout=timeout,
        )
        response = result.get_response()
        if response.model_name != self.model_id or response.model_version != self.model_version:
            raise EmbedderError(
                f"{self.describe()} answered from model {response.model_name!r} version {response.model_version!r}"
            )
        vectors = result.as_numpy(output)
        if vectors is None:
            raise EmbedderError(f"{self.describe()} returned no '{output}' output")
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
        """Closes the channel, after unregistering and destroying the shared-memory regions, if any."""
        await super().close()
        client, self._client = self._client, None
        if self.regions is not None and self._regions_opened:
            self._regions_opened = False
            await self.regions.close(client, self.ready_timeout_s)
        if client is not None:
            await client.close()
