"""The embedding client: TritonEmbedder against the session's real Triton serving the converted
FaceNet, InProcessEmbedder running the same ONNX file, on real face crops from the detector;
and TritonEmbedder's retries and error mapping against a stand-in for Triton's gRPC service."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc

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
from services.embedder.client.triton import READINESS_METHODS, SERVICE, TritonEmbedder, channel_args
from services.embedder.models import DEFAULT_MODEL
from services.embedder.serving.triton_server import TritonServer
from services.embedder.settings import EmbedderSettings
from services.runtime.deadlines import Deadline
from services.runtime.ports import free_ports
from tests.conftest import new_triton_server, photo_bytes
from tests.event_loop import ModuleLoop

MODEL_ID = DEFAULT_MODEL.id
SERVER_MAX_BATCH = EmbedderSettings().max_batch_size  # the session's Triton has the default config
CLIENT_BATCH = 8


module_loop = ModuleLoop()
one_event_loop = module_loop.fixture()
run = module_loop.run


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
def model_root(onnx_python_models: EmbedderSettings) -> Path:
    """The session's model repository root, as `facesearch models prepare` writes it:
    <root>/onnx-python/<model_id>/<version>/model.onnx (+ config.pbtxt, model.py)."""
    return onnx_python_models.model_repository


@pytest.fixture(scope="module")
def triton_settings(model_root: Path, triton_server: TritonServer) -> EmbedderSettings:
    return settings(model_root, backend="triton", triton_url=triton_server.grpc_url)


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
        assert result.vectors.shape == (len(crops), DEFAULT_MODEL.dimension) and result.vectors.dtype == np.float32
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


def triton_request_count(triton: TritonServer, at_least: int = 0) -> tuple[int, int]:
    """(successful requests, crops inferred) of the FaceNet model so far, once there are
    ``at_least`` requests (Triton counts a request just after answering it) or after 5 s."""
    deadline = time.monotonic() + 5
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        while True:
            stats = client.get_inference_statistics(MODEL_ID, "1").model_stats[0]
            if stats.inference_stats.success.count >= at_least or time.monotonic() > deadline:
                return stats.inference_stats.success.count, stats.inference_count
            time.sleep(0.02)


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
    triton_server: TritonServer, triton_settings: EmbedderSettings, triton_embeddings: Embeddings, faces
) -> None:
    crops = faces[0]
    order = np.random.default_rng(1).permutation(len(crops))
    count = SERVER_MAX_BATCH + 1  # more than Triton's own max_batch_size
    indices = np.resize(order, count)
    requests_before, inferred_before = triton_request_count(triton_server)

    async def embed() -> Embeddings:
        async with TritonEmbedder(triton_settings) as embedder:
            return await embedder.embed(crops[indices])

    result = run(embed())
    requests, inferred = triton_request_count(triton_server, at_least=requests_before + 5)
    assert requests - requests_before == -(-count // CLIENT_BATCH) == 5
    assert inferred - inferred_before == count
    assert run(most_in_flight(triton_settings, crops[indices])) == 5  # all 5 requests sent at once
    assert run(most_in_flight(triton_settings, crops[indices], max_in_flight=2)) == 2
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


# Triton down, slow, restarting; versions it does not serve.


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
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert not error.deadline
    assert f"127.0.0.1:{port}" in str(error) and "unavailable (retried up to 3 times)" in str(error)


def test_unserved_version_is_unavailable_without_retries(model_root: Path, triton_server: TritonServer) -> None:
    pinned = settings(model_root, triton_url=triton_server.grpc_url, model_version="2", retries=4, retry_backoff_s=2.0)

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


def test_deadline_exceeded_is_reported_as_such(model_root: Path, triton_server: TritonServer, faces) -> None:
    slow = settings(model_root, triton_url=triton_server.grpc_url, request_timeout_s=0.001)
    normal = settings(model_root, triton_url=triton_server.grpc_url)

    async def check() -> None:
        async with TritonEmbedder(slow) as embedder:
            with pytest.raises(EmbedderUnavailable, match="deadline") as error:
                await embedder.embed(faces[0][:8])
            assert error.value.deadline
        async with TritonEmbedder(normal) as embedder:  # the whole call's own bound
            with pytest.raises(EmbedderUnavailable, match="deadline") as error:
                await embedder.embed(faces[0][:8], deadline=Deadline.after(0.001))
            assert error.value.deadline

    run(check())


def test_inprocess_deadline(inprocess: InProcessEmbedder, faces) -> None:
    with pytest.raises(EmbedderUnavailable, match="deadline") as error:
        run(inprocess.embed(faces[0], deadline=Deadline.after(0.001)))
    assert error.value.deadline


def test_client_reconnects_when_triton_comes_back_and_fails_fast_when_it_stops(
    model_root: Path, tmp_path: Path, faces, triton_embeddings: Embeddings
) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    server = new_triton_server(
        model_root / "onnx-python", tmp_path, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port
    )
    quick = settings(model_root, triton_url=server.grpc_url, retries=2, retry_backoff_s=0.1)
    crops = faces[0][:6]

    async def unavailable(embedder: TritonEmbedder) -> None:
        started = time.monotonic()
        with pytest.raises(EmbedderUnavailable, match="unavailable") as error:
            await embedder.embed(crops)
        assert time.monotonic() - started < 5 and not error.value.deadline
        assert not await embedder.ready()

    async def check() -> None:
        async with TritonEmbedder(quick) as embedder:
            await unavailable(embedder)  # not started yet
            await asyncio.to_thread(server.start)
            started = time.monotonic()  # the same client finds it (how soon: the test below)
            while not await embedder.ready():
                assert time.monotonic() - started < 5, "the client did not reconnect to Triton"
                await asyncio.sleep(0.05)
            result = await embedder.embed(crops)
            np.testing.assert_allclose(result.vectors, triton_embeddings.vectors[:6], rtol=0, atol=1e-5)
            await asyncio.to_thread(server.stop)
            await unavailable(embedder)

    try:
        run(check())
    finally:
        server.stop()


def test_the_channel_tries_to_reconnect_at_least_every_second() -> None:
    """gRPC's own reconnect backoff grows from 1 s to 120 s, so that a client which met a Triton
    that was down for a while would find it seconds after it is back; the client's channel
    tries again within a second. Counted at a port that accepts connections and closes them."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    attempts = 0
    stop = threading.Event()

    def refuse() -> None:
        nonlocal attempts
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            attempts += 1
            connection.close()

    async def poll() -> None:
        url = f"127.0.0.1:{listener.getsockname()[1]}"
        async with TritonEmbedder(settings(Path("unused"), triton_url=url)) as embedder:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                assert not await embedder.ready()
                await asyncio.sleep(0.02)

    refusing = threading.Thread(target=refuse)
    refusing.start()
    try:
        run(poll())
    finally:
        stop.set()
        refusing.join()
        listener.close()
    assert attempts >= 5, f"{attempts} connection attempts in 3 s (gRPC's default backoff makes 2 or 3)"


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


