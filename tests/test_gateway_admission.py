"""Admission control on loopback (the gateway with the fake analyser of test_gateway_logic and
the real search service): past its bounds on calls and request bytes the gateway answers
RESOURCE_EXHAUSTED at once, with a retry hint the SDK follows; it never queues."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest

from facesearch.v1 import facesearch_pb2, facesearch_pb2_grpc
from gateway.admission import PUSHBACK_HEADER
from sdk.client import AsyncFaceSearchClient, FaceSearchClient, FaceSearchError
from services.runtime.background import BackgroundServer
from tests.test_gateway_logic import Gateway, SearchHooks, face, fake_photo, start_gateway, start_search, statuses

SLOW_S = 1.0  # how long the fake analyser takes per call in these tests


@pytest.fixture(scope="module")
def search() -> Iterator[BackgroundServer]:
    server = start_search(SearchHooks())
    yield server
    server.stop()


def gateway_with(search: BackgroundServer, **bounds) -> Gateway:
    gateway = start_gateway(search.address, **bounds)
    gateway.analyser.delay_s = SLOW_S
    return gateway


def admission(gateway: Gateway):
    return gateway.server.server.service.admission


async def timed_verify(client: AsyncFaceSearchClient, a: bytes, b: bytes) -> tuple[str, float, str]:
    started = time.monotonic()
    try:
        await client.verify(a, b)
        status, message = "OK", ""
    except FaceSearchError as error:
        status, message = error.code.name, error.message
    return status, time.monotonic() - started, message


async def verify_at_once(address: str, callers: int, a: bytes, b: bytes, retries: int = 0):
    async with AsyncFaceSearchClient(address, "key-verify", timeout_s=20, retries=retries) as client:
        return await asyncio.gather(*(timed_verify(client, a, b) for _ in range(callers)))


def test_calls_past_the_bound_are_refused_at_once_with_a_retry_hint(search) -> None:
    gateway = gateway_with(search, max_concurrent_calls=4, retry_after_s=0.5)
    try:
        a, b = fake_photo(face("ann")), fake_photo(face("ann", variant=1))
        results = asyncio.run(verify_at_once(gateway.server.address, 12, a, b))
        served = [took for status, took, _ in results if status == "OK"]
        refused = [(took, message) for status, took, message in results if status == "RESOURCE_EXHAUSTED"]
        assert len(served) == 4 and len(refused) == 8, results
        assert min(served) >= SLOW_S * 0.9
        assert max(took for took, _ in refused) < 0.5, "refused at once, not after waiting for a slot"
        assert all("4 calls in progress" in m and "retry after" in m for _, m in refused)
        assert admission(gateway).peak_calls == 4

        # The hint is trailing metadata gRPC clients follow; an IndexPhotos stream takes a call too.
        with grpc.insecure_channel(gateway.server.address) as channel:
            stub = facesearch_pb2_grpc.FaceSearchStub(channel)
            metadata = (("authorization", "Bearer key-verify"),)
            request = facesearch_pb2.VerifyRequest(a=facesearch_pb2.Photo(content=a), b=facesearch_pb2.Photo(content=b))
            slow = [stub.Verify.future(request, metadata=metadata, timeout=10) for _ in range(4)]
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Verify(request, metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            pushback = dict(caught.value.trailing_metadata())[PUSHBACK_HEADER]
            assert 250 <= int(pushback) <= 750, pushback
            assert f"retry after {pushback} ms" in caught.value.details()
            index = stub.IndexPhotos(
                iter([facesearch_pb2.IndexPhotosRequest(photo=facesearch_pb2.Photo(content=a))]),
                metadata=metadata,
                timeout=10,
            )
            with pytest.raises(grpc.RpcError) as caught:
                list(index)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert all(call.result().HasField("face_a") for call in slow)
        assert admission(gateway).calls == 0 and admission(gateway).bytes == 0, "every slot given back"
    finally:
        gateway.server.stop()


def test_request_bytes_in_hand_are_bounded(search) -> None:
    """Requests of 0.6 MB against a budget of 1 MB: one at a time; the bytes held never pass it."""
    gateway = gateway_with(search, max_request_mb=1.0, max_concurrent_calls=64)
    try:
        padding = "x" * 300_000
        a, b = fake_photo(face("ann"), note=padding), fake_photo(face("ann", variant=1), note=padding)
        results = asyncio.run(verify_at_once(gateway.server.address, 16, a, b))
        codes = [status for status, _, _ in results]
        assert codes.count("OK") == 1 and codes.count("RESOURCE_EXHAUSTED") == 15, codes
        assert all("1 MB of requests in hand" in m for status, _, m in results if status != "OK")
        assert max(took for status, took, _ in results if status != "OK") < 0.5
        held = admission(gateway)
        assert 0 < held.peak_bytes <= 1024 * 1024 and held.bytes == 0
        # A stream is not refused: it reads its next photo once there is room for it.
        gateway.analyser.delay_s = 0
        admission(gateway).peak_bytes = 0
        photos = [fake_photo(face(f"person-{n}"), note=padding) for n in range(6)]
        with FaceSearchClient(gateway.server.address, "key-verify", timeout_s=20) as client:
            assert statuses(client.index(photos)) == ["INDEXED"] * 6
        assert 0 < held.peak_bytes <= 1024 * 1024 and held.bytes == 0
    finally:
        gateway.server.stop()


def test_the_sdk_retries_resource_exhausted_after_the_hint(search) -> None:
    """One call at a time, each taking 0.3 s: a second caller is refused, waits the hint, and
    gets through; with retries turned off it is refused."""
    gateway = gateway_with(search, max_concurrent_calls=1, retry_after_s=0.3)
    gateway.analyser.delay_s = 0.3
    try:
        a, b = fake_photo(face("ann")), fake_photo(face("ann", variant=1))
        retried = asyncio.run(verify_at_once(gateway.server.address, 2, a, b, retries=4))
        assert [status for status, _, _ in retried] == ["OK", "OK"], retried
        assert admission(gateway).refused >= 1, "the second caller was refused, then retried"
        unretried = asyncio.run(verify_at_once(gateway.server.address, 2, a, b, retries=0))
        assert sorted(status for status, _, _ in unretried) == ["OK", "RESOURCE_EXHAUSTED"]
        with FaceSearchClient(gateway.server.address, "key-verify", timeout_s=20) as client:
            assert client.verify(a, b).same_person, "the blocking client has the same policy"
    finally:
        gateway.server.stop()
