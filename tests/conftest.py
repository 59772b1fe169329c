"""Shared fixtures: the real photos of ../shared/data and real servers on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest

from facesearch.v1 import detector_pb2_grpc
from services.detector.server import build_server
from services.detector.settings import DetectorSettings
from services.runtime.background import BackgroundServer

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("FACESEARCH_TEST_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    if not (DATA / "labels.json").is_file():
        raise pytest.UsageError(f"test photos not found: {DATA}/labels.json (set FACESEARCH_TEST_DATA)")


@pytest.fixture(scope="session")
def labels() -> dict:
    return json.loads((DATA / "labels.json").read_text())["sets"]


def photo_path(set_name: str, name: str) -> Path:
    return DATA / set_name / name


def photo_bytes(set_name: str, name: str) -> bytes:
    return photo_path(set_name, name).read_bytes()


def detected_crops(photos: Iterable[tuple[str, str]], **detector_settings) -> list[list]:
    """The crops of the faces the detector (default settings, or as given) finds in each of
    these (set, name) photos, largest first: one list per photo."""
    from services.detector.backends import create_backend
    from services.detector.detection import FaceDetector
    from services.detector.images import ImageLimits, decode_image

    settings = DetectorSettings(**detector_settings)
    detector = FaceDetector(create_backend(settings), settings)
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    found = []
    for set_name, name in photos:
        image = decode_image(photo_bytes(set_name, name), limits, min_side=settings.max_side)
        [detection] = detector.detect([image], detector.default_options())
        found.append([face.crop for face in detection.faces])
    return found


def start_detector(**overrides) -> BackgroundServer:
    settings = DetectorSettings(host="127.0.0.1", port=0, metrics_port=0, log_format="text", **overrides)
    return BackgroundServer(build_server(settings))


@pytest.fixture(scope="session")
def detector_server() -> Iterator[BackgroundServer]:
    server = start_detector()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def detector(detector_server: BackgroundServer) -> Iterator[detector_pb2_grpc.DetectorStub]:
    with grpc.insecure_channel(
        detector_server.address, options=[("grpc.max_send_message_length", 512 * 1024 * 1024)]
    ) as channel:
        yield detector_pb2_grpc.DetectorStub(channel)


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory, onnx_python_models, triton_server):
    """The whole suite on loopback (see launcher/in_process.py) on the session's Triton, shared
    by the tests of the gateway (those that stop Triton restart it on the same ports)."""
    from launcher.in_process import LocalSuite

    suite = LocalSuite(tmp_path_factory.mktemp("suite"), onnx_python_models, triton=triton_server)
    yield suite
    suite.stop()


# --- Triton: one prepared onnx-python model repository and one server on it per session ---------


def new_triton_server(repository: Path, work_dir: Path, **options):
    """A TritonServer (not started) for tests that start, stop or restart one themselves, or
    serve a repository of their own; the rest use the session's ``triton_server``."""
    from services.embedder.serving.triton_server import TritonServer

    return TritonServer(repository, work_dir, **{"startup_timeout_s": 120, "stop_timeout_s": 10, **options})


@pytest.fixture(scope="session")
def onnx_python_models(tmp_path_factory: pytest.TempPathFactory):
    """EmbedderSettings whose model repository holds the onnx-python flavour, prepared once per
    session with the default settings (the casia weights converted and exported: ~10 s)."""
    from services.embedder.serving.provisioning import prepare_models
    from services.embedder.settings import EmbedderSettings

    settings = EmbedderSettings(model_repository=tmp_path_factory.mktemp("onnx-python-models"))
    prepare_models(settings, flavours=["onnx-python"])
    return settings


@pytest.fixture(scope="session")
def triton_server(onnx_python_models, tmp_path_factory: pytest.TempPathFactory):
    """One running Triton serving ``onnx_python_models``' onnx-python repository, for the session."""
    repository = onnx_python_models.model_repository / "onnx-python"
    with new_triton_server(repository, tmp_path_factory.mktemp("triton")) as server:
        yield server


def copy_of_model(models, repository: Path, name: str, onnx: bytes | None = None, change_config=None) -> Path:
    """The onnx-python model folder that provisioning wrote for ``models`` (EmbedderSettings),
    copied into ``repository`` as model ``name`` (its config renamed, then given to
    ``change_config`` if any), with its model.onnx replaced by ``onnx`` when given; returns
    the folder."""
    import shutil

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    source = models.model_repository / "onnx-python" / models.model_id
    folder = repository / name
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__"))
    config_path = folder / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    config.name = name
    if change_config is not None:
        change_config(config)
    config_path.write_text(text_format.MessageToString(config))
    if onnx is not None:
        (folder / models.model_version / "model.onnx").write_bytes(onnx)
    return folder


# --- an S3-compatible server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port (stopped after the module): its URL."""
    from services.runtime.ports import free_port
    from services.runtime.readiness import wait_until_ready

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            urllib.request.urlopen(url, timeout=1)
            return True
        except OSError:
            return False

    try:
        wait_until_ready(ready, 30, what="moto's S3 server", process=server)
        yield url
    finally:
        server.terminate()
        server.wait(10)
