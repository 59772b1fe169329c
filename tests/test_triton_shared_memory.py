"""TritonEmbedder with its crops in shared memory (the ``shared_memory`` setting), against the
session's real Triton on this host, on real face crops from the detector: the same vectors as
without shared memory, the pool of regions under concurrency and failures, the regions gone
after close, registered again after Triton restarts, a refused registration, and ``cuda``
refused on a machine without a GPU."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pydantic
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import shared_memory as system_shm

from services.embedder.client.base import EmbedderError, EmbedderUnavailable
from services.embedder.client.triton import TritonEmbedder
from services.embedder.models import DEFAULT_MODEL
from services.embedder.serving.triton_server import TritonServer
from services.embedder.settings import EmbedderSettings
from services.runtime.deadlines import Deadline
from tests.conftest import detected_crops
from tests.event_loop import ModuleLoop

PHOTOS = [
    ("openface", "adams_1.jpg"),
    ("openface", "carell_1.jpg"),
    ("openface", "clapton_1.jpg"),
    ("facenet_pytorch", "kate_siegel_1.jpg"),
    ("facenet_pytorch", "paul_rudd_1.jpg"),
    ("facenet_pytorch", "shea_whigham_1.jpg"),
]
SHM = Path("/dev/shm")

module_loop = ModuleLoop()
one_event_loop = module_loop.fixture()
run = module_loop.run


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """The detector's crops of six one-face photos."""
    return np.stack([faces[0] for faces in detected_crops(PHOTOS)])


def make_settings(
    onnx_python_models: EmbedderSettings, triton: TritonServer, shared_memory: str, **overrides
) -> EmbedderSettings:
    values = dict(
        model_repository=onnx_python_models.model_repository,
        model_id=DEFAULT_MODEL.id,
        model_version="1",
        triton_url=triton.grpc_url,
        client_batch_size=4,
        request_timeout_s=20.0,
        retries=0,
        shared_memory=shared_memory,
    )
    return EmbedderSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def embedder_settings(onnx_python_models, triton_server):
    def make(shared_memory: str = "system", **overrides) -> EmbedderSettings:
        return make_settings(onnx_python_models, triton_server, shared_memory, **overrides)

    return make


@pytest.fixture(scope="module")
def reference(embedder_settings, crops) -> np.ndarray:
    """The crops' vectors with the crops inside the requests."""

    async def embed() -> np.ndarray:
        async with TritonEmbedder(embedder_settings("none")) as embedder:
            assert embedder.regions is None
            return (await embedder.embed(crops)).vectors

    return run(embed())


def registered_regions(triton: TritonServer, prefix: str) -> list[str]:
    """The names of the system shared-memory regions Triton has registered that start with ``prefix``."""
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        status = client.get_system_shared_memory_status(as_json=True)
    return sorted(name for name in status.get("regions", {}) if name.startswith(prefix))


def shm_files(prefix: str) -> list[str]:
    return sorted(path.name for path in SHM.glob(prefix + "*"))


def test_setting_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert EmbedderSettings().shared_memory == "none"
    monkeypatch.setenv("FACESEARCH_EMBEDDER_SHARED_MEMORY", "system")
    assert EmbedderSettings().shared_memory == "system"
    monkeypatch.setenv("FACESEARCH_EMBEDDER_SHARED_MEMORY", "tmpfs")
    with pytest.raises(pydantic.ValidationError, match="shared_memory"):
        EmbedderSettings()


def test_system_shared_memory_gives_the_same_vectors(embedder_settings, crops, reference, triton_server) -> None:
    async def embed():
        async with TritonEmbedder(embedder_settings("system"), max_in_flight=3) as embedder:
            result = await embedder.embed(crops)  # 6 crops: requests of 4 and 2
            pool = embedder.regions
            assert (pool.size, pool.available, pool.byte_size) == (3, 3, 4 * 160 * 160 * 3)
            assert registered_regions(triton_server, pool.prefix) == sorted(r.name for r in pool.regions)
            return result

    result = run(embed())
    assert result.vectors.shape == (len(crops), DEFAULT_MODEL.dimension)
    np.testing.assert_allclose(result.vectors, reference, rtol=0, atol=1e-6)
    assert np.abs(result.vectors - reference).max() < 1e-6


class BorrowCounting(TritonEmbedder):
    """Records the fewest free regions any request saw while it held one."""

    fewest_free: int | None = None

    async def _infer(self, client, crops, timeout, region=None):
        assert region is not None
        free = self.regions.available
        self.fewest_free = free if self.fewest_free is None else min(self.fewest_free, free)
        await asyncio.sleep(0.01)  # hold the region a little, so that requests overlap
        return await super()._infer(client, crops, timeout, region)


