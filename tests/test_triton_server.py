"""A real Triton Inference Server (from the nvidia-pytriton wheel) serving the onnx-python
flavour that provisioning wrote (its python-backend model.py running the FaceNet ONNX file
with ONNX Runtime), checked over gRPC with tritonclient; and the configs of every flavour
as Triton's ModelConfig protobuf."""

from __future__ import annotations

import asyncio
import dataclasses
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
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from services.embedder.models import DEFAULT_MODEL
from services.embedder.serving import flavours
from services.embedder.serving.triton_server import TritonError, TritonServer
from services.embedder.settings import EmbedderSettings
from tests.conftest import copy_of_model, new_triton_server

BROKEN = "broken"  # its ONNX model wants float crops, so ONNX Runtime fails on every batch
RENAMED = "renamed"  # the FaceNet model with other tensor names in its config
CONTRACT = DEFAULT_MODEL


def crops(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *CONTRACT.input.dims), dtype=np.uint8)


def crops_input(array: np.ndarray, datatype: str = "UINT8", name: str = CONTRACT.input.name) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def float_input_model() -> bytes:
    """float crops [N,160,160,3] -> [N,512]: loads, but fails on the uint8 crops it is sent."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["crops"], ["means"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["means", "weights"], ["embeddings"]),
        ],
        "float_input",
        [helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["N", 160, 160, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 512])],
        [numpy_helper.from_array(np.ones((3, 512), dtype=np.float32), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def model_id(onnx_python_models: EmbedderSettings) -> str:
    return onnx_python_models.model_id


@pytest.fixture(scope="module")
def reference(onnx_python_models: EmbedderSettings):
    """The served model.onnx run in this process: what Triton's answers must equal."""
    settings = onnx_python_models
    path = settings.model_repository / "onnx-python" / settings.model_id / settings.model_version / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run([CONTRACT.output.name], {CONTRACT.input.name: batch})[0]


@pytest.fixture(scope="module")
def client(triton_server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        yield client


# --- the configs --------------------------------------------------------------------------------


def test_every_flavour_config_is_a_model_config_built_from_the_contract() -> None:
    settings = EmbedderSettings(max_batch_size=8, preferred_batch_sizes=[16, 4, 8], instances=2, intra_op_threads=3)
    # Another contract: the tensors of the config follow it.
    other = dataclasses.replace(
        CONTRACT,
        crop=dataclasses.replace(CONTRACT.crop, side=112),
        dimension=128,
        input_name="faces",
        output_name="vectors",
    )
    for flavour in flavours.FLAVOUR_TABLE:
        options = flavour.option_values(settings)
        for contract in (CONTRACT, other):
            config = flavour.model_config("m", options, contract)
            text = flavours.config_text(config)
            assert text_format.Parse(text, model_config_pb2.ModelConfig()) == config, flavour.name
            [crops_tensor], [vectors] = config.input, config.output
            side = contract.crop.side
            assert (crops_tensor.name, crops_tensor.data_type, list(crops_tensor.dims)) == (
                contract.input_name,
                model_config_pb2.TYPE_UINT8,
                [side, side, 3],
            )
            assert (vectors.name, vectors.data_type, list(vectors.dims)) == (
                contract.output_name,
                model_config_pb2.TYPE_FP32,
                [contract.dimension],
            )
        assert (config.name, config.backend, config.platform) == ("m", flavour.backend, flavour.platform)
        assert config.max_batch_size == 8
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]  # sorted, none above max_batch_size
        [group] = config.instance_group
        assert group.count == 2
        assert group.kind == model_config_pb2.ModelInstanceGroup.Kind.Value(flavour.instance_kind)
    onnx_python = flavours.get("onnx-python").model_config(
        "m", flavours.get("onnx-python").option_values(settings), CONTRACT
    )
    assert onnx_python.parameters["intra_op_num_threads"].string_value == "3"
    with pytest.raises(ValueError, match="unknown flavour 'tensorflow'"):
        flavours.get("tensorflow")