# Retries and errors, against a stand-in for Triton's gRPC service.


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's gRPC inference service as far as the client uses it. ``failures``: the statuses
    that the next ModelInfer calls end with, one each; then it answers ``rows(crops)`` after
    ``delay_s``, as model ``answer_model`` (default: the one asked for)."""

    def __init__(self) -> None:
        self.url = ""
        self.reset()

    def reset(self) -> None:
        self.failures: list[grpc.StatusCode] = []
        self.delay_s = 0.0
        self.rows: Callable[[np.ndarray], np.ndarray] = unit_rows
        self.answer_model = ""
        self.infer_calls = self.live_calls = 0
        self.live = True

    async def ModelInfer(self, request, context):
        self.infer_calls += 1
        if self.failures:
            await context.abort(self.failures.pop(0), "the fake says no")
        await asyncio.sleep(self.delay_s)
        [tensor] = request.inputs
        crops = np.frombuffer(request.raw_input_contents[0], np.uint8).reshape(list(tensor.shape))
        rows = self.rows(crops)
        output = service_pb2.ModelInferResponse.InferOutputTensor(
            name=DEFAULT_MODEL.output.name, datatype="FP32", shape=list(rows.shape)
        )
        return service_pb2.ModelInferResponse(
            model_name=self.answer_model or request.model_name,
            model_version=request.model_version,
            outputs=[output],
            raw_output_contents=[np.ascontiguousarray(rows, np.float32).tobytes()],
        )

    async def ServerLive(self, request, context):
        self.live_calls += 1
        if not self.live:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the fake is not live")
        return service_pb2.ServerLiveResponse(live=True)

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=True)


def unit_rows(crops: np.ndarray) -> np.ndarray:
    return np.eye(len(crops), DEFAULT_MODEL.dimension, dtype=np.float32)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeTriton]:
    fake = FakeTriton()
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    fake.url = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    run(server.start())
    yield fake
    run(server.stop(None))


@pytest.fixture()
def fake(fake_server: FakeTriton) -> FakeTriton:
    fake_server.reset()
    return fake_server


def embed_with(fake: FakeTriton, crops: np.ndarray, deadline: Deadline | None = None, **overrides) -> Embeddings:
    options = {"triton_url": fake.url, "retry_backoff_s": 0.01, **overrides}

    async def embed() -> Embeddings:
        async with TritonEmbedder(settings(Path("unused"), **options)) as embedder:
            return await embedder.embed(crops, deadline=deadline)

    return run(embed())


ONE = np.zeros((1, 160, 160, 3), np.uint8)


def test_unavailable_is_retried_by_the_channel(fake: FakeTriton) -> None:
    fake.failures = [grpc.StatusCode.UNAVAILABLE] * 2
    result = embed_with(fake, ONE, retries=2)
    assert fake.infer_calls == 3 and len(result) == 1

    fake.reset()
    fake.failures = [grpc.StatusCode.UNAVAILABLE] * 5
    with pytest.raises(EmbedderUnavailable, match=r"unavailable \(retried up to 2 times\): the fake says no") as error:
        embed_with(fake, ONE, retries=2)
    assert not error.value.deadline
    assert fake.infer_calls == 3, "one call and two retries"

    fake.reset()
    fake.failures = [grpc.StatusCode.UNAVAILABLE]
    with pytest.raises(EmbedderUnavailable):
        embed_with(fake, ONE, retries=0)
    assert fake.infer_calls == 1


@pytest.mark.parametrize(
    ("code", "unavailable", "deadline", "message"),
    [
        (grpc.StatusCode.NOT_FOUND, True, False, f"does not serve {MODEL_ID} version 1"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True, True, "did not answer within the deadline"),
        (grpc.StatusCode.INVALID_ARGUMENT, False, False, r"failed \(StatusCode.INVALID_ARGUMENT\): the fake says no"),
        (grpc.StatusCode.INTERNAL, False, False, r"failed \(StatusCode.INTERNAL\)"),
    ],
)
def test_other_statuses_are_not_retried(
    fake: FakeTriton, code: grpc.StatusCode, unavailable: bool, deadline: bool, message: str
) -> None:
    fake.failures = [code]
    with pytest.raises(EmbedderError, match=message) as error:
        embed_with(fake, ONE, retries=4)
    assert isinstance(error.value, EmbedderUnavailable) == unavailable
    assert getattr(error.value, "deadline", False) == deadline
    assert fake.infer_calls == 1


def test_the_deadline_bounds_the_call_and_its_retries(fake: FakeTriton) -> None:
    fake.delay_s = 2.0
    started = time.monotonic()
    with pytest.raises(EmbedderUnavailable, match="within the deadline") as error:
        embed_with(fake, ONE, Deadline.after(0.3))
    assert error.value.deadline and time.monotonic() - started < 1.5

    fake.reset()
    fake.failures = [grpc.StatusCode.UNAVAILABLE] * 5
    started = time.monotonic()
    with pytest.raises(EmbedderUnavailable) as error:  # backoffs of up to 0.5, 1, 2, 4 s
        embed_with(fake, ONE, Deadline.after(0.3), retries=4, retry_backoff_s=0.5)
    assert time.monotonic() - started < 1.5
    assert fake.infer_calls < 5, "the retries went on past the deadline"

    fake.reset()
    with pytest.raises(EmbedderUnavailable, match="ran out before the request") as error:
        embed_with(fake, ONE, Deadline.after(-1))
    assert error.value.deadline and fake.infer_calls == 0


def test_ready_asks_once(fake: FakeTriton) -> None:
    async def ready(**overrides) -> bool:
        async with TritonEmbedder(settings(Path("unused"), triton_url=fake.url, **overrides)) as embedder:
            return await embedder.ready()

    assert run(ready()) and fake.live_calls == 1
    fake.live = False
    started = time.monotonic()
    assert not run(ready(retries=4, retry_backoff_s=1.0))
    assert fake.live_calls == 2 and time.monotonic() - started < 0.5, "the readiness check was retried"


def test_channel_retry_policy_follows_the_settings() -> None:
    options = dict(channel_args(settings(Path("unused"), retries=3, retry_backoff_s=0.25)))
    config = json.loads(options["grpc.service_config"])
    [everything, readiness] = config["methodConfig"]
    assert everything["name"] == [{"service": SERVICE}]
    assert everything["retryPolicy"]["maxAttempts"] == 4
    assert everything["retryPolicy"]["initialBackoff"] == "0.250s"
    assert everything["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert {name["method"] for name in readiness["name"]} == set(READINESS_METHODS)
    assert "retryPolicy" not in readiness
    assert options["grpc.max_reconnect_backoff_ms"] <= 1000
    with pytest.raises(ValueError, match="less than or equal to 4"):
        settings(Path("unused"), retries=5)  # gRPC allows 5 attempts at most


def test_bad_output_is_caught(fake: FakeTriton) -> None:
    two = np.zeros((2, 160, 160, 3), np.uint8)
    for rows, message in [
        (
            lambda crops: np.full((len(crops), 512), np.nan, np.float32),
            r"NaN or infinite embeddings for crops \[0, 1\]",
        ),
        (lambda crops: unit_rows(crops)[:1], r"shape \(1, 512\) for 2 crops"),
        (lambda crops: 2 * unit_rows(crops), "not unit length"),
    ]:
        fake.rows = rows
        with pytest.raises(EmbedderError, match=message) as error:
            embed_with(fake, two)
        assert not isinstance(error.value, EmbedderUnavailable)
    fake.reset()
    fake.answer_model = "another-model"
    with pytest.raises(EmbedderError, match="answered from model 'another-model'"):
        embed_with(fake, two)

    vectors = np.eye(3, 512, dtype=np.float32)
    assert check_vectors(vectors, 3, "m", DEFAULT_MODEL) is vectors
    with pytest.raises(EmbedderError, match="float64"):
        check_vectors(vectors.astype(np.float64), 3, "m", DEFAULT_MODEL)


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
