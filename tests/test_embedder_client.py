"""The embedding client: TritonEmbedder against a real Triton serving the converted FaceNet,
InProcessEmbedder running the same ONNX file, on real face crops from the detector."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper

from services.detector.backends import create_backend
from services.detector.detection import FaceDetector
from services.detector.images import ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from services.embedder.client.base import (
    Embedder,
    EmbedderError,
    EmbedderUnavailable,
    EmbeddingInputError,
    Embeddings,
    ModelNotPrepared,
    check_vectors,
)
from services.embedder.client.factory import create_embedder
from services.embedder.client.in_process import InProcessEmbedder, onnx_model_path
from services.embedder.client.triton import TritonEmbedder
from services.embedder.serving.model_repository import write_model
from services.embedder.serving.triton_server import TritonServer
from services.embedder.serving.weights.facenet_casia import load_casia_facenet
from services.embedder.serving.weights.onnx_export import ServedFaceNet, export_onnx
from services.embedder.settings import EmbedderSettings
from services.runtime.ports import free_ports
from tests.conftest import photo_bytes

MODEL_ID = "facenet-casia"
NAN_MODEL = "nan-vectors"  # answers NaN rows: what a broken model would send back
SERVER_MAX_BATCH = 8
CLIENT_BATCH = 4


_runner: asyncio.Runner | None = None


@pytest.fixture(scope="module", autouse=True)
def one_event_loop() -> Iterator[None]:
    """One event loop for the whole module, as a service has: gRPC's asyncio channels
    belong to one loop, and closing loops under them makes it log errors."""
    global _runner
    with asyncio.Runner() as runner:
        _runner = runner
        yield
    _runner = None


def run(coroutine):
    assert _runner is not None
    return _runner.run(coroutine)


def nan_model() -> bytes:
    """crops [N,160,160,3] -> [N,512] of NaN (0 / 0)."""
    nodes = [
        helper.make_node("Cast", ["crops"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["means"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["means", "weights"], ["raw"]),
        helper.make_node("Sub", ["raw", "raw"], ["zeros"]),
        helper.make_node("Div", ["zeros", "zeros"], ["embeddings"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nan_vectors",
        [helper.make_tensor_value_info("crops", TensorProto.UINT8, ["N", 160, 160, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 512])],
        [numpy_helper.from_array(np.ones((3, 512), dtype=np.float32), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository root laid out as `facesearch models prepare` writes it:
    <root>/onnx-python/<model_id>/<version>/model.onnx (+ config.pbtxt, model.py)."""
    root = tmp_path_factory.mktemp("models")
    onnx_path = export_onnx(ServedFaceNet(load_casia_facenet()), tmp_path_factory.mktemp("export") / "facenet.onnx")
    common = dict(version=1, max_batch_size=SERVER_MAX_BATCH, preferred_batch_sizes=(4, 8), max_queue_delay_us=5000)
    write_model(root / "onnx-python", MODEL_ID, onnx_path, **common)
    write_model(root / "onnx-python", NAN_MODEL, nan_model(), **common)
    return root