# --- the session's server -------------------------------------------------------------------------


def test_server_and_model_ready(
    triton_server: TritonServer, client: grpcclient.InferenceServerClient, model_id: str
) -> None:
    ports = {triton_server.grpc_port, triton_server.http_port, triton_server.metrics_port}
    assert len(ports) == 3 and 0 not in ports
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(model_id, "1")

    config = client.get_model_config(model_id, as_json=True)["config"]
    defaults = EmbedderSettings()
    assert config["backend"] == "python" and config["max_batch_size"] == defaults.max_batch_size
    [crops_config], [vectors_config] = config["input"], config["output"]
    assert (crops_config["name"], crops_config["data_type"]) == (CONTRACT.input.name, "TYPE_UINT8")
    assert [int(dim) for dim in crops_config["dims"]] == list(CONTRACT.input.dims)
    assert (vectors_config["name"], vectors_config["data_type"]) == (CONTRACT.output.name, "TYPE_FP32")
    assert [int(dim) for dim in vectors_config["dims"]] == [CONTRACT.dimension]
    assert config["dynamic_batching"]["preferred_batch_size"] == defaults.preferred_batch_sizes

    # The stub ran the model with this environment's numpy 2 and onnxruntime.
    log = triton_server.log_path.read_text()
    assert f"onnxruntime {ort.__version__}, numpy {np.__version__}" in log
    assert np.__version__.startswith("2.")


