"""A real Triton Inference Server (from the nvidia-pytriton wheel) serving a python-backend
model that runs a tiny ONNX model with ONNX Runtime, checked over gRPC with tritonclient."""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from services.embedder.serving.model_repository import model_config, write_model
from services.embedder.serving.triton_server import TritonError, TritonServer

MODEL = "facenet"
BROKEN = "broken"  # its ONNX model wants float crops, so ONNX Runtime fails on every batch
MAX_BATCH = 16


def embedding_model(input_type: int = TensorProto.UINT8) -> bytes:
    """crops [N,160,160,3] -> mean over image width -> [N,480] @ fixed [480,512] -> L2 normalised."""
    weights = np.random.default_rng(7).standard_normal((160 * 3, 512)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["crops"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["rows"], axes=[2], keepdims=0),
        helper.make_node("Reshape", ["rows", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weights"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embeddings"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_embedder",
        [helper.make_tensor_value_info("crops", input_type, ["N", 160, 160, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 512])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([-1, 160 * 3], dtype=np.int64), "flat_shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def crops(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 160, 160, 3), dtype=np.uint8)


def crops_input(array: np.ndarray, datatype: str = "UINT8") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("crops", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return embedding_model()


@pytest.fixture(scope="module")
def reference(onnx_bytes: bytes):
    """The same ONNX model run in this process: what Triton's answers must equal."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["embeddings"], {"crops": batch})[0]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, onnx_bytes: bytes) -> Iterator[TritonServer]:
    repository = tmp_path_factory.mktemp("model_repository")
    # A generous queue delay so that concurrent requests meet in the queue even on 2 CPUs.
    write_model(
        repository,
        MODEL,
        onnx_bytes,
        max_batch_size=MAX_BATCH,
        preferred_batch_sizes=(4, 8, 16),
        max_queue_delay_us=20_000,
    )
    write_model(repository, BROKEN, embedding_model(TensorProto.FLOAT), max_batch_size=4)
    server = TritonServer(repository, tmp_path_factory.mktemp("triton_work"), startup_timeout_s=60)
    with server:
        yield server


@pytest.fixture(scope="module")
def client(triton: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        yield client


def test_config_text_is_the_documented_one() -> None:
    text = model_config("m", max_batch_size=8, preferred_batch_sizes=(16, 4, 8), instances=2, intra_op_threads=3)
    assert 'backend: "python"' in text
    assert "max_batch_size: 8" in text
    assert "preferred_batch_size: [ 4, 8 ]" in text  # sorted, and none above max_batch_size
    assert "count: 2" in text and 'string_value: "3"' in text


def test_server_and_models_ready(triton: TritonServer, client: grpcclient.InferenceServerClient) -> None:
    ports = {triton.grpc_port, triton.http_port, triton.metrics_port}
    assert len(ports) == 3 and 0 not in ports
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(BROKEN)

    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert config["backend"] == "python" and config["max_batch_size"] == MAX_BATCH
    assert config["input"][0]["data_type"] == "TYPE_UINT8" and config["input"][0]["dims"] == ["160", "160", "3"]
    assert config["output"][0]["data_type"] == "TYPE_FP32" and config["output"][0]["dims"] == ["512"]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16]

    # The stub ran the model with this environment's numpy 2 and onnxruntime.
    log = triton.log_path.read_text()
    assert f"onnxruntime {ort.__version__}, numpy {np.__version__}" in log
    assert np.__version__.startswith("2.")


def test_one_crop_equals_onnxruntime(client: grpcclient.InferenceServerClient, reference) -> None:
    batch = crops(1, seed=1)
    result = client.infer(MODEL, [crops_input(batch)]).as_numpy("embeddings")
    assert result.dtype == np.float32 and result.shape == (1, 512)
    np.testing.assert_allclose(result, reference(batch), rtol=0, atol=1e-5)


def test_batch_of_eight_equals_onnxruntime(client: grpcclient.InferenceServerClient, reference) -> None:
    batch = crops(8, seed=2)
    result = client.infer(MODEL, [crops_input(batch)]).as_numpy("embeddings")
    assert result.shape == (8, 512)
    np.testing.assert_allclose(result, reference(batch), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(result[0], result[1])  # rows are the crops' own


def model_counts(client: grpcclient.InferenceServerClient) -> tuple[int, int, dict[int, int]]:
    """(requests' crops inferred, model executions, {batch size: executions})."""
    stats = client.get_inference_statistics(MODEL).model_stats[0]
    sizes = {batch.batch_size: batch.compute_infer.count for batch in stats.batch_stats}
    return stats.inference_count, stats.execution_count, sizes


def metric(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {model} not in metrics"
    return float(match.group(1))


def test_concurrent_requests_are_batched(
    triton: TritonServer, client: grpcclient.InferenceServerClient, reference
) -> None:
    requests = 32
    batch = crops(requests, seed=3)
    inferred_before, executions_before, _ = model_counts(client)

    async def infer_all() -> list[np.ndarray]:
        async with grpcclient_aio.InferenceServerClient(triton.grpc_url) as aio_client:
            results = await asyncio.gather(
                *(aio_client.infer(MODEL, [crops_input(batch[i : i + 1])]) for i in range(requests))
            )
        return [result.as_numpy("embeddings") for result in results]

    results = asyncio.run(infer_all())
    expected = reference(batch)
    for index, result in enumerate(results):
        assert result.shape == (1, 512)
        np.testing.assert_allclose(result[0], expected[index], rtol=0, atol=1e-5)

    inferred, executions, sizes = model_counts(client)
    assert inferred - inferred_before == requests
    assert executions - executions_before < requests, f"no batching: {executions - executions_before} executions"
    assert max(sizes) > 1 and max(sizes) <= MAX_BATCH

    # The same from Triton's Prometheus metrics: fewer executions than successful requests.
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert metric(text, "nv_inference_exec_count", MODEL) < metric(text, "nv_inference_request_success", MODEL)


def test_wrong_dtype_is_rejected(client: grpcclient.InferenceServerClient) -> None:
    expected = "'crops' data-type is 'FP32', but model 'facenet' expects 'UINT8'"
    with pytest.raises(InferenceServerException, match=expected):
        client.infer(MODEL, [crops_input(crops(1).astype(np.float32), "FP32")])


def test_wrong_shape_is_rejected(client: grpcclient.InferenceServerClient) -> None:
    wrong = np.zeros((1, 100, 100, 3), dtype=np.uint8)
    with pytest.raises(InferenceServerException, match=r"(?i)unexpected shape.*crops"):
        client.infer(MODEL, [crops_input(wrong)])


def test_batch_above_max_batch_size_is_rejected(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match=r"(?i)batch.size"):
        client.infer(MODEL, [crops_input(crops(MAX_BATCH + 1))])


def test_model_failure_is_an_error_response(client: grpcclient.InferenceServerClient, reference) -> None:
    for _ in range(2):  # the model keeps serving (and failing) after an error
        with pytest.raises(InferenceServerException, match="onnxruntime failed"):
            client.infer(BROKEN, [crops_input(crops(1))])
    assert client.is_model_ready(BROKEN)
    batch = crops(2, seed=4)
    np.testing.assert_allclose(
        client.infer(MODEL, [crops_input(batch)]).as_numpy("embeddings"), reference(batch), rtol=0, atol=1e-5
    )


def test_failed_start_raises_with_the_log(tmp_path: Path, onnx_bytes: bytes) -> None:
    repository = tmp_path / "repository"
    folder = write_model(repository, "no_onnx", onnx_bytes)
    (folder / "1" / "model.onnx").unlink()
    server = TritonServer(repository, tmp_path / "work", startup_timeout_s=30)
    with pytest.raises(TritonError, match="exited with code") as error:
        server.start()
    assert "last lines of" in str(error.value) and "no_onnx" in str(error.value)
    assert not server.running


def test_stop_closes_the_port_and_ends_the_stubs(tmp_path: Path, onnx_bytes: bytes) -> None:
    repository = tmp_path / "repository"
    write_model(repository, MODEL, onnx_bytes, max_batch_size=4, instances=2)
    with TritonServer(repository, tmp_path / "work") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_model_ready(MODEL)
        started = time.monotonic()
        server.stop()
        stop_s = time.monotonic() - started
    assert stop_s < 10 and server.process.returncode is not None

    started = time.monotonic()
    with pytest.raises(InferenceServerException):
        client.is_server_live(client_timeout=5)
    assert time.monotonic() - started < 2, "a call to the stopped server hung instead of being refused"
    client.close()

    # Its python-backend stubs (same process group) are gone too.
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "python-backend stub processes outlived tritonserver"
        time.sleep(0.05)
