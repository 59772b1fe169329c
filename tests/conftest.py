"""Shared fixtures: the real photos of ../shared/data and real servers on loopback."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
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
def suite(tmp_path_factory: pytest.TempPathFactory):
    """The whole suite on loopback (see launcher/in_process.py), shared by the tests of the gateway."""
    from launcher.in_process import LocalSuite, prepare_model_repository

    embedder = prepare_model_repository(tmp_path_factory.mktemp("models"))
    suite = LocalSuite(tmp_path_factory.mktemp("suite"), embedder)
    yield suite
    suite.stop()