def test_concurrent_calls_beyond_the_pool_keep_their_order(embedder_settings, crops, reference) -> None:
    # Three calls at once, each of 12 crops in its own order, in requests of 2 crops: 18
    # requests for a pool of 2 regions.
    orders = [np.arange(12) % 6, (np.arange(12) * 5) % 6, (11 - np.arange(12)) % 6]

    async def embed():
        async with BorrowCounting(embedder_settings("system", client_batch_size=2), max_in_flight=2) as embedder:
            results = await asyncio.gather(*(embedder.embed(crops[order]) for order in orders))
            assert embedder.regions.available == embedder.regions.size == 2
            return results, embedder.fewest_free

    results, fewest_free = run(embed())
    assert fewest_free == 0  # both regions were in use at once, and never more
    for order, result in zip(orders, results, strict=True):
        np.testing.assert_allclose(result.vectors, reference[order], rtol=0, atol=1e-6)


def test_close_unregisters_and_destroys_the_regions(embedder_settings, crops, triton_server) -> None:
    embedder = TritonEmbedder(embedder_settings("system"), max_in_flight=2)
    pool = embedder.regions
    run(embedder.embed(crops[:2]))
    names = sorted(region.name for region in pool.regions)
    assert len(names) == 2
    assert registered_regions(triton_server, pool.prefix) == names
    assert shm_files(pool.prefix) == names
    run(embedder.close())
    assert registered_regions(triton_server, pool.prefix) == []
    assert shm_files(pool.prefix) == []
    with pytest.raises(EmbedderUnavailable, match="closed"):
        run(embedder.embed(crops[:1]))


def test_failed_requests_give_their_regions_back(embedder_settings, crops, reference) -> None:
    many = crops[np.arange(96) % 6]

    async def scenario():
        async with TritonEmbedder(embedder_settings("system", client_batch_size=2), max_in_flight=2) as embedder:
            pool = embedder.regions
            # A deadline that runs out while requests are on Triton: the unfinished are cancelled.
            with pytest.raises(EmbedderUnavailable) as raised:
                await embedder.embed(many, deadline=Deadline.after(0.3))
            assert raised.value.deadline
            assert pool.available == pool.size == 2
            # A call cancelled by its caller while it waits on Triton.
            task = asyncio.ensure_future(embedder.embed(many))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.available == 2
            # The regions still work, and carry the right crops.
            return (await embedder.embed(crops)).vectors

    np.testing.assert_allclose(run(scenario()), reference, rtol=0, atol=1e-6)

    async def unserved_version():
        # Triton refuses the request itself (a version it does not serve) after the crops were written.
        async with TritonEmbedder(embedder_settings("system", model_version="2"), max_in_flight=2) as embedder:
            with pytest.raises(EmbedderUnavailable, match="does not serve"):
                await embedder.embed(crops)
            assert embedder.regions.available == 2

    run(unserved_version())


def test_regions_registered_again_after_triton_restarts(embedder_settings, crops, reference, triton_server) -> None:
    embedder = TritonEmbedder(embedder_settings("system"), max_in_flight=2)
    pool = embedder.regions
    try:
        run(embedder.embed(crops[:4]))
        triton_server.restart()  # same ports; it has forgotten the registrations
        assert registered_regions(triton_server, pool.prefix) == []
        # 6 crops: two requests at once, both refused for an unknown region; one registers again.
        vectors = run(embedder.embed(crops)).vectors
        np.testing.assert_allclose(vectors, reference, rtol=0, atol=1e-6)
        assert pool.generation == 1 and pool.available == 2
        assert registered_regions(triton_server, pool.prefix) == sorted(r.name for r in pool.regions)
    finally:
        run(embedder.close())
    assert registered_regions(triton_server, pool.prefix) == [] and shm_files(pool.prefix) == []


def test_refused_registration_fails_clearly_and_leaves_nothing(embedder_settings, crops, triton_server) -> None:
    embedder = TritonEmbedder(embedder_settings("system"), max_in_flight=2)
    pool = embedder.regions
    # Another region already holds the name the pool's second region will ask for.
    taken = f"{pool.prefix}-1"
    other = system_shm.create_shared_memory_region(taken, f"/{taken}-other", 64)
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        client.register_system_shared_memory(taken, f"/{taken}-other", 64)
        try:
            with pytest.raises(EmbedderError, match="FACESEARCH_EMBEDDER_SHARED_MEMORY") as raised:
                run(embedder.embed(crops[:1]))
            assert "same host" in str(raised.value) and taken in str(raised.value)
            assert registered_regions(triton_server, pool.prefix) == [taken]  # only the other one
            assert shm_files(pool.prefix) == [f"{taken}-other"]
        finally:
            client.unregister_system_shared_memory(taken)
            system_shm.destroy_shared_memory_region(other)
    run(embedder.close())
    assert shm_files(pool.prefix) == []


def test_cuda_shared_memory_needs_a_cuda_device(embedder_settings) -> None:
    with pytest.raises(EmbedderError, match=r"needs .*CUDA device") as raised:
        TritonEmbedder(embedder_settings("cuda"))
    assert "FACESEARCH_EMBEDDER_SHARED_MEMORY" in str(raised.value)
    assert "cuda_shared_memory" in str(raised.value)
