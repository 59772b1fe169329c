"""Request validation on loopback (the gateway with the fake analyser of test_gateway_logic and
the real search service): whatever ids, thresholds, limits and page tokens a caller sends, the
answer is a status that says what was wrong (never UNKNOWN or INTERNAL) with a short message."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facesearch.v1 import facesearch_pb2, facesearch_pb2_grpc
from services.runtime.page_tokens import SIGNATURE_BYTES, InvalidPageToken, PageTokens
from tests.test_gateway_logic import SearchHooks, face, fake_photo, start_gateway, start_search

TENANT = "people"
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
}
MAX_MESSAGE = 400  # characters: a status message quotes at most a short piece of what was sent
EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG_ID = "x" * 10_000


@pytest.fixture(scope="module")
def stub() -> Iterator[facesearch_pb2_grpc.FaceSearchStub]:
    search = start_search(SearchHooks())
    gateway = start_gateway(search.address)
    channel = grpc.insecure_channel(gateway.server.address)
    try:
        yield facesearch_pb2_grpc.FaceSearchStub(channel)
    finally:
        channel.close()
        gateway.server.stop()
        search.stop()


def outcome(call: Callable, request) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, metadata=(("authorization", f"Bearer key-{TENANT}"),), timeout=10)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def check(call: Callable, request) -> tuple[grpc.StatusCode, str]:
    code, message = outcome(call, request)
    assert code in EXPECTED, (code, message[:500])
    assert len(message) <= MAX_MESSAGE, message[:500]
    return code, message


def reference() -> facesearch_pb2.Photo:
    return facesearch_pb2.Photo(content=fake_photo(face("ann")))


ids = st.one_of(st.text(max_size=300), st.text(min_size=1, max_size=20).map(lambda s: s * 600))
thresholds = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32))
int32s = st.integers(-(2**31), 2**31 - 1)
tokens = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.integers(0, 10**50).map(str),
)


@EXAMPLES
@given(person_id=ids, photo_id=ids, name=st.text(max_size=400))
def test_random_ids_give_invalid_argument_or_not_found(stub, person_id, photo_id, name) -> None:
    check(stub.DeletePerson, facesearch_pb2.DeletePersonRequest(person_id=person_id))
    check(stub.DeletePhoto, facesearch_pb2.DeletePhotoRequest(photo_id=photo_id))
    check(stub.FindMe, facesearch_pb2.FindMeRequest(person_id=person_id))
    photo = facesearch_pb2.Photo(id=photo_id, content=fake_photo(face("ann")))
    check(stub.Enroll, facesearch_pb2.EnrollRequest(person_id=person_id, display_name=name, photos=[photo]))


@EXAMPLES
@given(threshold=thresholds, top_k=int32s, limit=int32s, min_size=int32s)
def test_random_thresholds_and_limits_give_invalid_argument_or_an_answer(stub, threshold, top_k, limit, min_size):
    a, b = reference(), facesearch_pb2.Photo(content=fake_photo(face("ann", variant=1)))
    check(stub.Verify, facesearch_pb2.VerifyRequest(a=a, b=b, similarity_threshold=threshold))
    check(stub.Identify, facesearch_pb2.IdentifyRequest(photo=a, top_k=top_k, similarity_threshold=threshold))
    check(stub.FindMe, facesearch_pb2.FindMeRequest(references=[a], limit=limit, similarity_threshold=threshold))
    check(stub.ListPeople, facesearch_pb2.ListPeopleRequest(page_size=limit))


@EXAMPLES
@given(token=tokens, size=st.integers(1, 5))
def test_random_page_tokens_give_invalid_argument(stub, token, size) -> None:
    for call, request in [
        (stub.FindMe, facesearch_pb2.FindMeRequest(references=[reference()], limit=size, page_token=token)),
        (stub.ListPeople, facesearch_pb2.ListPeopleRequest(page_size=size, page_token=token)),
    ]:
        code, _ = check(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT or not token


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b'{"offset": Infinity, "query": "x"}').decode(),
        base64.urlsafe_b64encode(json.dumps({"offset": 10**400}).encode()).decode(),
        "9" * 5000,
        "²",
        "\x00" * 10,
        "=" * 64,
        "a" * 100_000,
    ],
)
def test_forged_page_tokens_are_invalid_argument(stub, token) -> None:
    for call, request in [
        (stub.FindMe, facesearch_pb2.FindMeRequest(references=[reference()], page_token=token)),
        (stub.ListPeople, facesearch_pb2.ListPeopleRequest(page_token=token)),
    ]:
        code, message = outcome(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("page_token is not one"), message


def test_a_very_long_id_gives_a_short_invalid_argument(stub) -> None:
    photo = facesearch_pb2.Photo(content=fake_photo(face("ann")))
    for call, request in [
        (stub.DeletePerson, facesearch_pb2.DeletePersonRequest(person_id=LONG_ID)),
        (stub.DeletePhoto, facesearch_pb2.DeletePhotoRequest(photo_id=LONG_ID)),
        (stub.FindMe, facesearch_pb2.FindMeRequest(person_id=LONG_ID)),
        (stub.Enroll, facesearch_pb2.EnrollRequest(person_id=LONG_ID, photos=[photo])),
    ]:
        code, message = outcome(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, message[:200])
        assert len(message) < 200 and ("10000 characters" in message or "longer than" in message), message[:200]


def signed(tokens: PageTokens, body: bytes) -> str:
    """A token of ``body`` signed with the key of ``tokens``: what only a leaked key could make."""
    signature = hmac.new(tokens._key, body, hashlib.sha256).digest()[:SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(signature + body).decode().rstrip("=")


@pytest.mark.parametrize(
    "body",
    [
        b'{"k":"FindMe","p":Infinity,"q":"q"}',
        b'{"k":"FindMe","p":NaN,"q":"q"}',
        b'{"k":"FindMe","p":' + b"9" * 5000 + b',"q":"q"}',
        b'{"k":"FindMe","p":true,"q":"q"}',
        b'{"k":"FindMe","p":-1,"q":"q"}',
        b'{"k":"FindMe","p":1000000000000,"q":"q"}',
        b'{"k":"FindMe","p":[1],"q":"q"}',
        b'{"k":"FindMe","q":"q"}',
        b"[1, 2]",
        b"\xff\xfe not json",
    ],
)
def test_signed_tokens_that_hold_no_offset_are_refused_as_invalid(body) -> None:
    tokens = PageTokens("FindMe")
    with pytest.raises(InvalidPageToken, match="is not one FindMe issued"):
        tokens.read_offset(signed(tokens, body), "q")
    assert tokens.read_offset(signed(tokens, b'{"k":"FindMe","p":3,"q":"q"}'), "q") == 3