def test_one_crop_and_a_batch_equal_onnxruntime(
    client: grpcclient.InferenceServerClient, model_id: str, reference
) -> None:
    one = crops(1, seed=1)
    result = client.infer(model_id, [crops_input(one)]).as_numpy(CONTRACT.output.name)
    assert result.dtype == np.float32 and result.shape == (1, CONTRACT.dimension)
    np.testing.assert_allclose(result, reference(one), rtol=0, atol=1e-5)

    batch = crops(8, seed=2)
    result = client.infer(model_id, [crops_input(batch)]).as_numpy(CONTRACT.output.name)
    assert result.shape == (8, CONTRACT.dimension)
    np.testing.assert_allclose(result, reference(batch), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(result[0], result[1])  # rows are the crops' own


def model_counts(
    client: grpcclient.InferenceServerClient, model_id: str, at_least: int = 0
) -> tuple[int, int, dict[int, int]]:
    """(requests' crops inferred, model executions, {batch size: executions}), once ``at_least``
    crops are counted (Triton counts a request just after answering it) or after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        stats = client.get_inference_statistics(model_id).model_stats[0]
        if stats.inference_count >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    sizes = {batch.batch_size: batch.compute_infer.count for batch in stats.batch_stats}
    return stats.inference_count, stats.execution_count, sizes


def metric(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {model} not in metrics"
    return float(match.group(1))


def test_concurrent_requests_are_batched(
    triton_server: TritonServer, client: grpcclient.InferenceServerClient, model_id: str, reference
) -> None:
    requests = 24
    batch = crops(requests, seed=3)
    inferred_before, executions_before, _ = model_counts(client, model_id)

    async def infer_all() -> list[np.ndarray]:
        async with grpcclient_aio.InferenceServerClient(triton_server.grpc_url) as aio_client:
            results = await asyncio.gather(
                *(aio_client.infer(model_id, [crops_input(batch[i : i + 1])]) for i in range(requests))
            )
        return [result.as_numpy(CONTRACT.output.name) for result in results]

    results = asyncio.run(infer_all())
    expected = reference(batch)
    for index, result in enumerate(results):
        assert result.shape == (1, CONTRACT.dimension)
        np.testing.assert_allclose(result[0], expected[index], rtol=0, atol=1e-5)

    inferred, executions, sizes = model_counts(client, model_id, at_least=inferred_before + requests)
    assert inferred - inferred_before == requests
    assert executions - executions_before < requests, f"no batching: {executions - executions_before} executions"
    assert max(sizes) > 1 and max(sizes) <= EmbedderSettings().max_batch_size

    # The same from Triton's Prometheus metrics: fewer executions than successful requests.
    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert metric(text, "nv_inference_exec_count", model_id) < metric(text, "nv_inference_request_success", model_id)


def test_wrong_dtype_shape_or_batch_size_is_rejected(client: grpcclient.InferenceServerClient, model_id: str) -> None:
    expected = f"'crops' data-type is 'FP32', but model '{model_id}' expects 'UINT8'"
    with pytest.raises(InferenceServerException, match=expected):
        client.infer(model_id, [crops_input(crops(1).astype(np.float32), "FP32")])
    with pytest.raises(InferenceServerException, match=r"(?i)unexpected shape.*crops"):
        client.infer(model_id, [crops_input(np.zeros((1, 100, 100, 3), dtype=np.uint8))])
    with pytest.raises(InferenceServerException, match=r"(?i)batch.size"):
        client.infer(model_id, [crops_input(crops(EmbedderSettings().max_batch_size + 1))])


# --- servers of their own -------------------------------------------------------------------------


def rename_tensors(config: model_config_pb2.ModelConfig) -> None:
    config.input[0].name, config.output[0].name = "faces", "vectors"


@pytest.fixture(scope="module")
def odd_models(
    onnx_python_models: EmbedderSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """Triton serving a model whose ONNX file fails on every batch, and the FaceNet model with
    other tensor names in its config."""
    repository = tmp_path_factory.mktemp("odd-models")
    copy_of_model(onnx_python_models, repository, BROKEN, onnx=float_input_model())
    copy_of_model(onnx_python_models, repository, RENAMED, change_config=rename_tensors)
    with new_triton_server(repository, tmp_path_factory.mktemp("odd-triton")) as server:
        yield server


def test_the_model_reads_its_tensors_from_the_config(odd_models: TritonServer, reference) -> None:
    batch = crops(2, seed=5)
    with grpcclient.InferenceServerClient(odd_models.grpc_url) as client:
        result = client.infer(
            RENAMED,
            [crops_input(batch, name="faces")],
            outputs=[grpcclient.InferRequestedOutput("vectors")],
        )
    np.testing.assert_allclose(result.as_numpy("vectors"), reference(batch), rtol=0, atol=1e-5)


def test_model_failure_is_an_error_response(odd_models: TritonServer) -> None:
    with grpcclient.InferenceServerClient(odd_models.grpc_url) as client:
        for _ in range(2):  # the model keeps serving (and failing) after an error
            with pytest.raises(InferenceServerException, match="onnxruntime failed"):
                client.infer(BROKEN, [crops_input(crops(1))])
        assert client.is_model_ready(BROKEN)
        assert client.infer(RENAMED, [crops_input(crops(1), name="faces")]).as_numpy("vectors").shape == (1, 512)


def test_failed_start_raises_with_the_log(tmp_path: Path, onnx_python_models: EmbedderSettings) -> None:
    folder = copy_of_model(onnx_python_models, tmp_path / "repository", "no_onnx")
    (folder / "1" / "model.onnx").unlink()
    server = new_triton_server(tmp_path / "repository", tmp_path / "work", startup_timeout_s=30)
    with pytest.raises(TritonError, match="exited with status") as error:
        server.start()
    assert "last lines of" in str(error.value) and "no_onnx" in str(error.value)
    assert not server.running


def test_stop_closes_the_port_and_ends_the_stubs(tmp_path: Path, onnx_python_models: EmbedderSettings) -> None:
    copy_of_model(onnx_python_models, tmp_path / "repository", BROKEN, onnx=float_input_model())  # loads quickly
    with new_triton_server(tmp_path / "repository", tmp_path / "work") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_model_ready(BROKEN)
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