def settings(model_root: Path, **overrides) -> EmbedderSettings:
    values = dict(
        model_repository=model_root,
        model_id=MODEL_ID,
        model_version="1",
        client_batch_size=CLIENT_BATCH,
        request_timeout_s=20.0,
        retries=2,
        retry_backoff_s=0.05,
    )
    return EmbedderSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def triton(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with TritonServer(model_root / "onnx-python", tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture(scope="module")
def triton_settings(model_root: Path, triton: TritonServer) -> EmbedderSettings:
    return settings(model_root, backend="triton", triton_url=triton.grpc_url)


@pytest.fixture(scope="module")
def inprocess(model_root: Path) -> Iterator[InProcessEmbedder]:
    embedder = create_embedder(settings(model_root, backend="inprocess"))
    assert isinstance(embedder, InProcessEmbedder)
    yield embedder
    run(embedder.close())


@pytest.fixture(scope="module")
def faces(labels: dict) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Detector crops of every labelled photo with one face and one person, with
    (set, person): identities are only comparable within a set."""
    detector_settings = DetectorSettings()
    detector = FaceDetector(create_backend(detector_settings), detector_settings)
    limits = ImageLimits(detector_settings.max_image_bytes, detector_settings.max_image_pixels)
    crops, people = [], []
    for set_name, labelled in labels.items():
        for name, photo in labelled["photos"].items():
            if photo["faces"] != 1 or len(photo["people"]) != 1:
                continue
            image = decode_image(photo_bytes(set_name, name), limits, min_side=detector_settings.max_side)
            [detection] = detector.detect([image], detector.default_options())
            assert len(detection.faces) == 1, f"{set_name}/{name}: {len(detection.faces)} faces"
            crops.append(detection.faces[0].crop)
            people.append((set_name, photo["people"][0]))
    return np.stack(crops), people


@pytest.fixture(scope="module")
def triton_embeddings(triton_settings: EmbedderSettings, faces) -> Embeddings:
    async def embed() -> Embeddings:
        async with TritonEmbedder(triton_settings) as embedder:
            return await embedder.embed(faces[0])

    return run(embed())


# Both backends agree, and the vectors tell people apart.


def test_triton_equals_inprocess(
    triton_embeddings: Embeddings, inprocess: InProcessEmbedder, faces, model_root: Path
) -> None:
    crops = faces[0]
    local = run(inprocess.embed(crops))
    for result in (triton_embeddings, local):
        assert (result.model_id, result.model_version) == (MODEL_ID, "1")
        assert result.vectors.shape == (len(crops), 512) and result.vectors.dtype == np.float32
        assert not result.vectors.flags.writeable
        np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(triton_embeddings.vectors, local.vectors, rtol=0, atol=1e-5)
    expected_path = model_root / "onnx-python" / MODEL_ID / "1" / "model.onnx"
    assert inprocess.onnx_path == onnx_model_path(settings(model_root)) == expected_path


def roc_auc(same: list[float], different: list[float]) -> float:
    """Probability that a same-person pair is closer than a different-person pair (ties count half)."""
    same_d, diff_d = np.asarray(same)[:, None], np.asarray(different)[None, :]
    return float(((same_d < diff_d).sum() + 0.5 * (same_d == diff_d).sum()) / (same_d.size * diff_d.size))


def test_roc_auc_over_labelled_faces(triton_embeddings: Embeddings, faces) -> None:
    _, people = faces
    vectors = triton_embeddings.vectors
    same, different = [], []
    for i, j in itertools.combinations(range(len(people)), 2):
        if people[i][0] != people[j][0]:
            continue  # identities compare within one set only
        distance = float(np.linalg.norm(vectors[i] - vectors[j]))
        (same if people[i] == people[j] else different).append(distance)
    auc = roc_auc(same, different)
    print(
        f"\n{len(people)} faces; AUC {auc:.4f} over {len(same)} same-person and {len(different)} "
        f"different-person pairs; L2 same {np.mean(same):.3f} +- {np.std(same):.3f} "
        f"(max {max(same):.3f}), different {np.mean(different):.3f} +- {np.std(different):.3f} "
        f"(min {min(different):.3f})"
    )
    assert len(same) >= 15 and len(different) >= 25
    assert auc >= 0.99


def triton_request_count(triton: TritonServer) -> tuple[int, int]:
    """(successful requests, crops inferred) of the FaceNet model so far."""
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        stats = client.get_inference_statistics(MODEL_ID, "1").model_stats[0]
    return stats.inference_stats.success.count, stats.inference_count


class CountingEmbedder(TritonEmbedder):
    """Records the most requests it had waiting on Triton at once."""

    in_flight = most = 0

    async def _infer(self, *args, **kwargs):
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            return await super()._infer(*args, **kwargs)
        finally:
            self.in_flight -= 1


async def most_in_flight(settings: EmbedderSettings, crops: np.ndarray, **options) -> int:
    async with CountingEmbedder(settings, **options) as embedder:
        await embedder.embed(crops)
        return embedder.most


def test_large_batches_are_split_and_reassembled_in_order(
    triton: TritonServer, triton_settings: EmbedderSettings, triton_embeddings: Embeddings, faces
) -> None:
    crops = faces[0]
    order = np.random.default_rng(1).permutation(len(crops))
    count = 3 * SERVER_MAX_BATCH + 1  # more than Triton's own max_batch_size as well
    indices = np.resize(order, count)
    requests_before, inferred_before = triton_request_count(triton)

    async def embed() -> Embeddings:
        async with TritonEmbedder(triton_settings) as embedder:
            return await embedder.embed(crops[indices])

    result = run(embed())
    requests, inferred = triton_request_count(triton)
    assert run(most_in_flight(triton_settings, crops[indices])) == 7  # all 7 requests sent at once
    assert run(most_in_flight(triton_settings, crops[indices], max_in_flight=2)) == 2
    assert requests - requests_before == -(-count // CLIENT_BATCH)
    assert inferred - inferred_before == count
    assert (result.model_id, result.model_version) == (MODEL_ID, "1") and len(result) == count
    np.testing.assert_allclose(result.vectors, triton_embeddings.vectors[indices], rtol=0, atol=1e-5)


def test_one_crop_and_ready(triton_settings: EmbedderSettings, triton_embeddings: Embeddings, faces) -> None:
    async def check() -> tuple[bool, Embeddings]:
        embedder = create_embedder(triton_settings)
        assert isinstance(embedder, TritonEmbedder)
        try:
            return await embedder.ready(), await embedder.embed(faces[0][2:3])
        finally:
            await embedder.close()

    ready, result = run(check())
    assert ready
    np.testing.assert_allclose(result.vectors, triton_embeddings.vectors[2:3], rtol=0, atol=1e-5)


# Bad input, for both backends.

BAD_INPUTS = {  # crops, and what the message must say
    "wrong shape": (
        np.zeros((2, 100, 160, 3), np.uint8),
        r"shape \(N, 160, 160, 3\).*got uint8 array of shape \(2, 100, 160, 3\)",
    ),
    "wrong dtype": (
        np.zeros((2, 160, 160, 3), np.float32),
        r"uint8 array.*got float32 array of shape \(2, 160, 160, 3\)",
    ),
    "empty batch": (
        np.zeros((0, 160, 160, 3), np.uint8),
        r"got uint8 array of shape \(0, 160, 160, 3\): the batch is empty",
    ),
    "one crop, 3-d": (
        np.zeros((160, 160, 3), np.uint8),
        r"3 dimensions, not 4 \(for one crop, pass crops\[None\]\)",
    ),
    "channels first": (np.zeros((1, 3, 160, 160), np.uint8), r"got uint8 array of shape \(1, 3, 160, 160\)"),
    "not an array": ([[0] * 3] * 2, r"must be a numpy uint8 array.*got list"),
}


@pytest.mark.parametrize("backend", ["triton", "inprocess"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_rejected(
    backend: str, case: str, triton_settings: EmbedderSettings, inprocess: InProcessEmbedder
) -> None:
    crops, message = BAD_INPUTS[case]

    async def embed() -> None:
        embedder: Embedder = TritonEmbedder(triton_settings) if backend == "triton" else inprocess
        try:
            await embedder.embed(crops)
        finally:
            if embedder is not inprocess:
                await embedder.close()

    with pytest.raises(EmbeddingInputError, match=message) as error:
        run(embed())
    assert isinstance(error.value, ValueError)


def test_bad_output_is_caught(model_root: Path, triton: TritonServer, faces) -> None:
    broken = settings(model_root, triton_url=triton.grpc_url, model_id=NAN_MODEL)

    async def embed() -> Embeddings:
        async with TritonEmbedder(broken) as embedder:
            return await embedder.embed(faces[0][:2])

    with pytest.raises(EmbedderError, match="NaN") as error:
        run(embed())
    assert not isinstance(error.value, EmbedderUnavailable)

    vectors = np.eye(3, 512, dtype=np.float32)
    assert check_vectors(vectors, 3, "m") is vectors
    with pytest.raises(EmbedderError, match=r"shape \(3, 512\) for 2 crops"):
        check_vectors(vectors, 2, "m")
    with pytest.raises(EmbedderError, match="float64"):
        check_vectors(vectors.astype(np.float64), 3, "m")
    with pytest.raises(EmbedderError, match=r"not unit length.*crop 1: norm 2"):
        check_vectors(vectors * np.array([[1], [2], [1]], np.float32), 3, "m")


# Triton down, slow, starting, stopped; versions it does not serve.


def test_closed_port_is_unavailable_quickly(model_root: Path) -> None:
    [port] = free_ports(1)
    closed = settings(model_root, triton_url=f"127.0.0.1:{port}", retries=3, retry_backoff_s=0.1)

    async def check() -> tuple[bool, EmbedderUnavailable, float]:
        async with TritonEmbedder(closed) as embedder:
            ready = await embedder.ready()
            started = time.monotonic()
            with pytest.raises(EmbedderUnavailable) as error:
                await embedder.embed(np.zeros((5, 160, 160, 3), np.uint8))
            return ready, error.value, time.monotonic() - started

    ready, error, elapsed = run(check())
    assert not ready
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert not error.deadline
    assert f"127.0.0.1:{port}" in str(error) and "after 4 attempts" in str(error)


def test_unserved_version_is_unavailable_without_retries(model_root: Path, triton: TritonServer) -> None:
    pinned = settings(model_root, triton_url=triton.grpc_url, model_version="2", retries=5, retry_backoff_s=2.0)

    async def check() -> tuple[bool, float]:
        async with TritonEmbedder(pinned) as embedder:
            ready = await embedder.ready()
            started = time.monotonic()
            with pytest.raises(EmbedderUnavailable, match=f"does not serve {MODEL_ID} version 2") as error:
                await embedder.embed(np.zeros((1, 160, 160, 3), np.uint8))
            assert not error.value.deadline
            return ready, time.monotonic() - started

    ready, elapsed = run(check())
    assert not ready and elapsed < 1.0  # no backoff: retrying would not help


def test_deadline_exceeded_is_reported_as_such(model_root: Path, triton: TritonServer, faces) -> None:
    slow = settings(model_root, triton_url=triton.grpc_url, request_timeout_s=0.001)
    normal = settings(model_root, triton_url=triton.grpc_url)

    async def check() -> None:
        async with TritonEmbedder(slow) as embedder:
            with pytest.raises(EmbedderUnavailable, match="deadline") as error:
                await embedder.embed(faces[0][:8])
            assert error.value.deadline
        async with TritonEmbedder(normal) as embedder:  # the whole call's own bound
            with pytest.raises(EmbedderUnavailable, match="deadline") as error:
                await embedder.embed(faces[0][:8], timeout_s=0.001)
            assert error.value.deadline

    run(check())


def test_inprocess_deadline(inprocess: InProcessEmbedder, faces) -> None:
    with pytest.raises(EmbedderUnavailable, match="deadline") as error:
        run(inprocess.embed(faces[0], timeout_s=0.001))
    assert error.value.deadline


def test_client_retries_while_triton_starts_then_fails_fast_when_it_stops(
    model_root: Path, tmp_path: Path, faces, triton_embeddings: Embeddings, caplog: pytest.LogCaptureFixture
) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    server = TritonServer(
        model_root / "onnx-python", tmp_path, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port
    )
    patient = settings(model_root, triton_url=server.grpc_url, retries=12, retry_backoff_s=0.1)
    impatient = settings(model_root, triton_url=server.grpc_url, retries=2, retry_backoff_s=0.1)
    starting = threading.Thread(target=server.start, daemon=True)
    crops = faces[0][:6]

    async def check() -> None:
        async with TritonEmbedder(patient) as embedder:
            assert not await embedder.ready()
            starting.start()
            started = time.monotonic()
            # Sent at once, while Triton is still starting; timeout_s bounds it if Triton never comes up.
            result = await embedder.embed(crops, timeout_s=90)
            print(f"\nanswered {time.monotonic() - started:.1f} s after Triton was started")
            np.testing.assert_allclose(result.vectors, triton_embeddings.vectors[:6], rtol=0, atol=1e-5)
            assert await embedder.ready()
        # Triton may answer before start() has seen every model ready; let it finish first.
        await asyncio.to_thread(starting.join, 60)
        assert server.running

        async with TritonEmbedder(impatient) as embedder:
            await embedder.embed(crops[:1])  # connected
            server.stop()
            started = time.monotonic()
            with pytest.raises(EmbedderUnavailable, match="unavailable after 3 attempts") as error:
                await embedder.embed(crops)
            elapsed = time.monotonic() - started
            assert elapsed < 10 and not error.value.deadline
            assert not await embedder.ready()

    try:
        with caplog.at_level(logging.WARNING, logger="services.embedder.client.triton"):
            run(check())
    finally:
        if starting.is_alive():
            starting.join(60)
        server.stop()
    retried = [record for record in caplog.records if "retrying" in record.getMessage()]
    assert retried, "the first call did not meet a Triton that was still starting"


def test_closed_embedder_refuses(triton_settings: EmbedderSettings, model_root: Path) -> None:
    async def check() -> None:
        embedder = TritonEmbedder(triton_settings)
        await embedder.close()
        assert not await embedder.ready()
        with pytest.raises(EmbedderUnavailable, match="closed"):
            await embedder.embed(np.zeros((1, 160, 160, 3), np.uint8))

        local = InProcessEmbedder(settings(model_root))
        await local.close()
        assert not await local.ready()
        with pytest.raises(EmbedderUnavailable, match="closed"):
            await local.embed(np.zeros((1, 160, 160, 3), np.uint8))

    run(check())


# The in-process backend's model file.


def test_missing_onnx_file_says_how_to_make_it(tmp_path: Path) -> None:
    missing = settings(tmp_path / "models", backend="inprocess", model_version="3")
    with pytest.raises(ModelNotPrepared, match="run `facesearch models prepare`") as error:
        create_embedder(missing)
    assert str(tmp_path / "models" / "onnx-python" / MODEL_ID / "3" / "model.onnx") in str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    with pytest.raises(ModelNotPrepared, match=r"elsewhere\.onnx"):
        InProcessEmbedder(missing, onnx_path=tmp_path / "elsewhere.onnx")


def test_explicit_onnx_path(tmp_path: Path, model_root: Path, inprocess: InProcessEmbedder, faces) -> None:
    explicit = InProcessEmbedder(settings(tmp_path / "no-repository", model_version="7"), onnx_path=inprocess.onnx_path)
    try:
        result = run(explicit.embed(faces[0][:3]))
        assert run(explicit.ready())
    finally:
        run(explicit.close())
    assert (result.model_id, result.model_version) == (MODEL_ID, "7")
    np.testing.assert_allclose(result.vectors, run(inprocess.embed(faces[0][:3])).vectors, rtol=0, atol=1e-6)


def test_an_onnx_file_that_is_not_the_embedding_model_is_refused(tmp_path: Path, model_root: Path) -> None:
    wrong = tmp_path / "wrong.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 160, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 160, 160])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), wrong)
    with pytest.raises(EmbedderError, match=r"takes tensor\(float\).*not uint8 crops"):
        InProcessEmbedder(settings(model_root), onnx_path=wrong)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(EmbedderError, match="ONNX Runtime cannot load"):
        InProcessEmbedder(settings(model_root), onnx_path=garbage)
