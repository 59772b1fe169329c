"""Shared-memory inputs for ``TritonEmbedder`` (the embedder's ``shared_memory`` setting).

With ``system`` or ``cuda`` the crops of a request do not travel inside the gRPC message:
the client writes them into a shared-memory region that Triton has mapped, and the request
only names the region. That saves serialising and copying N x 160 x 160 x 3 bytes per
request through gRPC, which matters where that copy, not the model, is what limits the
throughput (a GPU Triton on the same host).

``RegionPool`` holds one region per request in flight (``max_in_flight`` of them, each
``client_batch_size`` crops large), created and registered with Triton once, on first use;
a request takes a region from the pool and gives it back when it is done, failed or
cancelled. ``close`` unregisters the regions from Triton and destroys them. Memory is
bounded: ``max_in_flight`` x ``client_batch_size`` crops. A Triton that restarted has
forgotten the registrations: a request it answers with an unknown region gets the regions
registered again (once, whichever request noticed first) and is sent once more.

Only the inputs go through shared memory; the embeddings (2 KiB a face against 75 KiB of
pixels) come back in the gRPC response. That also keeps a region safe to reuse at once
after a request was cancelled or ran out of time: Triton may still be reading the
abandoned request's crops, but it never writes into the region.

Both kinds need Triton on the same host as the client (same machine, and for ``system``
the same ``/dev/shm``: a Triton in a container needs ``--ipc=host`` or a shared
``/dev/shm``). Against a Triton elsewhere registration fails, and the client raises
``EmbedderError`` naming the setting.

- ``system``: POSIX shared memory (``tritonclient.utils.shared_memory``), regions
  ``/dev/shm/facesearch-embedder-<pid>-<id>-<n>``.
- ``cuda``: CUDA shared memory (``tritonclient.utils.cuda_shared_memory``, which needs the
  ``cuda-python`` package) on CUDA device 0, for a GPU Triton; imported only when chosen,
  and without a CUDA device the client refuses to start with ``EmbedderError``. The tests
  exercise only that refusal: the development machine has no GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import InferenceServerException

from services.embedder.client.base import EmbedderError

SETTING = "the embedder's shared_memory setting (FACESEARCH_EMBEDDER_SHARED_MEMORY)"
SAME_HOST = "shared memory works only with a Triton on the same host (and, in a container, the same /dev/shm)"
CUDA_DEVICE = 0


class _Regions:
    """What both kinds of region share: tritonclient's module for them (``_shm``) writes and destroys."""

    _shm: object

    def write(self, handle: object, array: np.ndarray) -> None:
        self._shm.set_shared_memory_region(handle, [array])

    def destroy(self, handle: object) -> None:
        self._shm.destroy_shared_memory_region(handle)


class SystemMemory(_Regions):
    """POSIX shared memory regions (``/dev/shm``)."""

    kind = "system"

    def __init__(self) -> None:
        from tritonclient.utils import shared_memory

        self._shm = shared_memory

    def create(self, name: str, byte_size: int) -> object:
        return self._shm.create_shared_memory_region(name, "/" + name, byte_size, create_only=True)

    async def register(self, client, region: Region, timeout: float) -> None:
        await client.register_system_shared_memory(
            region.name, "/" + region.name, region.byte_size, client_timeout=timeout
        )

    async def unregister(self, client, name: str, timeout: float) -> None:
        await client.unregister_system_shared_memory(name, client_timeout=timeout)


class CudaMemory(_Regions):
    """CUDA shared memory regions on device ``CUDA_DEVICE`` (needs a CUDA device and cuda-python)."""

    kind = "cuda"

    def __init__(self) -> None:
        try:
            from tritonclient.utils import cuda_shared_memory
        except (ImportError, RuntimeError) as error:
            raise EmbedderError(
                f"{SETTING} is 'cuda', which needs tritonclient's cuda_shared_memory (the cuda-python package) "
                f"and a CUDA device: {error}"
            ) from None
        import cuda.bindings.runtime as cudart

        status, count = cudart.cudaGetDeviceCount()
        if status != cudart.cudaError_t.cudaSuccess or count <= CUDA_DEVICE:
            found = f"CUDA reports {status.name}" if status != cudart.cudaError_t.cudaSuccess else f"{count} devices"
            raise EmbedderError(
                f"{SETTING} is 'cuda', which needs a CUDA device for tritonclient's cuda_shared_memory, "
                f"and there is none here ({found}); use 'system' or 'none'"
            )
        self._shm = cuda_shared_memory

    def create(self, name: str, byte_size: int) -> object:
        return self._shm.create_shared_memory_region(name, byte_size, CUDA_DEVICE)

    async def register(self, client, region: Region, timeout: float) -> None:
        raw = self._shm.get_raw_handle(region.handle)
        await client.register_cuda_shared_memory(
            region.name, raw, CUDA_DEVICE, region.byte_size, client_timeout=timeout
        )

    async def unregister(self, client, name: str, timeout: float) -> None:
        await client.unregister_cuda_shared_memory(name, client_timeout=timeout)


