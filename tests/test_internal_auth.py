"""Internal calls are authenticated: a search or detector server with a service token refuses
every call without it or with another (UNAUTHENTICATED), reflection included, and serves the
calls that carry it; health checks stay open. The gateway sends the token: with it the whole
API works through the real search service; with another, its calls to search fail. `facesearch
up` gives every service but Triton one token, random unless the environment sets one."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc, search_pb2, search_pb2_grpc
from launcher.processes import LOCAL_SERVICE_TOKEN_FILE, default_suite, local_service_token
from sdk.client import FaceSearchClient
from services.runtime.background import BackgroundServer
from services.runtime.channels import sending_service_token, service_token_metadata
from services.runtime.settings import SERVICE_TOKEN_VARIABLE
from services.search.server import build_server as build_search
from services.search.settings import SearchSettings
from tests.conftest import photo_bytes, start_detector
from tests.test_gateway_logic import DIMENSION, MODEL_ID, face, fake_photo, photo, refused, start_gateway

TOKEN = "a-service-token-of-the-test-suite"
WRONG = "another-token-the-services-do-not-know"
MODEL = common_pb2.EmbeddingModel(id=MODEL_ID, version="test", dimension=DIMENSION)


@pytest.fixture(scope="module")
def search() -> Iterator[BackgroundServer]:
    settings = SearchSettings(
        host="127.0.0.1", port=0, log_format="text", backend="qdrant", qdrant_path=":memory:", service_token=TOKEN
    )
    server = BackgroundServer(build_search(settings))
    yield server
    server.stop()


def search_calls() -> dict[str, tuple[str, object]]:
    vector = np.ones(DIMENSION, np.float32) / np.sqrt(DIMENSION)
    record = search_pb2.FaceRecord(vector=vector.tolist(), payload=search_pb2.FacePayload(photo_hash="h", photo_id="p"))
    return {
        "Upsert": search_pb2.UpsertRequest(tenant="auth", model=MODEL, faces=[record]),
        "Query": search_pb2.QueryRequest(
            tenant="auth", model=MODEL, top_k=1, vectors=[search_pb2.QueryVector(values=vector.tolist())]
        ),
        "Scroll": search_pb2.ScrollRequest(tenant="auth", model=MODEL, with_vectors=True),
        "Count": search_pb2.CountRequest(tenant="auth"),
        "Delete": search_pb2.DeleteRequest(tenant="auth", photo_id="p"),
    }


def code_of(call, request, **kwargs) -> grpc.StatusCode:
    try:
        call(request, timeout=10, **kwargs)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_search_refuses_calls_without_the_service_token_and_serves_those_with_it(search) -> None:
    with grpc.insecure_channel(search.address) as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        for method, request in search_calls().items():
            call = getattr(stub, method)
            assert code_of(call, request) == grpc.StatusCode.UNAUTHENTICATED, method
            wrong = service_token_metadata(WRONG)
            assert code_of(call, request, metadata=wrong) == grpc.StatusCode.UNAUTHENTICATED
            in_another_header = [("authorization", f"Bearer {TOKEN}")]
            assert code_of(call, request, metadata=in_another_header) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            stub.Count(search_pb2.CountRequest(tenant="auth"), timeout=10)
        assert "no service token" in caught.value.details()
    with sending_service_token(grpc.insecure_channel(search.address), TOKEN) as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        assert stub.Count(search_pb2.CountRequest(tenant="auth"), timeout=10).count == 0, "a refused Upsert wrote"
        for method, request in search_calls().items():
            assert code_of(getattr(stub, method), request) == grpc.StatusCode.OK, method
        assert stub.Count(search_pb2.CountRequest(tenant="auth"), timeout=10).count == 0  # deleted last


def test_health_checks_stay_open_and_reflection_needs_the_token(search) -> None:
    with grpc.insecure_channel(search.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([listing]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with sending_service_token(grpc.insecure_channel(search.address), TOKEN) as channel:
        [answer] = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([listing]), timeout=10)
        assert "facesearch.v1.Search" in {s.name for s in answer.list_services_response.service}


def test_the_detector_refuses_calls_without_the_service_token() -> None:
    detector = start_detector(service_token=TOKEN)
    request = detector_pb2.DetectRequest(image=common_pb2.Image(content=photo_bytes("photoprism", "2.jpg")))
    try:
        with grpc.insecure_channel(detector.address) as channel:
            stub = detector_pb2_grpc.DetectorStub(channel)
            assert code_of(stub.Detect, request) == grpc.StatusCode.UNAUTHENTICATED
            assert (
                code_of(stub.Detect, request, metadata=service_token_metadata(WRONG)) == grpc.StatusCode.UNAUTHENTICATED
            )
            assert len(stub.Detect(request, timeout=60, metadata=service_token_metadata(TOKEN)).faces) == 1
    finally:
        detector.stop()


def test_the_gateway_sends_the_service_token_to_search(search) -> None:
    gateway = start_gateway(search.address, service_token=TOKEN)
    try:
        with FaceSearchClient(gateway.server.address, "key-verify") as client:
            [indexed] = client.index([photo(fake_photo(face("ann")), "ann-photo")])
            assert indexed.faces_stored == 1
            assert [m.photo_id for m in client.find_me([fake_photo(face("ann", variant=1))]).matches] == ["ann-photo"]
            assert client.delete_photo("ann-photo") == 1
            assert client.stats().faces == 0
    finally:
        gateway.server.stop()
    stranger = start_gateway(search.address, service_token=WRONG)
    try:
        with FaceSearchClient(stranger.server.address, "key-verify") as client:
            error = refused(client.stats)
            assert error.code == grpc.StatusCode.INTERNAL and "wrong service token" in str(error)
    finally:
        stranger.server.stop()


def test_up_gives_every_service_but_triton_the_same_token(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # where `up` leaves the token it made
    monkeypatch.setenv("FACESEARCH_GATEWAY_API_KEYS", "me " + "0" * 64)  # no local key file made
    monkeypatch.delenv(SERVICE_TOKEN_VARIABLE, raising=False)
    tokens = []
    for _ in range(2):
        tokens.append({s.name: s.env.get(SERVICE_TOKEN_VARIABLE) for s in default_suite()})
        assert tokens[-1].pop("embedder") is None
        [token] = set(tokens[-1].values())
        assert len(token) >= 32
        assert local_service_token() == token, "the token tools here send"
        assert LOCAL_SERVICE_TOKEN_FILE.stat().st_mode & 0o077 == 0, "readable by its owner only"
    assert tokens[0]["search"] != tokens[1]["search"], "a new random token at each start"
    monkeypatch.setenv(SERVICE_TOKEN_VARIABLE, TOKEN)
    assert {s.env.get(SERVICE_TOKEN_VARIABLE) for s in default_suite() if s.name != "embedder"} == {TOKEN}
    assert local_service_token() == TOKEN