def memory_of(kind: str) -> SystemMemory | CudaMemory | None:
    """The regions' kind for the setting's value; None for ``none``. Raises ``EmbedderError``
    when ``cuda`` cannot work here."""
    if kind == "none":
        return None
    if kind == "system":
        return SystemMemory()
    if kind == "cuda":
        return CudaMemory()
    raise ValueError(f"unknown shared memory kind {kind!r}")


@dataclass
class Region:
    """One registered region: its name in Triton and the client's handle of it."""

    name: str
    handle: object
    byte_size: int


class RegionPool:
    """``count`` regions of ``byte_size`` bytes, registered with Triton by ``open``; ``take``
    lends one for the duration of a request."""

    def __init__(self, memory: SystemMemory | CudaMemory, count: int, byte_size: int) -> None:
        self.memory = memory
        self.size = count
        self.byte_size = byte_size
        self.prefix = f"facesearch-embedder-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.regions: list[Region] = []
        self._registered: list[Region] = []
        self._free: asyncio.Queue[Region] = asyncio.Queue()
        self._registering = asyncio.Lock()
        self.generation = 0  # how many times the regions were registered again

    @property
    def available(self) -> int:
        """Regions not lent to a request now."""
        return self._free.qsize()

    async def open(self, client, timeout: float, where: str) -> None:
        """Creates the regions and registers them with the Triton that ``client`` calls
        (``where`` names it); on any failure, undoes what it did and raises ``EmbedderError``."""
        try:
            for number in range(self.size):
                name = f"{self.prefix}-{number}"
                region = Region(name, self.memory.create(name, self.byte_size), self.byte_size)
                self.regions.append(region)
                await self.memory.register(client, region, timeout)
                self._registered.append(region)
        except BaseException as error:
            await self.close(client, timeout)  # also when cancelled: nothing is left behind
            if isinstance(error, InferenceServerException):
                raise EmbedderError(
                    f"{where} did not register {self.memory.kind} shared memory region {name!r} ({SETTING}; "
                    f"{SAME_HOST}): {error.message()}"
                ) from None
            if isinstance(error, Exception):
                raise EmbedderError(
                    f"could not create {self.memory.kind} shared memory region {name!r} of {self.byte_size} "
                    f"bytes ({SETTING}): {error}"
                ) from error
            raise
        for region in self.regions:
            self._free.put_nowait(region)

    @staticmethod
    def lost(region: Region, error: InferenceServerException) -> bool:
        """Whether Triton refused a request because it does not know ``region`` (it restarted)."""
        return region.name in (error.message() or "")

    async def register_again(self, client, generation: int, timeout: float, where: str) -> None:
        """Registers the regions again with a Triton that lost them, unless that was done since
        ``generation`` (another request noticed first)."""
        async with self._registering:
            if generation != self.generation:
                return
            for region in self._registered:
                try:
                    await self.memory.register(client, region, timeout)
                except InferenceServerException as error:
                    raise EmbedderError(
                        f"{where} did not register {self.memory.kind} shared memory region {region.name!r} again "
                        f"({SETTING}; {SAME_HOST}): {error.message()}"
                    ) from None
            self.generation += 1

    @contextlib.asynccontextmanager
    async def take(self) -> AsyncIterator[Region]:
        """A free region, given back to the pool however the request ends."""
        region = await self._free.get()
        try:
            yield region
        finally:
            self._free.put_nowait(region)

    def write(self, region: Region, crops: np.ndarray) -> int:
        """Copies ``crops`` to the start of ``region``; returns their size in bytes."""
        if crops.nbytes > region.byte_size:
            raise EmbedderError(f"{crops.nbytes} bytes of crops do not fit region {region.name!r} ({region.byte_size})")
        self.memory.write(region.handle, crops)
        return crops.nbytes

    async def close(self, client, timeout: float) -> None:
        """Unregisters the regions from Triton (a Triton that does not answer is passed over)
        and destroys them."""
        registered, self._registered = self._registered, []
        for region in registered:
            with contextlib.suppress(InferenceServerException):
                await self.memory.unregister(client, region.name, timeout)
        regions, self.regions = self.regions, []
        for region in regions:
            self.memory.destroy(region.handle)
        self._free = asyncio.Queue()
